"""``python -m sgc_fast.saliency``: same as ``sgc-saliency``."""

import sys

from .cli import run

sys.exit(run())
