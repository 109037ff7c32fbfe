"""Event triggers: what turns an outside event into an invocation of a function.

``model.py`` checks a trigger's config (pure); ``cron.py`` decides what a schedule fires (pure);
``sources.py`` runs cron and local-folder bucket sources, ``s3_bucket.py`` S3-compatible buckets
(webhook and polling), ``redis_queue.py`` Redis Streams and ``nats_queue.py`` NATS JetStream
consumers; ``service.py`` (the hub) stores triggers, supervises one task per trigger and submits
every event as a job (tidal.jobs) with the trigger's kind and the platform caller.
"""
