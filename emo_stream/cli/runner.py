"""Runs a parsed command the way every ``emo-stream`` command runs: user errors as one line and exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

EXIT_USER_ERROR = 2
EXIT_BUG = 1
EXIT_INTERRUPTED = 130


def quiet_native_stderr() -> None:
    """Keep Python's stderr and send fd 2 to /dev/null: mediapipe's and FFmpeg's C++ code log
    there on their own, which would break the promise of one-line errors."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        sys.stderr = os.fdopen(saved, "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    except OSError:  # no usable fd 2: nothing to quiet
        pass


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` with ``parser`` and call the chosen subcommand's ``func``; return the exit code.

    A user error (``EmoStreamError``) prints ``error: <message>`` on one stderr line and returns 2; any other
    exception is a bug: one line and 1, or the traceback with ``--debug``.
    """
    args = parser.parse_args(argv)
    if not args.debug:
        quiet_native_stderr()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from emo_stream.errors import EmoStreamError

    try:
        return int(args.func(args) or 0)
    except EmoStreamError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: one line unless asked for the traceback
        if args.debug:
            raise
        print(f"error: internal error ({type(exc).__name__}: {exc}); rerun with --debug for details",
              file=sys.stderr)
        return EXIT_BUG
