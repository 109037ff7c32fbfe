"""The instance side: the worker main loop, the wire protocol, module loading."""

import os
import sys

# In an environment of its own (a bundle's requirements), the runtime's one dependency (msgspec)
# comes after the function's packages: one the requirements installed is used by both.
_deps = os.environ.pop("TIDAL_RUNTIME_DEPS", None)
if _deps and _deps not in sys.path:
    sys.path.append(_deps)
