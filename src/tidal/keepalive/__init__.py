"""Keep-alive policies: how long to keep a function's template and instance loaded after it ran.

Pure deciders shared by the live gateway (autoscale) and ``tidal simulate``: ``histogram`` holds a
function's idle-time histogram (JSON-serialisable, persisted so a restart keeps what was learned),
``policy`` parses a policy (``fixed:10m``, ``hybrid``) and turns a histogram into pre-warm and
keep-alive windows measured from the end of the last invocation.
"""
