"""Held-out self-reenactment of the lite animator, rules vs learned motion in the same run; prints one JSON object.

For each held-out clip of real talking video (speakers the learned motion never saw: the ``held_out`` list stored
in its weights, or ``--held-out``): the clip's first frame is the portrait, the clip's own audio drives it, and the
render is measured with the same face mesh as the real video (``metrics.measure_video``):
- mouth: Pearson r of the render's lip gap with the real one, frame by frame (frames with a face in both). The lip
  gap (``face_measures.lip_gap``) is measured in 3D, so head motion does not enter it; the 2D mouth opening
  (``face_measures.mouth_opening``, nose to chin included), which a nod changes, is reported beside it;
- blinks per minute, head yaw/pitch std (degrees): against the real clips' interquartile range / range, measured
  on all clips in the folder;
- lip-gap range in silence ÷ in speech (``metrics.report.metrics_from_measures``), and the same for the 2D opening.
It also writes a contact sheet (``--sheet``): per held-out clip, the portrait and the three mouth traces.

The clips are not in the repository: the default folder is ``../shared/data/talking`` beside the checkout.

Usage: .venv/bin/python bench/quality.py [--data DIR] [--sheet docs/images/lite-motion-heldout.png]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emo_stream.animators.motion_filter import DEFAULT_WEIGHTS, MotionFilter  # noqa: E402
from emo_stream.metrics.blinks import blink_events  # noqa: E402
from emo_stream.metrics.face_measures import head_angles  # noqa: E402
from emo_stream.metrics.report import metrics_from_measures  # noqa: E402
from emo_stream.metrics.video import VideoMeasures, measure_video  # noqa: E402
from emo_stream.render import RenderOptions, render_file  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "talking"
MOTIONS = ("rules", "learned")


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 10 or np.std(a[ok]) < 1e-9 or np.std(b[ok]) < 1e-9:
        return None
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def _ratio(part: float | None, whole: float | None) -> float | None:
    return part / whole if part is not None and whole else None


def _stats(m: VideoMeasures) -> dict[str, float | None]:
    face = m.face_mask
    minutes = m.frames / m.fps / 60.0 if m.fps else None
    blinks = len(blink_events(m.ear))
    out: dict[str, float | None] = {"blinks_per_min": blinks / minutes if minutes else None,
                                    "yaw_std": None, "pitch_std": None}
    if face.sum() >= 2:
        yaw, pitch, _ = head_angles(m.rigid[face]).std(axis=0)
        out["yaw_std"], out["pitch_std"] = float(yaw), float(pitch)
    return out


def _first_frame(video: Path, out: Path) -> Path:
    with av.open(str(video)) as container:
        frame = next(container.decode(video=0))
        frame.to_image().save(out)
    return out


def _round(x):
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


def _sheet(rows: list[dict], path: Path, faces: bool) -> None:
    """Per clip its mouth traces (and, with ``faces``, the portrait: keep those sheets out of the repository,
    the clips' licences do not cover redistributing their frames)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 2 if faces else 1, figsize=(12, 2.2 * len(rows)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 5]} if faces else None)
    for ax_row, row in zip(axes, rows, strict=True):
        ax = ax_row[-1]
        if faces:
            ax_row[0].imshow(row["portrait"])
            ax_row[0].set_axis_off()
        t = np.arange(len(row["real"])) / 25.0

        def z(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x, np.float64)
            ok = np.isfinite(x)
            return (x - np.nanmean(x[ok])) / max(float(np.nanstd(x[ok])), 1e-9)

        ax.plot(t, z(row["real"]), color="black", lw=1.4, label="real video")
        ax.plot(t, z(row["rules"]), color="tab:orange", lw=0.9, label=f"rules r={row['r']['rules']:.2f}")
        ax.plot(t, z(row["learned"]), color="tab:blue", lw=0.9, label=f"learned r={row['r']['learned']:.2f}")
        ax.set_title(row["clip"], fontsize=9, loc="left")
        ax.set_yticks([])
        ax.legend(fontsize=7, loc="upper right", ncol=3)
    axes[-1][-1].set_xlabel("seconds (lip gap measured by the face mesh in 3D, standardised per trace)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of real talking clips (mp4)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="learned motion file")
    parser.add_argument("--held-out", default=None, help="comma-separated clip-name prefixes (default: the ones "
                        "the weights were not trained on)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--sheet", type=Path, default=None, help="write the contact sheet PNG here")
    parser.add_argument("--faces", action="store_true", help="put each clip's portrait on the sheet (not for the "
                        "repository: the clips' licences do not cover their frames)")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"error: no talking clips at {args.data} (pass --data DIR)", file=sys.stderr)
        return 2
    model = MotionFilter.load(args.weights)
    prefixes = tuple(args.held_out.split(",")) if args.held_out else tuple(model.stats.get("held_out", ()))
    videos = sorted(args.data.glob("*.mp4"))
    held = [v for v in videos if v.name.startswith(prefixes)] if prefixes else []
    if not held:
        print(f"error: no held-out clips in {args.data} for prefixes {prefixes}", file=sys.stderr)
        return 2
    started = time.monotonic()
    real_stats = {}
    real_measures = {}
    for v in videos:
        m = measure_video(v)
        real_measures[v.name] = m
        real_stats[v.name] = _stats(m)
    blink_rates = np.array([s["blinks_per_min"] for s in real_stats.values()], np.float64)
    yaw = np.array([s["yaw_std"] for s in real_stats.values() if s["yaw_std"] is not None])
    pitch = np.array([s["pitch_std"] for s in real_stats.values() if s["pitch_std"] is not None])
    real = {"clips": len(videos), "blinks_per_min_iqr": [float(np.percentile(blink_rates, 25)),
                                                          float(np.percentile(blink_rates, 75))],
            "blinks_per_min_median": float(np.median(blink_rates)),
            "yaw_std_range": [float(yaw.min()), float(yaw.max())], "pitch_std_range": [float(pitch.min()),
                                                                                    float(pitch.max())]}
    clips = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for v in held:
            portrait = _first_frame(v, tmp / f"{v.stem}.png")
            audio = v  # the clip's own sound track drives the render
            result: dict = {"r": {}, "r_mouth_opening_2d": {}, "stats": {}, "silence_over_speech": {},
                            "silence_over_speech_2d": {}}
            traces = {}
            real_m = real_measures[v.name]
            for motion in MOTIONS:
                out = tmp / f"{v.stem}-{motion}.mp4"
                render_file(portrait, audio, out, RenderOptions(size=args.size, lite_motion=motion))
                m = measure_video(out)
                n = min(m.frames, real_m.frames)
                result["r"][motion] = _pearson(m.lip_gap[:n], real_m.lip_gap[:n])
                result["r_mouth_opening_2d"][motion] = _pearson(m.mouth[:n], real_m.mouth[:n])
                result["stats"][motion] = _stats(m)
                metrics = metrics_from_measures(m, out, audio)
                result["silence_over_speech"][motion] = _ratio(metrics.lip_gap_range_silence,
                                                               metrics.lip_gap_range_speech)
                result["silence_over_speech_2d"][motion] = _ratio(metrics.mouth_open_range_silence,
                                                                  metrics.mouth_open_range_speech)
                traces[motion] = m.lip_gap[:n]
            real_metrics = metrics_from_measures(real_m, v)
            result["silence_over_speech"]["real"] = _ratio(real_metrics.lip_gap_range_silence,
                                                           real_metrics.lip_gap_range_speech)
            result["silence_over_speech_2d"]["real"] = _ratio(real_metrics.mouth_open_range_silence,
                                                              real_metrics.mouth_open_range_speech)
            result["real"] = real_stats[v.name]
            clips[v.name] = result
            rows.append({"clip": v.name, "portrait": np.asarray(av.open(str(portrait)).decode(video=0).__next__().to_image()),
                         "real": real_m.lip_gap[: len(traces["learned"])], **traces,
                         "r": {k: (result["r"][k] or 0.0) for k in MOTIONS}})
    mean_r = {k: float(np.mean([c["r"][k] or 0.0 for c in clips.values()])) for k in MOTIONS}
    mean_r_2d = {k: float(np.mean([c["r_mouth_opening_2d"][k] or 0.0 for c in clips.values()])) for k in MOTIONS}
    summary = {}
    for k in MOTIONS:
        rates = [c["stats"][k]["blinks_per_min"] for c in clips.values()]
        yaws = [c["stats"][k]["yaw_std"] for c in clips.values() if c["stats"][k]["yaw_std"] is not None]
        pitches = [c["stats"][k]["pitch_std"] for c in clips.values() if c["stats"][k]["pitch_std"] is not None]
        ratio = [c["silence_over_speech"][k] for c in clips.values() if c["silence_over_speech"][k] is not None]
        ratio_2d = [c["silence_over_speech_2d"][k] for c in clips.values()
                    if c["silence_over_speech_2d"][k] is not None]
        summary[k] = {"mouth_r_mean": mean_r[k], "mouth_opening_2d_r_mean": mean_r_2d[k],
                      "silence_over_speech_2d_mean": float(np.mean(ratio_2d)) if ratio_2d else None,
                      "blinks_per_min_mean": float(np.mean(rates)),
                      "yaw_std_mean": float(np.mean(yaws)) if yaws else None,
                      "pitch_std_mean": float(np.mean(pitches)) if pitches else None,
                      "silence_over_speech_mean": float(np.mean(ratio)) if ratio else None}
    real_ratio = [c["silence_over_speech"]["real"] for c in clips.values() if c["silence_over_speech"]["real"]]
    real["silence_over_speech_mean"] = float(np.mean(real_ratio)) if real_ratio else None
    real_2d = [c["silence_over_speech_2d"]["real"] for c in clips.values() if c["silence_over_speech_2d"]["real"]]
    real["silence_over_speech_2d_mean"] = float(np.mean(real_2d)) if real_2d else None
    lo, hi = real["blinks_per_min_iqr"]
    learned = summary["learned"]
    targets = {
        "mouth_r_at_least_0.5": mean_r["learned"] >= 0.5,
        "mouth_r_rules_plus_0.1": mean_r["learned"] >= mean_r["rules"] + 0.1,
        "blinks_in_real_iqr": lo <= learned["blinks_per_min_mean"] <= hi,
        "yaw_std_in_real_range": learned["yaw_std_mean"] is not None
        and real["yaw_std_range"][0] <= learned["yaw_std_mean"] <= real["yaw_std_range"][1],
        "pitch_std_in_real_range": learned["pitch_std_mean"] is not None
        and real["pitch_std_range"][0] <= learned["pitch_std_mean"] <= real["pitch_std_range"][1],
        "silence_at_most_0.3_of_speech": learned["silence_over_speech_mean"] is not None
        and learned["silence_over_speech_mean"] <= 0.3,
    }
    if args.sheet:
        _sheet(rows, args.sheet, args.faces)
    report = {"machine": platform.node(), "weights": str(args.weights), "held_out": [v.name for v in held],
              "real": real, "summary": summary, "targets": targets, "clips": clips,
              "seconds": time.monotonic() - started}
    print(json.dumps(_round(report), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
