"""The ``emo-stream`` command: serve | render | metrics | import | data prepare | train | distill.

Heavy imports stay inside each subcommand so ``--help`` and the lite path start fast.
A user error prints ``error: <message>`` on one stderr line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GLOG_minloglevel", "2")

EXIT_USER_ERROR = 2
EXIT_BUG = 1
REPO_DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from emo_stream.config import load_config, session_processes
    from emo_stream.errors import ConfigError
    from server.app import create_app

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
        uvicorn.run(app, fd=args.fd, log_level=args.log_level, log_config=None)
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
    uvicorn.run(app, host=config.server.host, port=config.server.port, log_level=args.log_level,
                ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key, log_config=None)
    return 0


def _cmd_metrics(args: argparse.Namespace) -> int:
    from emo_stream.metrics import compute_video_metrics

    result = compute_video_metrics(args.video, audio_path=args.audio, progress=sys.stderr.isatty())
    print(json.dumps(result.to_dict(), indent=None if args.compact else 2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emo-stream", description=(
        "One portrait photo + a voice -> a live, expressive talking portrait."))
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    metrics = sub.add_parser("metrics", help="score a video: lip-sync, mouth range, blinks, head motion (JSON)")
    metrics.add_argument("video", type=Path, help="video file to score")
    metrics.add_argument("--audio", type=Path, help="audio to sync against (default: the video's own track)")
    metrics.add_argument("--compact", action="store_true", help="one-line JSON")
    metrics.set_defaults(func=_cmd_metrics)

    from server.cli_data import add_data_parser
    from server.cli_import import add_import_parser
    from server.cli_render import add_render_parser
    from server.cli_train import add_train_parser

    add_render_parser(sub)
    add_import_parser(sub)
    add_train_parser(sub)
    add_data_parser(sub)
    return parser


def _quiet_native_stderr() -> None:
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        _quiet_native_stderr()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from emo_stream.errors import EmoStreamError

    try:
        return int(args.func(args) or 0)
    except EmoStreamError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line unless asked for the traceback
        if args.debug:
            raise
        print(f"error: internal error ({type(exc).__name__}: {exc}); rerun with --debug for details",
              file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
