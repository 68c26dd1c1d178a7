"""``make train-tiny``: the whole chain at small size on CPU (data, prepare, train, distill, stream, metrics).

Usage: .venv/bin/python scripts/train_tiny.py [--out runs/train-tiny] [--seed 0] [--threads 2] [--scale 1.0]

1. videos: the lite animator (the teacher here) renders the training portraits speaking the training audio
   (``scripts/tiny_media.py``: 8 portraits, espeak-ng voices and sentences, sung notes) → ``OUT/videos``.
2. ``emo-stream data prepare --size 128`` → ``OUT/data``.
3. autoencoder: the tiny_face VAE on the prepared frames (``emo_stream.training.autoencoder``).
4. ``emo-stream train`` stage 1, then stage 2 (``configs/train/tiny-stage{1,2}.yaml``).
5. ``emo-stream distill`` to 4 LCM steps + the small decoder → ``OUT/checkpoint`` (the emo backend's folder).
6. ``scripts/eval_tiny.py``: held-out portraits and voices rendered with emo / lite / a still image, scored with
   ``emo-stream metrics`` → ``OUT/eval/report.json`` (``--docs`` also writes the contact sheet to docs/research/).

Every step is skipped when its output exists (a rerun resumes); ``--fresh`` starts over. Same seed and the same
thread count, same figures. Timings of each step go to ``OUT/timings.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

CONFIGS = REPO / "configs" / "train"
TEACHER_MOTION = 1.0  # the lite animator's default
VIDEO_SIZE = 256  # the teacher's render; data prepare crops the face to 128 px from it
CROP_SIZE = 128
CLIPS_PER_PORTRAIT = 5
TRAIN_AUDIO = 24


def log(message: str, start: float) -> None:
    print(f"[train-tiny {time.perf_counter() - start:7.1f} s] {message}", file=sys.stderr, flush=True)


def make_videos(out: Path, seed: int, portraits: int | None = None, clips: int = CLIPS_PER_PORTRAIT,
                motion: float = TEACHER_MOTION) -> list[Path]:
    """The teacher's training videos: each training portrait (the first ``portraits``) speaks ``clips`` seeded
    audio clips, with the lite animator's head, brow and gaze motion at ``motion``."""
    import random

    from tiny_media import save_portrait, training_audio, training_portraits

    from emo_stream.render import RenderOptions, render_file

    audio = training_audio(seed, TRAIN_AUDIO if portraits is None else clips)
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, p in enumerate(training_portraits()[:portraits]):
        image = save_portrait(p, out.parent / "portraits")
        for k, (label, wav) in enumerate(rng.sample(audio, clips)):
            path = out / f"{p.name}-{label}.mp4"
            if not path.exists():
                tmp = path.with_name(path.stem + ".tmp.mp4")
                render_file(image, wav, tmp, RenderOptions(size=VIDEO_SIZE, fps=25, seed=seed * 1000 + n * 10 + k,
                                                                motion=motion))
                tmp.rename(path)
            paths.append(path)
    return paths


def write_config(template: str, path: Path, updates: dict) -> Path:
    """``configs/train/<template>`` with dotted ``updates`` (paths of this run, seeds) written to ``path``."""
    data = yaml.safe_load((CONFIGS / template).read_text())
    for dotted, value in updates.items():
        node = data
        *sections, key = dotted.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(cmd: list[str], env: dict[str, str]) -> None:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=REPO)


def steps_of(template: str, key: str, scale: float) -> int:
    node = yaml.safe_load((CONFIGS / template).read_text())
    for part in key.split("."):
        node = node[part]
    return max(1, round(node * scale))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "train-tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads (default 2)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step budget (tests: tiny)")
    parser.add_argument("--portraits", type=int, help="use only the first N training portraits (tests)")
    parser.add_argument("--clips", type=int, default=CLIPS_PER_PORTRAIT, help="training videos per portrait")
    parser.add_argument("--teacher-motion", type=float, default=TEACHER_MOTION,
                        help="the teacher's head, brow and gaze motion in the training videos (lite --motion)")
    parser.add_argument("--budget-min", type=float, default=60.0, help="warn when the chain takes longer")
    parser.add_argument("--fresh", action="store_true", help="delete OUT first")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--docs", action="store_true", help="write the contact sheet and report to docs/research/")
    parser.add_argument("--compare", type=Path, help="an earlier run's eval/report.json: record the differences")
    args = parser.parse_args()

    start = time.perf_counter()
    out = args.out.resolve()
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                      HF_HUB_OFFLINE="1", GLOG_minloglevel="2")
    import torch

    torch.set_num_threads(args.threads)
    env = dict(os.environ)
    cli = [str(Path(sys.executable).parent / "emo-stream")]
    timings: dict[str, float] = {}

    def done(step: str, t0: float) -> None:
        timings[step] = round(time.perf_counter() - t0, 1)
        log(f"{step} done in {timings[step]:.1f} s", start)

    # 1. The teacher's videos.
    t0 = time.perf_counter()
    videos = make_videos(out / "videos", args.seed, args.portraits, args.clips, args.teacher_motion)
    done(f"videos ({len(videos)} lite renders)", t0)

    # 2. data prepare.
    t0 = time.perf_counter()
    data = out / "data"
    # Always run: a second run finds every video in the manifest and prepares only what is new.
    run([*cli, "data", "prepare", "--videos", str(out / "videos"), "--out", str(data), "--size", str(CROP_SIZE),
         "--workers", "1"], env)
    done("data prepare", t0)

    # 3. The autoencoder.
    t0 = time.perf_counter()
    ae_dir = out / "autoencoder"
    if not (ae_dir / "final" / "model_index.json").exists():
        from emo_stream.training.autoencoder import load_autoencoder_config, train_autoencoder

        config = load_autoencoder_config(CONFIGS / "tiny-autoencoder.yaml", {
            "output_dir": str(ae_dir), "data.root": str(data), "seed": args.seed, "model.seed": args.seed,
            "steps": steps_of("tiny-autoencoder.yaml", "steps", args.scale)})
        result = train_autoencoder(config, progress=sys.stderr.isatty())
        log(f"autoencoder loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}, scaling factor "
            f"{result.scaling_factor:.3f}", start)
    done("autoencoder", t0)

    # 4. Stage 1, then stage 2.
    previous = ae_dir / "final"
    for stage in (1, 2):
        t0 = time.perf_counter()
        stage_dir = out / f"stage{stage}"
        template = f"tiny-stage{stage}.yaml"
        if not (stage_dir / "final" / "model_index.json").exists():
            steps = steps_of(template, "optim.steps", args.scale)
            config = write_config(template, out / "configs" / template, {
                "output_dir": str(stage_dir), "data.root": str(data), "model.checkpoint": str(previous),
                "run.seed": args.seed, "optim.steps": steps, "run.sample_every": steps})
            shutil.rmtree(stage_dir, ignore_errors=True)
            run([*cli, "train", "--config", str(config)], env)
        previous = stage_dir / "final"
        done(f"stage {stage}", t0)

    # 5. Few-step distillation + the small decoder.
    t0 = time.perf_counter()
    checkpoint = out / "checkpoint"
    if not (checkpoint / "model_index.json").exists():
        config = write_config("tiny-distill.yaml", out / "configs" / "tiny-distill.yaml", {
            "data.root": str(data), "run.seed": args.seed,
            "lcd.train_steps": steps_of("tiny-distill.yaml", "lcd.train_steps", args.scale),
            "decoder.train_steps": steps_of("tiny-distill.yaml", "decoder.train_steps", args.scale)})
        shutil.rmtree(checkpoint, ignore_errors=True)
        run([*cli, "distill", "--teacher", str(previous), "--out", str(checkpoint), "--config", str(config)], env)
    done("distill", t0)
    train_s = time.perf_counter() - start

    # 6. Held-out evaluation.
    if not args.skip_eval:
        t0 = time.perf_counter()
        cmd = [sys.executable, str(REPO / "scripts" / "eval_tiny.py"), "--checkpoint", str(checkpoint),
               "--out", str(out / "eval"), "--seed", str(args.seed)]
        if args.docs:
            cmd.append("--docs")
        if args.compare is not None:
            cmd += ["--compare", str(args.compare)]
        run(cmd, env)
        done("eval", t0)
    total = time.perf_counter() - start
    (out / "timings.json").write_text(json.dumps({"threads": args.threads, "seed": args.seed, "steps": timings,
                                                  "train_s": round(train_s, 1), "total_s": round(total, 1)},
                                                 indent=2))
    log(f"checkpoint: {checkpoint}  ({train_s / 60:.1f} min to train, {total / 60:.1f} min in all)", start)
    if total > args.budget_min * 60:
        log(f"warning: over the {args.budget_min:.0f} min budget", start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
