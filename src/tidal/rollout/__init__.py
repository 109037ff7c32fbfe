"""Traffic experiments over revisions: per-revision statistics (``tidal ab``) and canary rollouts
that promote or roll back on their own (``tidal rollout``).

``stats`` and ``policy`` are pure (numbers in, numbers or a verdict out); ``controller`` is the
supervised loop that reads the store, asks ``policy`` and applies the verdict.
"""
