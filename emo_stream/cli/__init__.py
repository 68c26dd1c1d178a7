"""The engine's commands: render | metrics | import | data prepare | train | distill.

Run them as ``python -m emo_stream COMMAND …`` (or ``emo-stream COMMAND …``: the installed console script is
the server's command line, these commands plus ``serve``). Multi-GPU training runs one process per GPU::

    torchrun --nproc-per-node N -m emo_stream.cli train --config configs/train/stage1.yaml
    torchrun --nproc-per-node N -m emo_stream.cli distill --teacher DIR --out DIR

Each command lives in its own module (``render``, ``metrics``, ``import_weights``, ``data``, ``train``) and
imports its heavy parts (torch, mediapipe) only when it runs, so ``--help`` and the lite ``render`` start fast.
A user error prints ``error: <message>`` on one stderr line and exits 2 (``runner``). This package never imports
``server``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

# Set before any command imports transformers/diffusers or mediapipe: no network, no native log spam.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GLOG_minloglevel", "2")

from emo_stream.cli.parser import ENGINE_PROG, add_engine_commands, build_parser, new_parser  # noqa: E402
from emo_stream.cli.runner import EXIT_BUG, EXIT_USER_ERROR, run  # noqa: E402

__all__ = ["ENGINE_PROG", "EXIT_BUG", "EXIT_USER_ERROR", "add_engine_commands", "build_parser", "main",
           "new_parser", "run"]


def main(argv: Sequence[str] | None = None, prog: str = ENGINE_PROG) -> int:
    """Run one engine command; returns the exit code (0, 1 for a bug, 2 for a user error)."""
    return run(build_parser(prog), argv)
