"""Test-session setup.

* Without a GPU, the ``cuda`` backend runs in numba's CUDA simulator: the
  variable must be set before numba is first imported, hence here.
* Hypothesis profiles come from ``tests/strategies.py`` (``ci`` is derandomized).
"""

import os
import shutil

if "NUMBA_ENABLE_CUDASIM" not in os.environ and shutil.which("nvidia-smi") is None:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

from strategies import load_profile  # noqa: E402

load_profile()
