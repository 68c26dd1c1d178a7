"""The ``emo-stream`` command: ``serve`` (the HTTP/WebRTC server) plus the engine's commands (``emo_stream.cli``).

``emo-stream serve`` is the server's; render | metrics | import | data prepare | train | distill are the
engine's (also ``python -m emo_stream COMMAND``). Heavy imports stay inside each subcommand so ``--help`` and
the lite path start fast. A user error prints ``error: <message>`` on one stderr line and exits 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emo_stream.cli import add_engine_commands, new_parser, run

if TYPE_CHECKING:
    from fastapi import FastAPI

REPO_DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
PROG = "emo-stream"
WS_FRAMING_BYTES = 64 * 1024


def _cmd_serve(args: argparse.Namespace) -> int:
    from emo_stream.errors import ConfigError
    from server.app import create_app
    from server.config import load_config, session_processes

    config_path = args.config or (REPO_DEFAULT_CONFIG if REPO_DEFAULT_CONFIG.is_file() else None)
    config = load_config(config_path, {"server.host": args.host, "server.port": args.port,
                                       "server.token": args.token or None, "server.data_dir": args.data_dir,
                                       "server.processes": args.processes})
    if config.server.host not in ("127.0.0.1", "localhost", "::1") and not config.server.token:
        raise ConfigError(f"binding {config.server.host} exposes the server: set a token "
                          "(--token T or EMO_STREAM_TOKEN) or bind 127.0.0.1")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    from server.logs import configure
    from server.shards import ShardRole

    role = ShardRole.parse(args.shard) if args.shard is not None else None
    configure(args.log_level, as_json=args.log_json, process=None if role is None else role.name)
    if role is not None:  # one session process of a server (server.shards): the app on the given socket
        from server.app import build_animator
        from server.shards import single_threaded_kernels

        single_threaded_kernels()
        app = create_app(config, animator=build_animator(config), shard=role)
        _run_until_stopped(app, fd=args.fd, log_level=args.log_level)
        return 0
    processes = session_processes(config)
    if processes > 1:
        from server.router import create_router_app
        from server.shards import ShardPool

        child_args = ["--log-level", args.log_level, *(["--log-json"] if args.log_json else [])]
        if config_path is not None:
            child_args += ["--config", str(config_path)]
        if config.server.data_dir:
            child_args += ["--data-dir", str(config.server.data_dir)]
        env = dict(os.environ)
        env.pop("EMO_STREAM_TOKEN", None)
        if config.server.token:
            env["EMO_STREAM_TOKEN"] = config.server.token  # not on a command line, where ps shows it
        app = create_router_app(config, ShardPool(processes, child_args, env))
    else:
        from server.app import build_animator

        app = create_app(config, animator=build_animator(config))  # a bad checkpoint: a one-line error here
    scheme = "https" if args.tls_cert else "http"
    print(f"emo-stream serving on {scheme}://{config.server.host}:{config.server.port} "
          f"(backend {config.animator.backend}{f', {processes} session processes' if processes > 1 else ''})",
          file=sys.stderr, flush=True)
    _run_until_stopped(app, host=config.server.host, port=config.server.port, log_level=args.log_level,
                       ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key)
    return 0


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _run_until_stopped(app: FastAPI, **options: Any) -> None:
    """uvicorn until SIGTERM or Ctrl-C, then a graceful shutdown and exit status 0 (a service manager's stop is
    not a failure). uvicorn re-raises a caught signal once it has shut down, into the handler it found: this one."""
    import uvicorn

    from server.pcm_source import MAX_MESSAGE_BYTES

    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _stopped)
    # A WebSocket message larger than any route takes is refused by uvicorn (close 1009) before it is buffered.
    uvicorn.run(app, log_config=None, ws_max_size=MAX_MESSAGE_BYTES + WS_FRAMING_BYTES, **options)


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the HTTP/WebRTC server")
    serve.add_argument("--config", type=Path, help="YAML config (default: configs/default.yaml)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080)")
    serve.add_argument("--token", help="require this bearer token on /v1 (env EMO_STREAM_TOKEN)",
                       default=os.environ.get("EMO_STREAM_TOKEN"))
    serve.add_argument("--data-dir", help="where uploaded avatars are kept (default ~/.cache/emo-stream)")
    serve.add_argument("--tls-cert", help="TLS certificate (PEM)")
    serve.add_argument("--tls-key", help="TLS private key (PEM)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    serve.add_argument("--processes", type=int, help="session processes (server.processes; 0 = one per core, "
                       "at most 4; 1 = all sessions in this process)")
    # A session process of a multi-process server (server.shards) serves the app on a socket it inherits.
    serve.add_argument("--shard", help=argparse.SUPPRESS)
    serve.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=_cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    """``emo-stream``: ``serve`` first, then the engine's commands."""
    parser, sub = new_parser(PROG)
    add_serve_parser(sub)
    add_engine_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``emo-stream`` command; returns the exit code (0, 1 for a bug, 2 for a user error)."""
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
