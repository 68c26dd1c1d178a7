"""``emo-stream train`` (EMO stage 1 / stage 2) and ``emo-stream distill`` (few-step + small decoder): arguments and handlers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PRECISIONS = ("fp32", "bf16", "fp16")


def _cmd_train(args: argparse.Namespace) -> int:
    from emo_stream.errors import ConfigError
    from emo_stream.training.train_config import load_train_config

    config = load_train_config(args.config, {"output_dir": args.output_dir, "optim.steps": args.steps,
                                             "run.device": args.device, "run.precision": args.precision})
    from emo_stream.training.device import setup_runtime, teardown_runtime
    from emo_stream.training.trainer import Trainer, latest_checkpoint

    output_dir = Path(config.output_dir)
    if args.resume is None and latest_checkpoint(output_dir) is not None:
        raise ConfigError(f"{output_dir} already holds checkpoints: pass --resume auto to continue that run, "
                          "or set another output_dir")
    runtime = setup_runtime(config.run.device, config.run.precision)
    try:
        trainer = Trainer(config, runtime=runtime, progress=not args.quiet and sys.stderr.isatty())
        start = trainer.resume(args.resume) if args.resume is not None else 0
        result = trainer.fit()
    finally:
        teardown_runtime(runtime)
    if runtime.is_main:
        losses = result.losses
        summary = f"loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "nothing left to train"
        print(f"stage {config.stage.stage}: steps {start} -> {result.step}, {summary}; wrote {result.final_dir} "
              f"(log {result.log_path})", file=sys.stderr)
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from emo_stream.training.train_config import load_distill_config

    config = load_distill_config(args.config, {
        "teacher": str(args.teacher), "output_dir": str(args.out), "lcd.steps": args.num_steps,
        "lcd.train_steps": args.steps, "decoder.train_steps": args.decoder_steps, "run.device": args.device,
        "run.precision": args.precision})
    from emo_stream.training.device import setup_runtime, teardown_runtime
    from emo_stream.training.distill import distill

    runtime = setup_runtime(config.run.device, config.run.precision)
    try:
        result = distill(config, runtime=runtime, progress=not args.quiet and sys.stderr.isatty())
    finally:
        teardown_runtime(runtime)
    if runtime.is_main:
        def span(losses: list[float]) -> str:
            return f"{losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "skipped"

        print(f"wrote {result.out} ({config.lcd.steps}-step LCM, guidance 1.0; denoiser loss "
              f"{span(result.lcd_losses)}, small decoder loss {span(result.decoder_losses)})", file=sys.stderr)
    return 0


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's run.device)")
    parser.add_argument("--precision", choices=PRECISIONS, help="override run.precision")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _cmd_train_lite_motion(args: argparse.Namespace) -> int:
    import json

    from emo_stream.training.lite_motion import LiteMotionOptions, train_lite_motion

    held_out = tuple(p for p in args.held_out.split(",") if p) if args.held_out else ()
    options = LiteMotionOptions(held_out=held_out, past=args.past, ridge=args.ridge, seed=args.seed)
    show = not args.quiet and sys.stderr.isatty()

    def progress(clip_id: str) -> None:
        if show:
            print(f"features: {clip_id}", file=sys.stderr, flush=True)

    report = train_lite_motion(args.data, args.out, options, progress=progress)
    if args.json:
        print(json.dumps(report.to_dict()))
    learned = sum(report.r_learned.values()) / max(len(report.r_learned), 1)
    rules = sum(report.r_rules.values()) / max(len(report.r_rules), 1)
    scored = (f"held-out speakers ({len(report.held_out)} clips): mouth r learned {learned:.3f}, rules {rules:.3f}"
              if report.held_out else "no held-out speakers (nothing scored)")
    print(f"wrote {args.out}: trained on {len(report.trained_on)} clips in {report.seconds:.0f} s; {scored}; "
          f"blinks {report.blink_stats['per_minute']:.1f}/min", file=sys.stderr)
    return 0


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train an EMO model: stage 1 (image) or stage 2 (video), as the config says",
                           description="Multi-GPU: torchrun --nproc-per-node N -m emo_stream.cli train --config F")
    train.add_argument("--config", type=Path, required=True, help="training YAML (see configs/train/)")
    train.add_argument("--resume", metavar="auto|DIR", help="continue from a checkpoint folder of the run "
                       "(auto: the latest in output_dir)")
    train.add_argument("--output-dir", help="override output_dir")
    train.add_argument("--steps", type=int, help="override optim.steps")
    _run_options(train)
    train.set_defaults(func=_cmd_train)

    dist = sub.add_parser("distill", help="distil a checkpoint to 1-4 steps (LCM) and train its small decoder")
    dist.add_argument("--teacher", type=Path, required=True, help="the checkpoint folder to distil")
    dist.add_argument("--out", type=Path, required=True, help="new checkpoint folder (must not exist or be empty)")
    dist.add_argument("--config", type=Path, help="distillation YAML (see configs/train/distill*.yaml)")
    dist.add_argument("--num-steps", type=int, help="sampler steps of the distilled model, 1-4 (lcd.steps)")
    dist.add_argument("--steps", type=int, help="override lcd.train_steps")
    dist.add_argument("--decoder-steps", type=int, help="override decoder.train_steps (0: keep the teacher's)")
    _run_options(dist)
    dist.set_defaults(func=_cmd_distill)

    lite = sub.add_parser("train-lite-motion", help="fit the lite animator's mouth, blinks and head to real talking "
                          "video prepared by `data prepare` (seconds on a CPU)")
    lite.add_argument("--data", type=Path, required=True, help="a `data prepare` output folder")
    lite.add_argument("--out", type=Path, required=True, help="the weights file to write (.safetensors)")
    lite.add_argument("--held-out", default="", help="comma-separated clip-id prefixes of the speakers to keep out "
                      "of training and score on")
    lite.add_argument("--past", type=int, default=2, help="frames of audio context before the current one")
    lite.add_argument("--ridge", type=float, default=10000.0, help="ridge penalty on standardised inputs")
    lite.add_argument("--seed", type=int, default=0, help="seed of the augmentation noise")
    lite.add_argument("--quiet", action="store_true", help="no progress lines")
    lite.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    lite.set_defaults(func=_cmd_train_lite_motion)
