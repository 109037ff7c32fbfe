"""Buckets: the embedded local-folder object store (``folder.py``) and its key checks (``keys.py``).

A bucket is a folder under ``STATE_DIR/buckets/NAME``; objects are files under it, their keys the
paths relative to it. Bucket triggers (tidal.triggers.bucket) turn new objects into invocations.
"""
