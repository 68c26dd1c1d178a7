"""``emo-stream import``: EchoMimic v1 / Hallo v1 weights → an EMO checkpoint folder (arguments and handler)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DTYPES = ("float32", "float16", "bfloat16")


def _cmd_import(args: argparse.Namespace) -> int:
    import torch

    from emo_stream.errors import CheckpointError
    from emo_stream.importers import import_echomimic, import_hallo

    configs = None
    if args.configs is not None:
        try:
            configs = json.loads(Path(args.configs).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"--configs: cannot read {args.configs} ({exc})") from None
        if not isinstance(configs, dict):
            raise CheckpointError(f"--configs: {args.configs} must hold a JSON object of part configs")
    common = dict(configs=configs, speed_buckets=args.speed_buckets, dtype=getattr(torch, args.dtype),
                  progress=not args.quiet)
    if args.family == "echomimic":
        report = import_echomimic(args.src, args.out, vae=args.vae, whisper=args.whisper, acc=args.acc, **common)
    else:
        report = import_hallo(args.src, args.out, vae=args.vae, wav2vec2=args.wav2vec2, **common)
    left = report.left_at_init()
    print(f"wrote {args.out} ({report.family} {report.variant}; "
          f"{sum(p.filled for p in report.parts.values())} tensors imported, {len(left)} left at initialisation"
          f"{': ' + ', '.join(left[:4]) + (' ...' if len(left) > 4 else '') if left else ''}; "
          f"see {Path(args.out) / 'import_report.json'})", file=sys.stderr)
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vae", type=Path, required=True, help="diffusers AutoencoderKL folder (sd-vae-ft-mse)")
    parser.add_argument("--out", type=Path, required=True, help="new checkpoint folder (must not exist)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="dtype of the written weights (default float32; the speech encoder stays float32)")
    parser.add_argument("--speed-buckets", type=int, default=0, metavar="N",
                        help="add EMO's zero-initialised head-speed conditioning with N buckets (default: none)")
    parser.add_argument("--configs", type=Path, help="JSON object of part configs replacing the full-size ones "
                        "(for variants; default: emo_stream.models.configs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_import_parser(sub: argparse._SubParsersAction) -> None:
    imp = sub.add_parser("import", help="convert EchoMimic v1 or Hallo v1 weights into an EMO checkpoint")
    families = imp.add_subparsers(dest="family", required=True, metavar="FAMILY")

    echo = families.add_parser("echomimic", help="EchoMimic v1 (BadToBest/EchoMimic): four .pth files")
    echo.add_argument("--src", type=Path, required=True, help="folder with denoising_unet.pth, "
                      "motion_module.pth, reference_unet.pth, face_locator.pth")
    echo.add_argument("--acc", action="store_true", help="the step-distilled *_acc.pth files (6 steps, CFG 1.0)")
    echo.add_argument("--whisper", type=Path, required=True, help="OpenAI-format whisper_tiny.pt")
    _common(echo)
    echo.set_defaults(func=_cmd_import)

    hallo = families.add_parser("hallo", help="Hallo v1 (fudan-generative-ai/hallo): net.pth")
    hallo.add_argument("--src", type=Path, required=True, help="net.pth, or the folder holding it (or hallo/)")
    hallo.add_argument("--wav2vec2", type=Path, required=True,
                       help="wav2vec2-base-960h folder in transformers format")
    _common(hallo)
    hallo.set_defaults(func=_cmd_import)
