"""The invocation core: an invocation request in, a typed outcome out, whatever its origin.

``request.py`` says what an invocation asks for, ``outcome.py`` every way it can end (one table
of statuses), ``core.py`` how one becomes the other. HTTP (``tidal.gateway.invoke``) is one
adapter over ``Invoker.invoke``; async jobs and event triggers call the same method.
(Nothing is imported here: the router imports ``request`` and the core imports the router.)
"""
