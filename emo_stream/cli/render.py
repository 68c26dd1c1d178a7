"""``emo-stream render``: photo + audio -> MP4 (the subcommand's arguments and handler)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_render(args: argparse.Namespace) -> int:
    from emo_stream.render import RenderOptions, render_file

    options = RenderOptions(size=args.size, fps=args.fps, backend=args.backend, seed=args.seed,
                            motion=args.motion, lite_motion=args.lite_motion, background=args.background, checkpoint=args.checkpoint,
                            alpha=args.alpha)
    summary = render_file(args.image, args.audio, args.output, options,
                          progress=sys.stderr.isatty() and not args.json)
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        print(f"wrote {args.output} ({summary.frames} frames, {summary.duration_s:.2f} s of video "
              f"in {summary.render_s:.2f} s)", file=sys.stderr)
    return 0


def add_render_parser(sub: argparse._SubParsersAction) -> None:
    render = sub.add_parser("render", help="render a portrait speaking or singing an audio file to MP4")
    render.add_argument("--image", type=Path, required=True, help="portrait photo (JPEG/PNG/WebP/BMP)")
    render.add_argument("--audio", type=Path, required=True, help="speech or song (any format PyAV reads)")
    render.add_argument("-o", "--output", type=Path, required=True, help="output .mp4")
    render.add_argument("--size", type=int, default=512, help="output side in pixels (default 512)")
    render.add_argument("--fps", type=int, default=25, help="frames per second (default 25)")
    render.add_argument("--backend", default="lite", help="lite (default) or emo")
    render.add_argument("--checkpoint", type=Path, help="emo backend: checkpoint folder")
    render.add_argument("--seed", type=int, default=0, help="random seed (same seed, same frames)")
    render.add_argument("--motion", type=float, default=1.0, help="head/face motion strength, 0..3 (default 1)")
    render.add_argument("--lite-motion", default="learned", help="lite mouth, blinks and head: learned (fitted to "
                        "real talking video, the default) or rules (hand-tuned)")
    render.add_argument("--background", default="original", help="original | green | #rrggbb (| transparent "
                        "with --alpha)")
    render.add_argument("--alpha", action="store_true", help="keep the background transparent: ProRes 4444 "
                        "(.mov) or VP9 with alpha (.webm), for overlays")
    render.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    render.set_defaults(func=_cmd_render)
