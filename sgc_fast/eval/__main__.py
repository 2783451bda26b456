"""``python -m sgc_fast.eval``: the ``sgc-eval`` command."""

import sys

from .cli import run

sys.exit(run())
