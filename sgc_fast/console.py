"""Console entry points: one clear line and a non-zero exit for a user error, a traceback only with ``--debug``."""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["USER_ERRORS", "run_cli"]

#: Exceptions that mean "the input or the environment is wrong", reported as one line. Anything else is a bug and
#: keeps its traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
               OSError, ImportError, FloatingPointError, KeyError)


def run_cli(main: Callable[[list[str] | None], object], prog: str, argv: list[str] | None = None) -> int:
    """Run ``main(argv)``; return 0, or print ``prog: error: <message>`` (first line of the message) to stderr and
    return 2 for a user error, 130 on Ctrl-C. ``--debug`` anywhere on the command line re-raises with the
    traceback. ``SystemExit`` (argparse, explicit refusals) passes through."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        main(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if debug:
            raise
        text = str(exc).strip() or type(exc).__name__
        first = text.splitlines()[0]
        more = " (more with --debug)" if len(text.splitlines()) > 1 else ""
        print(f"{prog}: error: {first}{more}", file=sys.stderr)
        return 2
    return 0
