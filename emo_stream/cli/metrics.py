"""``emo-stream metrics``: score a video for lip-sync, mouth range, blinks and head motion (arguments and handler)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_metrics(args: argparse.Namespace) -> int:
    from emo_stream.metrics import compute_video_metrics

    result = compute_video_metrics(args.video, audio_path=args.audio, progress=sys.stderr.isatty())
    print(json.dumps(result.to_dict(), indent=None if args.compact else 2))
    return 0


def add_metrics_parser(sub: argparse._SubParsersAction) -> None:
    metrics = sub.add_parser("metrics", help="score a video: lip-sync, mouth range, blinks, head motion (JSON)")
    metrics.add_argument("video", type=Path, help="video file to score")
    metrics.add_argument("--audio", type=Path, help="audio to sync against (default: the video's own track)")
    metrics.add_argument("--compact", action="store_true", help="one-line JSON")
    metrics.set_defaults(func=_cmd_metrics)
