"""The web dashboard the gateway serves at ``/``: a static page, its series API, an instance sampler."""
