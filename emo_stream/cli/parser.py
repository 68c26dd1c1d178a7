"""The engine's command line: its subcommands on one ``argparse`` parser (``emo-stream`` adds ``serve``)."""

from __future__ import annotations

import argparse

from emo_stream.cli.data import add_data_parser
from emo_stream.cli.import_weights import add_import_parser
from emo_stream.cli.metrics import add_metrics_parser
from emo_stream.cli.render import add_render_parser
from emo_stream.cli.train import add_train_parser

DESCRIPTION = "One portrait photo + a voice -> a live, expressive talking portrait."
ENGINE_PROG = "python -m emo_stream"


def new_parser(prog: str, description: str = DESCRIPTION
               ) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A parser with the options every command shares (``--debug``) and an empty set of subcommands."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    return parser, sub


def add_engine_commands(sub: argparse._SubParsersAction) -> None:
    """Add metrics, render, import, train, distill and data (each module imports its heavy parts when run)."""
    add_metrics_parser(sub)
    add_render_parser(sub)
    add_import_parser(sub)
    add_train_parser(sub)
    add_data_parser(sub)


def build_parser(prog: str = ENGINE_PROG) -> argparse.ArgumentParser:
    """The engine's own command line (everything but ``serve``, which is the server's)."""
    parser, sub = new_parser(prog, DESCRIPTION + " The engine's commands (the live server is `emo-stream serve`).")
    add_engine_commands(sub)
    return parser
