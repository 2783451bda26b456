"""``python -m sgc_fast.train``: the ``sgc-train`` command."""

import sys

from .cli import run

sys.exit(run())
