"""fimvision: image classifiers for Flow Imaging Microscopy pictures of subvisible protein particles."""

import os

# albumentations checks PyPI for updates at import time unless told not to; these machines have no network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
