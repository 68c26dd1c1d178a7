"""Benchmark of the emo streaming backend; prints one JSON object (not a test: no pass/fail here).

Measures, on this machine, ``EmoAnimator`` streaming windows of B sessions at once (distinct portraits and
seeds, clip phases aligned so every clip call batches all B sessions):

1. per-call latency p50/p95 of the calls that sample a clip (the burst a window waits for) and of all window
   calls, and frames/s per session and in aggregate, for B = 1, 2, 4 sessions × 1, 2, 4 sampler steps;
   with each grid row its compute (``emo_flops``): FLOPs per output frame counted over the same calls,
   achieved FLOP/s and MFU against the device's dense 16-bit peak (None on CPUs and unknown devices);
2. memory per extra session: device (CUDA) or tensor bytes + RSS (CPU) of 4 prepared, streaming sessions
   against 1;
3. the reference cache against re-running the VAE encoder + ReferenceNet for every clip (the baseline,
   measured in the same run): ``ratio`` = baseline / cached per-clip time (> 1: the cache's speed-up).

Default: a tiny random checkpoint on CPU at 64 px (under 2 minutes). ``--full``: full-size random weights
built on ``--device`` (default cuda) in float16, 512 px, in the layout ``--source`` names:

- ``emo`` (default): our own layout (SD-1.5 UNets, whisper-tiny, SD VAE, small streaming decoder), 25 fps,
  clips of 4 frames + 2 motion frames, LCM;
- ``echomimic-acc``: exactly what ``emo-stream import echomimic --acc`` produces (EchoMimic v1 configs, no
  small decoder: the SD VAE decodes), with the source's settings (24 fps, 12-frame clips, no motion frames,
  DDIM with the acc step rule, 6 steps, no guidance, noise clamp 1.5; streamed at the live clock's 25 fps, as
  the server does). Its extra baseline, measured in the same
  run: the offline pipeline the way the source renders (whole video in 12-frame context windows, overlap 3,
  6 steps, no reference cache), in seconds per frame, beside EchoMimic's published ~0.21 s/frame (V100).

``--avatars FILE`` reads avatars prepared elsewhere (``--save-avatars FILE`` writes them): a GPU machine
without mediapipe can then run the bench.

Usage: .venv/bin/python bench/emo.py [--full] [--source emo|echomimic-acc] [--device DEV] [--seconds S]
       [--steps 1,2,4] [--batches 1,2,4] [--avatars FILE | --save-avatars FILE]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emo_stream.animators.emo import EmoAnimator  # noqa: E402
from emo_stream.animators.emo_cache import tensor_bytes  # noqa: E402
from emo_stream.animators.emo_flops import ComputeAccount, device_peak_flops, stream_flops_per_frame  # noqa: E402
from emo_stream.avatar import prepare_avatar  # noqa: E402
from emo_stream.pipelines import EmoPipeline  # noqa: E402
from emo_stream.streaming import iter_windows  # noqa: E402
from tests import media  # noqa: E402

CLIP_FRAMES = 4
FPS = 25
ECHOMIMIC_PUBLISHED_S_PER_FRAME = 50 / 240  # EchoMimic's README, acc on a V100 (docs/importing.md)


def set_source(source: str) -> None:
    """Clip length of the layout under test (a module constant read by every measurement)."""
    global CLIP_FRAMES
    if source == "echomimic-acc":
        # The source's 12-frame clips; the live clock stays at 25 fps (16 kHz windows need a whole number of
        # samples per frame, which 24 fps does not give), as the server streams these weights.
        CLIP_FRAMES = 12


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tiny_pipeline(tmp: Path) -> EmoPipeline:
    from emo_stream.models import save_checkpoint, tiny_components

    folder = save_checkpoint(tiny_components(seed=0), tmp / "tiny")
    pipe = EmoPipeline.from_checkpoint(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_pipeline(configs: dict, settings, scheduler: str, device: torch.device, dtype: torch.dtype) -> EmoPipeline:
    """Full-size random weights built on ``device`` (the speech encoder stays float32)."""
    from diffusers.utils import logging as diffusers_logging

    from emo_stream.models import build_components

    diffusers_logging.set_verbosity_error()  # no per-part notes about casting random weights
    with torch.device(device):
        components = build_components(configs, settings, scheduler=scheduler)
    for name, part in components.parts().items():
        if isinstance(part, torch.nn.Module):
            part.to(device, torch.float32 if name == "speech_encoder" else dtype)
    pipe = EmoPipeline.from_components(components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def full_pipeline(device: torch.device, dtype: torch.dtype, guidance: float) -> EmoPipeline:
    from emo_stream.models import InferenceSettings
    from emo_stream.models import configs as named

    settings = InferenceSettings(num_inference_steps=4, guidance_scale=guidance, fps=FPS, audio_mode="inline",
                                 sample_size=512, clip_frames=CLIP_FRAMES, motion_frames=2)
    return random_pipeline(named.emo_full(), settings, "LCMScheduler", device, dtype)


def echomimic_acc_pipeline(device: torch.device, dtype: torch.dtype) -> EmoPipeline:
    """Random weights in the layout and with the settings ``import echomimic --acc`` writes."""
    from emo_stream.importers.core import ECHOMIMIC_ACC_SETTINGS
    from emo_stream.models import InferenceSettings
    from emo_stream.models import configs as named

    settings = InferenceSettings(**ECHOMIMIC_ACC_SETTINGS, audio_mode="inline", sample_size=512)
    return random_pipeline(named.echomimic_v1(), settings, "DDIMScheduler", device, dtype)


def offline_seconds_per_frame(pipe: EmoPipeline, face, seconds: float) -> dict[str, Any]:
    """The source's offline way: the whole clip in context windows, full steps, no cache (after one warm-up)."""
    wave = audio(seconds, 0)
    run = dict(generator=torch.Generator(device=pipe._model_device).manual_seed(0), decoder="vae")
    pipe(face.image, audio(0.5, 1), **run)  # warm-up: kernels, allocator
    _sync(pipe._model_device)
    t0 = time.perf_counter()
    out = pipe(face.image, wave, **run)
    _sync(pipe._model_device)
    elapsed = time.perf_counter() - t0
    frames = len(out.frames)
    return {"what": "EmoPipeline offline: whole video in 12-frame context windows (overlap 3), "
                    f"{pipe.settings.num_inference_steps} steps, VAE decode, 1 session",
            "frames": frames, "s_per_frame": round(elapsed / frames, 4), "fps": round(frames / elapsed, 2)}


def _pixels_key(rgb: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()


def record_mattes(faces: list) -> dict[str, np.ndarray]:
    """The person mattes the emo backend's lite shadow computes (mediapipe) for these avatars, by pixels."""
    from emo_stream.animators import lite_rig
    from emo_stream.animators.emo import LITE_MIN_SIZE
    from emo_stream.animators.emo_fallback import scaled_avatar
    from emo_stream.animators.lite import LiteAnimator

    mattes: dict[str, np.ndarray] = {}
    real = lite_rig.person_matte

    def recording(rgb, landmarks=None):
        mattes[_pixels_key(rgb)] = matte = real(rgb, landmarks)
        return matte

    lite_rig.person_matte = recording
    try:
        lite = LiteAnimator(size=max(faces[0].size, LITE_MIN_SIZE), fps=FPS)
        for face in faces:
            lite.prepare(scaled_avatar(face, lite.size))
    finally:
        lite_rig.person_matte = real
    return mattes


def use_recorded_mattes(mattes: dict[str, np.ndarray]) -> None:
    """Serve the lite shadow's mattes from ``record_mattes`` (for machines without mediapipe)."""
    from emo_stream.animators import lite_rig

    lite_rig.person_matte = lambda rgb, landmarks=None: mattes[_pixels_key(rgb)]


def avatars(size: int, count: int, path: Path | None = None) -> list:
    if path is not None:
        saved = pickle.loads(path.read_bytes())  # our own file, written by --save-avatars
        faces = saved["avatars"]
        if len(faces) < count or faces[0].size != size:
            raise SystemExit(f"{path}: holds {len(faces)} avatars of {faces[0].size}px; need {count} of {size}px")
        use_recorded_mattes(saved["mattes"])
        return faces[:count]
    astronaut = media.astronaut()
    sources = [("astronaut.png", astronaut), ("grace_hopper.png", media.grace_hopper())]
    sources += [(f"ast{style}.png", media.stylise(astronaut, style)) for style in media.STYLES]
    faces = [prepare_avatar(media.save_png(rgb, name), size=size) for name, rgb in sources[:count]]
    return [faces[k % len(faces)] for k in range(count)]  # more sessions than portraits: repeat (seeds differ)


def audio(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.3 * np.sin(2 * np.pi * (140 + 40 * seed) * t) * (rng.random(t.size) > 0.4)).astype(np.float32)


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else 0.0


def stream(animator: EmoAnimator, faces: list, seconds: float) -> dict[str, Any]:
    """Stream ``seconds`` of audio into len(faces) sessions, one feed_batch per tick."""
    states = [animator.prepare(face, seed=k) for k, face in enumerate(faces)]
    windows = [list(iter_windows([audio(seconds, k)])) for k in range(len(faces))]
    call_s, clip_s = [], []
    frames = 0
    started = time.perf_counter()
    for tick in range(len(windows[0])):
        t0 = time.perf_counter()
        out = animator.feed_batch([(w[tick], s) for w, s in zip(windows, states, strict=True)])
        _sync(animator.device)
        elapsed = time.perf_counter() - t0
        call_s.append(elapsed)
        if any(out):
            clip_s.append(elapsed)
        frames += sum(len(o) for o in out)
    for state in states:
        frames += len(animator.flush(state))
    wall = time.perf_counter() - started
    per_session = frames / len(faces) / wall
    return {"sessions": len(faces), "clip_call_ms_p50": pct(clip_s, 50), "clip_call_ms_p95": pct(clip_s, 95),
            "window_call_ms_p50": pct(call_s, 50), "window_call_ms_p95": pct(call_s, 95),
            "fps_per_session": round(per_session, 2), "fps_aggregate": round(per_session * len(faces), 2),
            "realtime_factor_per_session": round(per_session / FPS, 3),
            "fallback_frames": animator.stats.fallback_frames}


def flops_per_frame(animator: EmoAnimator, faces: list, clips: int = 3) -> float:
    """FLOPs per output frame of ``len(faces)`` sessions streaming ``clips`` whole clips each (counted, not
    timed, over the calls the timed run makes)."""
    states = [animator.prepare(face, seed=k) for k, face in enumerate(faces)]
    return stream_flops_per_frame(animator, states, [audio(clips * CLIP_FRAMES / FPS, k) for k in range(len(faces))])


def kernel_table(animator: EmoAnimator, faces: list, seconds: float, steps: int, top: int = 20) -> str:
    """The ``top`` kernels by their own device time (CPU: own CPU time) of one streaming run, as markdown."""
    from torch.profiler import ProfilerActivity, profile

    cuda = animator.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        stream(animator, faces, seconds)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"  # exclusive: shares add up
    events = list(prof.key_averages())
    if cuda:  # the kernels themselves, not also the aten ops that launched them (their time is the kernels')
        events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events if not e.key.startswith("ProfilerStep")) or 1.0
    lines = [f"Top {top} by {'device' if cuda else 'CPU'} time: {len(faces)} session(s), {steps} step(s), "
             f"{seconds:g} s of audio.", "", "| kernel / op | calls | time ms | share |", "|---|---|---|---|"]
    for event in events[:top]:
        name = event.key.replace("|", "/")[:90]
        t = getattr(event, key)
        lines.append(f"| `{name}` | {event.count} | {t / 1000:.1f} | {100 * t / total:.1f} % |")
    return "\n".join(lines) + "\n"


def memory_per_session(pipe: EmoPipeline, faces: list, size: int, guidance: float) -> dict[str, Any]:
    animator = EmoAnimator(pipe, size=size, clip_frames=CLIP_FRAMES, steps=1, guidance_scale=guidance,
                           realtime=False, warmup=True)
    device = animator.device

    def measure(count: int) -> tuple[int, int, int]:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(device)
        else:
            base = 0
        rss0 = _rss()
        states = [animator.prepare(face, seed=k) for k, face in enumerate(faces[:count])]
        for tick_window in iter_windows([audio(0.4, 0)]):  # 10 windows: one clip each, a carry held
            animator.feed_batch([(tick_window, s) for s in states])
        gc.collect()
        held = sum(tensor_bytes([s.portrait, s.carry]) for s in states)
        used = (torch.cuda.memory_allocated(device) - base) if device.type == "cuda" else held
        rss = _rss() - rss0
        del states
        animator.cache.clear()
        return used, held, rss

    one, four = measure(1), measure(4)
    return {"device_bytes_per_extra_session": int((four[0] - one[0]) / 3),
            "tensor_bytes_per_session": int(four[1] / 4),
            "rss_bytes_per_extra_session": int((four[2] - one[2]) / 3)}


def cache_speedup(pipe: EmoPipeline, face, size: int, seconds: float, guidance: float) -> dict[str, Any]:
    out = {}
    for name, cached in (("rerun_reference_net", False), ("cached_reference", True)):
        animator = EmoAnimator(pipe, size=size, clip_frames=CLIP_FRAMES, steps=2, guidance_scale=guidance,
                               realtime=False, cache_reference=cached, warmup=True)
        result = stream(animator, [face], seconds)
        out[name] = {"clip_call_ms_p50": result["clip_call_ms_p50"], "fps_per_session": result["fps_per_session"]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full-size random weights (GPU)")
    parser.add_argument("--device", default=None, help="default: cuda with --full, else cpu")
    parser.add_argument("--seconds", type=float, default=None, help="audio per run (default 4, --full 8)")
    parser.add_argument("--steps", default="1,2,4")
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--guidance", type=float, default=1.0, help="1.0: guidance-distilled (one row)")
    parser.add_argument("--source", choices=("emo", "echomimic-acc"), default="emo",
                        help="weights layout and settings with --full (see the module docstring)")
    parser.add_argument("--avatars", type=Path, help="read prepared avatars from this file (see --save-avatars)")
    parser.add_argument("--save-avatars", type=Path, help="prepare avatars for SIZE px, write them here, exit")
    parser.add_argument("--size", type=int, default=512, help="avatar size for --save-avatars")
    parser.add_argument("--grid-only", action="store_true", help="only the steps × sessions grid (no cache, "
                        "memory or offline measurements): the GPU campaign's runs, whose baseline is its own run "
                        "without --compile")
    parser.add_argument("--compile", action="store_true", help="torch.compile the denoiser blocks and decoder "
                        "(EmoAnimator(compile=True)); the warm-up pays the compile")
    parser.add_argument("--out", type=Path, help="also write the JSON here (the grid so far after every row)")
    parser.add_argument("--profile", type=Path, help="also write the top-20 kernels of one streaming run "
                        "(the first steps/batches of the grid) as a markdown table to this file")
    args = parser.parse_args()
    if args.save_avatars is not None:
        args.save_avatars.parent.mkdir(parents=True, exist_ok=True)
        faces = avatars(args.size, 8)
        args.save_avatars.write_bytes(pickle.dumps({"avatars": faces, "mattes": record_mattes(faces)}))
        print(f"wrote 8 avatars of {args.size}px to {args.save_avatars}", file=sys.stderr)
        return 0
    if args.source != "emo" and not args.full:
        parser.error("--source echomimic-acc needs --full")
    set_source(args.source)
    if args.compile:
        from torch import _dynamo

        # The denoiser's blocks share forward code with different shapes: one compiled graph each, not a
        # silent fall-back to eager once the default limit of 8 is reached.
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(_dynamo.config, name):
                setattr(_dynamo.config, name, 256)
    device = torch.device(args.device or ("cuda" if args.full else "cpu"))
    seconds = args.seconds or (8.0 if args.full else 4.0)
    steps_list = [int(s) for s in args.steps.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        if args.full and args.source == "echomimic-acc":
            pipe = echomimic_acc_pipeline(device, dtype)
        elif args.full:
            pipe = full_pipeline(device, dtype, args.guidance)
        else:
            pipe = tiny_pipeline(Path(tmp)).to(device)
        size = int(pipe.settings.sample_size)
        peak = device_peak_flops(device, pipe._model_dtype)
        faces = avatars(size, max(4, max(batches)), args.avatars)
        offline = offline_seconds_per_frame(pipe, faces[0], min(seconds, 4.0)) \
            if args.source != "emo" and not args.grid_only else None

        grid = []
        for steps in steps_list:
            animator = EmoAnimator(pipe, size=size, clip_frames=CLIP_FRAMES, steps=steps,
                                   guidance_scale=args.guidance, realtime=False, warmup=True, compile=args.compile)
            if args.profile is not None and steps == steps_list[0]:  # 3 clips: enough kernels, little time
                args.profile.parent.mkdir(parents=True, exist_ok=True)
                args.profile.write_text(kernel_table(animator, faces[:batches[0]], 3 * CLIP_FRAMES / FPS, steps))
            # FLOPs per frame do not change with the batch (tests/test_emo_flops.py): counted once a steps value.
            counted = flops_per_frame(animator, faces[:1], clips=1)
            for batch in batches:
                stream(animator, faces[:batch], CLIP_FRAMES / FPS)  # untimed: kernels, allocator, compiles
                row = stream(animator, faces[:batch], seconds)
                # A voice reaches its frame after the declared latency plus the clip call it waits for.
                row["voice_to_frame_ms_p95"] = round(animator.latency_frames * 1000 / FPS + row["clip_call_ms_p95"], 1)
                row["compute"] = ComputeAccount.of(counted, row["fps_aggregate"], peak).to_dict()
                grid.append({"steps": steps, **row})
                if args.out is not None:  # after every row: a run stopped at its time limit keeps what it measured
                    args.out.write_text(json.dumps({"partial": True, "grid": grid}, indent=1))
        cache = None if args.grid_only else cache_speedup(pipe, faces[0], size, seconds, args.guidance)
        memory = None if args.grid_only else memory_per_session(pipe, faces, size, args.guidance)
        latency_frames = EmoAnimator(pipe, size=size, clip_frames=CLIP_FRAMES, realtime=False).latency_frames
        decoder = "small" if pipe.small_decoder is not None else "vae"

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = os.environ.get("EMO_BENCH_COMMIT")  # a lent machine without the repository's history
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor()
                                                                                or platform.machine())
    result = {
        "bench": "emo",
        "device": f"{device.type}: {name}, {os.cpu_count()} cpu cores, torch {torch.__version__}",
        "commit": commit,
        "config": {"weights": f"full-size random ({args.source} layout)" if args.full else "tiny random checkpoint",
                   "compile": args.compile,
                   "size": size, "fps": FPS, "clip_frames": CLIP_FRAMES, "motion_frames": pipe.settings.motion_frames,
                   "latency_frames": latency_frames, "scheduler": type(pipe.scheduler).__name__,
                   "guidance_scale": args.guidance, "decoder": decoder, "step_rule": pipe.settings.step_rule, "dtype": str(pipe._model_dtype),
                   "audio_s_per_run": seconds, "torch_threads": torch.get_num_threads()},
        **_cache_and_memory(cache, memory),
        **({"offline_baseline": {**offline, "published_echomimic_acc_v100_s_per_frame":
                                 round(ECHOMIMIC_PUBLISHED_S_PER_FRAME, 3)}} if offline else {}),
        "units": {"ms": "milliseconds of wall time per feed_batch call", "fps": "video frames per second of wall time",
                  "bytes": "bytes", "realtime_factor": "fps_per_session / 25",
                  "compute": "FLOPs per output frame counted over the same calls (FlopCounterMode), achieved = "
                             "that × fps_aggregate, mfu = achieved / the device's dense 16-bit peak (None: unknown)"},
        "bench_s": round(time.perf_counter() - started, 1),
    }
    result.setdefault("candidate", {})["grid"] = grid
    if args.compile:
        from torch._dynamo.utils import counters

        result["compile_counters"] = {k: dict(v) for k, v in counters.items() if k in ("stats", "recompiles")}
    if args.grid_only:
        result["baseline"] = {"what": "the campaign's run of the same grid without --compile" if args.compile
                              else "this is the baseline (today's path) for the campaign's other runs"}
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


def _cache_and_memory(cache: dict[str, Any] | None, memory: dict[str, Any] | None) -> dict[str, Any]:
    """The reference cache's speed-up against its baseline (re-running the ReferenceNet), and memory."""
    if cache is None:
        return {}
    baseline, candidate = cache["rerun_reference_net"], cache["cached_reference"]
    return {
        "baseline": {"what": "VAE encode + ReferenceNet re-run for every clip, 2 steps, 1 session", **baseline},
        "candidate": {"cache": {"what": "cached reference bank, same run and settings", **candidate},
                      "memory": memory},
        "ratio": {"cache_speedup_clip_call": round(baseline["clip_call_ms_p50"] / candidate["clip_call_ms_p50"], 3),
                  "cache_speedup_fps": round(candidate["fps_per_session"] / baseline["fps_per_session"], 3)},
    }


if __name__ == "__main__":
    sys.exit(main())
