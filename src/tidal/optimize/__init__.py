"""Model lightweighting: ``tidal optimize`` exports a model to ONNX, quantizes it to int8, optionally
prunes it, and writes a deployable bundle with a measured report (size, latency, agreement).

Pure parts (``agreement``, ``plan``, ``report``, ``samples``, ``bundle``'s template) import no model
library; ``steps`` and ``pipeline`` import torch and onnxruntime only when called, so ``tidal --help``
stays fast.
"""
