"""Async invocations: durable jobs, retries, dead letters, completion callbacks and destinations.

``model.py`` turns a submission into a job and a job into an invocation and a JSON record;
``policy.py`` decides what follows an attempt or a callback delivery (pure); ``dispatcher.py``
runs due jobs through ``Invoker.invoke``; ``callbacks.py`` delivers completion callbacks;
``service.py`` is what the gateway calls. The queue itself is ``tidal.store.protocols.JobStore``
(SQLite: ``tidal.store.sqlite_jobs``); another queue (Redis Streams) implements that seam.
"""
