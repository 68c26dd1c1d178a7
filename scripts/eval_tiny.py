"""Held-out evaluation of a tiny checkpoint: emo vs the lite teacher vs a still image, scored by ``emo-stream metrics``.

Usage: .venv/bin/python scripts/eval_tiny.py --checkpoint runs/train-tiny/checkpoint [--out runs/train-tiny/eval]
       [--docs]

Each held-out portrait (``scripts/tiny_media.py``: painted and mirrored/recoloured variants no training video
has) speaks two held-out voices and sentences with 1 s of silence before and after (8 inputs), each rendered
at 256 px three ways:

- ``emo``:   ``emo-stream render --backend emo --checkpoint DIR`` (the model streams at 128 px, resized to 256);
- ``lite``:  ``emo-stream render`` (the lite animator, the teacher of the training videos);
- ``still``: the prepared portrait crop, unchanged in every frame, with the same audio (the baseline).

Every video is scored with ``emo-stream metrics``; ``OUT/report.json`` holds each video's metrics and the means
per backend, ``OUT/contact_sheet.jpg`` samples of each (``--docs``: both also go to ``docs/research/``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

SIZE = 256
BACKENDS = ("still", "lite", "emo")
FIELDS = ("face_found", "lipsync_r", "av_offset_ms", "mouth_open_range", "mouth_open_range_speech",
          "mouth_open_range_silence")
TILE = 112


def still_video(image: Path, audio: Path, out: Path) -> None:
    """The prepared portrait crop in every frame, muxed with ``audio`` (what a model that learnt nothing shows)."""
    from emo_stream.audio.decode import load_audio
    from emo_stream.avatar import prepare_avatar

    rgb = prepare_avatar(image, size=SIZE).image
    samples = load_audio(audio)
    frames = int(np.ceil(len(samples) / 16000 * 25))
    tmp = out.with_name(out.stem + ".tmp.mp4")
    with av.open(str(tmp), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width = video.height = SIZE
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=16000, layout="mono")
        for n in range(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = n, Fraction(1, 25)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for start in range(0, len(samples), 1024):
            chunk = np.ascontiguousarray(samples[start:start + 1024], dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, start, Fraction(1, 16000)
            container.mux(sound.encode(frame))
        container.mux(sound.encode(None))
    tmp.rename(out)


def render(backend: str, image: Path, audio: Path, out: Path, checkpoint: Path, seed: int, env: dict) -> None:
    if out.exists() and backend != "emo":  # still and lite do not depend on the checkpoint: made once
        return
    if backend == "still":
        still_video(image, audio, out)
        return
    cli = str(Path(sys.executable).parent / "emo-stream")
    tmp = out.with_name(out.stem + ".tmp.mp4")
    cmd = [cli, "render", "--image", str(image), "--audio", str(audio), "-o", str(tmp), "--size", str(SIZE),
           "--seed", str(seed), "--backend", backend]
    if backend == "emo":
        cmd += ["--checkpoint", str(checkpoint)]
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    tmp.rename(out)


def metrics(video: Path, env: dict) -> dict:
    cli = str(Path(sys.executable).parent / "emo-stream")
    done = subprocess.run([cli, "metrics", str(video), "--compact"], check=True, env=env, cwd=REPO,
                          capture_output=True, text=True)
    return json.loads(done.stdout)


def rel(path: Path | str) -> str:
    """``path`` relative to the repository when inside it (reports are committed to docs/)."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def mean(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 4) if kept else None


def summary(rows: list[dict]) -> dict:
    out = {f: mean([r[f] for r in rows]) for f in FIELDS}
    # Mouth range in silence over mouth range in speech (of the means over the videos).
    silence, speech = out["mouth_open_range_silence"], out["mouth_open_range_speech"]
    out["silence_to_speech_range"] = round(silence / speech, 4) if silence is not None and speech else None
    out["videos"] = len(rows)
    out["videos_with_lipsync_r"] = sum(r["lipsync_r"] is not None for r in rows)
    return out


def by_style(items: list[dict]) -> dict:
    """The summary per held-out portrait style (``painted``: a style no training portrait has; ``mirrored``)."""
    styles = sorted({item["portrait"].split("-", 1)[1] for item in items})
    return {style: {b: summary([it["metrics"][b] for it in items if it["portrait"].endswith(style)])
                    for b in BACKENDS} for style in styles}


def compare(report: dict, other: dict, tolerance: float = 0.05) -> dict:
    """Differences of the emo means from another run's report (the same seed: issue #12 asks for <= 0.05)."""
    keys = ("face_found", "lipsync_r", "mouth_open_range", "mouth_open_range_speech", "mouth_open_range_silence",
            "silence_to_speech_range")
    a, b = report["summary"]["emo"], other["summary"]["emo"]
    deltas = {k: round(abs(a[k] - b[k]), 4) for k in keys if a.get(k) is not None and b.get(k) is not None}
    return {"other": other.get("checkpoint"), "abs_diff": deltas,
            f"within_{tolerance}": all(d <= tolerance for d in deltas.values())}


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def contact_sheet(items: list[dict], folder: Path, out: Path, columns: int = 7) -> Path:
    """Per held-out input, one row per backend: ``columns`` frames spread over the speech (silence at both ends)."""
    rows = []
    for item in items:
        videos = {b: frames_of(folder / f"{item['name']}-{b}.mp4") for b in BACKENDS}
        n = min(len(v) for v in videos.values())
        picks = np.linspace(10, n - 10, columns).round().astype(int).tolist()
        for b in BACKENDS:
            row = Image.new("RGB", (TILE * columns + 110, TILE), "white")
            draw = ImageDraw.Draw(row)
            draw.text((4, 4), b, fill="black")
            if b == BACKENDS[0]:
                draw.text((4, 20), item["portrait"][:18], fill="black")
                draw.text((4, 36), item["voice"][:18], fill="black")
            draw.text((4, TILE - 16), f"frames {picks[0]}..{picks[-1]}", fill="grey")
            for i, k in enumerate(picks):
                tile = Image.fromarray(videos[b][k]).resize((TILE, TILE), Image.LANCZOS)
                row.paste(tile, (110 + TILE * i, 0))
            rows.append(row)
    sheet = Image.new("RGB", (rows[0].width, len(rows) * TILE + (len(items) - 1) * 6), "white")
    y = 0
    for i, row in enumerate(rows):
        sheet.paste(row, (0, y))
        y += TILE + (6 if i % len(BACKENDS) == len(BACKENDS) - 1 else 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, quality=80)
    return out


def main() -> int:
    from tiny_media import held_out_audio, held_out_portraits, save_portrait

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "train-tiny" / "eval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", type=Path, help="another run's report.json (same seed): store the differences")
    parser.add_argument("--limit", type=int, help="only the first N held-out inputs (quick looks)")
    parser.add_argument("--docs", action="store_true",
                        help="also write docs/research/train_tiny_{report.json,contact_sheet.jpg}")
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GLOG_minloglevel="2")
    args.out.mkdir(parents=True, exist_ok=True)
    items, per_backend = [], {b: [] for b in BACKENDS}
    portraits, audio = held_out_portraits(), held_out_audio()
    # Each held-out portrait speaks two held-out voices/sentences: 8 videos per backend.
    pairs = [(p, audio[(i + shift) % len(audio)]) for shift in (0, 2) for i, p in enumerate(portraits)]
    for p, (voice, wav) in pairs[:args.limit]:
        image = save_portrait(p, args.out / "portraits")
        item = {"name": f"{p.name}-{voice.replace('+', '_')}", "portrait": p.name, "voice": voice,
                "audio": rel(wav), "metrics": {}}
        for b in BACKENDS:
            video = args.out / f"{item['name']}-{b}.mp4"
            render(b, image, wav, video, args.checkpoint, args.seed, env)
            m = metrics(video, env)
            item["metrics"][b] = m
            per_backend[b].append(m)
            print(f"{item['name']:48s} {b:5s} " + " ".join(f"{f}={m[f]}" for f in FIELDS), file=sys.stderr,
                  flush=True)
        items.append(item)
    report = {"checkpoint": rel(args.checkpoint), "seed": args.seed, "size": SIZE,
              "summary": {b: summary(rows) for b, rows in per_backend.items()},
              "by_style": by_style(items), "items": items}
    s = report["summary"]
    emo, still = s["emo"], s["still"]
    gain = None
    if emo["lipsync_r"] is not None and still["lipsync_r"] is not None:
        gain = round(emo["lipsync_r"] - still["lipsync_r"], 4)
    s["emo_minus_still_lipsync_r"] = gain
    # Issue #12's targets, judged on the emo means.
    report["targets"] = {
        "lipsync_r >= 0.3": emo["lipsync_r"] is not None and emo["lipsync_r"] >= 0.3,
        "lipsync_r >= still + 0.2": gain is not None and gain >= 0.2,
        "silence range <= 0.5 x speech range": emo["silence_to_speech_range"] is not None
        and emo["silence_to_speech_range"] <= 0.5,
        "face_found >= 0.9": emo["face_found"] is not None and emo["face_found"] >= 0.9,
    }
    if args.compare is not None:
        report["rerun"] = compare(report, json.loads(args.compare.read_text()))
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    shown = items[:len(portraits)]  # one row group per held-out portrait
    sheet = contact_sheet(shown, args.out, args.out / "contact_sheet.jpg")
    if args.docs:
        docs = REPO / "docs" / "research"
        (docs / "train_tiny_report.json").write_text(json.dumps(report, indent=2))
        contact_sheet(shown, args.out, docs / "train_tiny_contact_sheet.jpg")
    print(json.dumps({"summary": report["summary"], "targets": report["targets"]}, indent=2))
    print(f"wrote {args.out / 'report.json'} and {sheet}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
