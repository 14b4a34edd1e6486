"""Whether the detector extra (torchvision) imports here, and the mark of the tests that need it."""
from __future__ import annotations

import pytest

try:
    from miner.detector import require_torchvision

    require_torchvision()
    HAVE_TORCHVISION = True
except Exception:  # miner.detector.MissingExtra
    HAVE_TORCHVISION = False

needs_torchvision = pytest.mark.skipif(not HAVE_TORCHVISION, reason="the detector extra (torchvision) is not "
                                       "installed (README 'Detector')")
