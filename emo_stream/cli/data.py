"""``emo-stream data prepare``: talking-head videos → training shards + manifest (arguments and handler)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_prepare(args: argparse.Namespace) -> int:
    from emo_stream.training.prepare import PrepareOptions, prepare_videos

    def report(skip) -> None:
        reason = skip.reason.removeprefix(f"{Path(skip.source.path).name}: ")
        print(f"skipped {skip.source.path} [{skip.code}]: {reason}", file=sys.stderr, flush=True)

    options = PrepareOptions(size=args.size, fps=args.fps, min_seconds=args.min_seconds, workers=args.workers,
                             retry_skipped=args.retry_skipped)
    summary = prepare_videos(args.videos, args.out, options, progress=not args.quiet,
                             on_skip=None if args.quiet else report)
    if args.json:
        print(json.dumps(summary.to_dict()))
    print(summary.line(), file=sys.stderr)
    return 0


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="prepare training data from talking-head videos")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")

    prepare = actions.add_parser("prepare", help="videos -> face-tracked 25 fps crops, 16 kHz audio, speech "
                                 "features, face masks, head speed, in shards with a manifest (resumable)")
    prepare.add_argument("--videos", type=Path, required=True, help="folder of videos (searched recursively; "
                         "mp4, mov, mkv, webm, avi, ...)")
    prepare.add_argument("--out", type=Path, required=True, help="output folder (a rerun resumes there)")
    prepare.add_argument("--size", type=int, default=512, help="side of the square face crops (default 512)")
    prepare.add_argument("--fps", type=int, default=25, help="frame rate of the clips (default 25)")
    prepare.add_argument("--min-seconds", type=float, default=1.0,
                         help="skip videos shorter than this (default 1)")
    prepare.add_argument("--workers", type=int, default=None, metavar="N",
                         help="processes (default: one per CPU core)")
    prepare.add_argument("--retry-skipped", action="store_true",
                         help="try again the videos an earlier run skipped")
    prepare.add_argument("--quiet", action="store_true", help="no progress bar and no per-video skip lines")
    prepare.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    prepare.set_defaults(func=_cmd_prepare)
