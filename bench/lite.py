"""Benchmark of the lite backend; prints one JSON object (not a test: no pass/fail here).

Measures, on this machine:
1. animator frames/s on one core at 512² (OpenCV limited to one thread), alone and with
   H.264 encoding, against a baseline measured in the same run: one plain cv2.remap of the
   frame per frame (the floor of any warp animator); the learned motion (the default) and the
   rules, interleaved;
2. cold render time ÷ audio duration for a 30 s clip (process start to finished file), against
   a baseline process that only encodes the still portrait with the same audio;
3. peak RSS of `emo-stream render` for 10 s and 120 s of audio (growth must stay small).

Usage: .venv/bin/python bench/lite.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emo_stream.animators import create_animator  # noqa: E402
from emo_stream.audio import load_audio  # noqa: E402
from emo_stream.avatar import prepare_avatar  # noqa: E402
from emo_stream.streaming import iter_windows  # noqa: E402
from tests import media  # noqa: E402

PORTRAIT = REPO / "emo_stream" / "assets" / "default.jpg"


def _speech(seconds: float, tmp: Path) -> Path:
    parts = [str(media.espeak_wav(k, voice=v)) for k in ("hello", "weather", "story")
             for v in ("en-us", "en-gb", "en-us+f3")]
    out = tmp / f"speech-{seconds:g}.wav"
    repeats = int(seconds // 20) + 1
    subprocess.run(["sox", *(parts * repeats), "-r", "16000", str(out), "trim", "0", str(seconds)], check=True)
    return out


def _encoder(path: Path, size: int):
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=25)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": "20", "preset": "veryfast", "tune": "animation", "threads": "1"}
    return container, stream


def animator_fps(audio: Path, tmp: Path, size: int = 512) -> dict:
    cv2.setNumThreads(1)
    avatar = prepare_avatar(PORTRAIT, size=size)
    animators = {motion: create_animator("lite", size=size, lite_motion=motion) for motion in ("learned", "rules")}
    windows = list(iter_windows([load_audio(audio)]))

    def timed(pictures, encode: bool, name: str) -> float:
        """Frames/s of drawing ``pictures`` (a generator: the work happens as it is consumed),
        with or without H.264 encoding of each one."""
        container, stream = _encoder(tmp / f"{name}.mp4", size) if encode else (None, None)
        n = 0
        start = time.perf_counter()
        for rgb in pictures:
            if encode:
                vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                vf.pts, vf.time_base = n, Fraction(1, 25)
                container.mux(stream.encode(vf))
            n += 1
        elapsed = time.perf_counter() - start
        if encode:
            container.mux(stream.encode(None))
            container.close()
        return n / elapsed

    def animated(motion: str = "learned"):
        animator = animators[motion]
        state = animator.prepare(avatar, seed=0)
        for w in windows:
            for frame in animator.feed(w, state):
                yield frame.rgb

    def remapped():
        rgb = avatar.image
        gx, gy = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
        for _ in windows:
            yield cv2.remap(rgb, gx + 0.3, gy, interpolation=cv2.INTER_LINEAR)

    def run(encode: bool) -> float:
        return timed(animated(), encode, "bench")

    def baseline(encode: bool) -> float:
        return timed(remapped(), encode, "base")

    run(False)  # warm caches
    # The learned motion against the rules, interleaved: what the learned mouth, blinks and head cost.
    learned, rules = [], []
    for _ in range(2):
        learned.append(timed(animated("learned"), False, "bench"))
        rules.append(timed(animated("rules"), False, "bench"))
    result = {"animator_fps_per_core": max(learned), "animator_rules_fps_per_core": max(rules),
              "animator_with_encode_fps_per_core": run(True),
              "baseline_remap_fps_per_core": baseline(False), "baseline_remap_with_encode_fps_per_core": baseline(True)}
    cv2.setNumThreads(-1)
    return result


BASELINE_ENCODE = """
import sys, av, numpy as np
from fractions import Fraction
from PIL import Image
img = np.asarray(Image.open(sys.argv[1]).convert("RGB").resize((512, 512)))
src = av.open(sys.argv[2])
with av.open(sys.argv[3], "w") as out:
    v = out.add_stream("libx264", rate=25); v.width = v.height = 512; v.pix_fmt = "yuv420p"
    v.options = {"crf": "20", "preset": "veryfast", "tune": "animation"}
    a = out.add_stream("aac", rate=48000, layout="mono")
    res = av.AudioResampler(format="flt", layout="mono", rate=48000)
    n = 0; pts = 0
    for frame in src.decode(audio=0):
        for r in res.resample(frame):
            r.pts = pts; pts += r.samples
            out.mux(a.encode(r))
    out.mux(a.encode(None))
    for i in range(int(pts / 48000 * 25)):
        vf = av.VideoFrame.from_ndarray(img, format="rgb24"); vf.pts = i; vf.time_base = Fraction(1, 25)
        out.mux(v.encode(vf))
    out.mux(v.encode(None))
"""


def _timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of a child process."""
    wrapper = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
               "r = subprocess.run(sys.argv[1:]); "
               "print(json.dumps([time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
               "r.returncode]))")
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, cwd=REPO, check=True)
    seconds, rss, code = json.loads(out.stdout.strip().splitlines()[-1])
    if code:
        raise RuntimeError(f"{cmd} failed with {code}")
    return seconds, rss


def cold_render(audio: Path, tmp: Path) -> dict:
    cli = [sys.executable, "-m", "server.cli", "render", "--image", str(PORTRAIT), "--audio", str(audio)]
    seconds, _ = _timed([*cli, "-o", str(tmp / "cold.mp4")])
    base, _ = _timed([sys.executable, "-c", BASELINE_ENCODE, str(PORTRAIT), str(audio), str(tmp / "still.mp4")])
    duration = len(load_audio(audio)) / 16_000
    return {"cold_render_s": seconds, "cold_render_over_audio": seconds / duration,
            "baseline_still_encode_over_audio": base / duration, "audio_s": duration}


def rss(short: Path, long: Path, tmp: Path) -> dict:
    cli = [sys.executable, "-m", "server.cli", "render", "--image", str(PORTRAIT)]
    _, rss_short = _timed([*cli, "--audio", str(short), "-o", str(tmp / "short.mp4")])
    _, rss_long = _timed([*cli, "--audio", str(long), "-o", str(tmp / "long.mp4")])
    return {"peak_rss_mb_10s": rss_short / 1024, "peak_rss_mb_120s": rss_long / 1024,
            "rss_growth_mb": (rss_long - rss_short) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter clips (for a smoke run)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        clip = _speech(10 if args.quick else 30, tmp)
        fps = animator_fps(clip, tmp)
        cold = cold_render(clip, tmp)
        memory = rss(_speech(10, tmp), _speech(30 if args.quick else 120, tmp), tmp)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    candidate = {**fps, **cold, **memory}
    print(json.dumps({
        "bench": "lite",
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "commit": commit,
        "config": {"size": 512, "fps": 25, "x264_preset": "veryfast", "clip_s": cold["audio_s"]},
        "baseline": {"remap_fps_per_core": fps["baseline_remap_fps_per_core"],
                     "remap_with_encode_fps_per_core": fps["baseline_remap_with_encode_fps_per_core"],
                     "still_encode_over_audio": cold["baseline_still_encode_over_audio"]},
        "candidate": candidate,
        "ratio": {"animator_vs_remap": fps["animator_fps_per_core"] / fps["baseline_remap_fps_per_core"],
                  "render_vs_still_encode": cold["cold_render_over_audio"] / cold["baseline_still_encode_over_audio"]},
        "targets": {"animator_fps_per_core": ">= 100 (aim 200)", "cold_render_over_audio": "<= 0.25",
                    "rss_growth_mb": "<= 50"},
        "units": {"fps": "frames/s", "render": "wall s / audio s", "rss": "MiB"},
    }, indent=2))


if __name__ == "__main__":
    main()
