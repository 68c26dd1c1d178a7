"""Train the lite animator's learned motion on prepared real talking clips (``emo-stream train-lite-motion``).

Data: shards from ``emo-stream data prepare`` (each holds the clip's 16 kHz audio and the rig targets of
``rig_targets``). Speakers are split, not frames: the clips whose ids start with a ``held_out`` prefix are
never trained on, and the report scores them. Each training clip is seen with its own audio and three
augmented copies (quieter with noise, louder with a low-pass, pauses as digital silence), whose features are computed by the same
extractor the animator streams with.

Model: ``animators.motion_filter``, a causal linear filter fitted by ridge regression (closed form).
Blinks and head motion are not in the audio: their statistics are fitted here on the training clips
(``fit_blink_stats``, ``fit_head_stats``) and stored with the weights for ``animators.learned_motion``.
Deterministic for a seed (the only randomness is the augmentation noise); no torch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emo_stream.animators.motion_filter import (
    FRAME_DIM,
    SILENT_FRAME,
    MotionFilter,
    context_windows,
    feature_matrix,
)
from emo_stream.audio.features import frame_features
from emo_stream.errors import ConfigError, DataError
from emo_stream.metrics.blinks import blink_events
from emo_stream.training.rig_targets import HEAD_TARGETS, MOUTH_TARGETS, RIG_TARGET_NAMES
from emo_stream.training.shards import SAMPLE_RATE, load_manifest, read_clip_shard

SPEECH_LOUDNESS = 0.3  # a frame counts as speech above this loudness (for the fitted statistics)
PAUSE_LOUDNESS = 0.05  # and as a pause below this one (the mouth's rest position)
MAX_GAIN = 4.0  # the most the ridge-shrunk predictions are scaled back up


@dataclass(frozen=True)
class LiteMotionOptions:
    """One training run. ``held_out``: clip-id prefixes of the speakers kept out of training."""

    held_out: tuple[str, ...] = ()
    past: int = 2  # frames of context before the current one
    ridge: float = 10000.0  # on standardised inputs; chosen on held-out speakers (docs/lite-motion.md)
    seed: int = 0  # the augmentation noise


@dataclass
class TalkingClip:
    """One prepared clip: its speech features per frame (original and augmented) and its rig targets."""

    clip_id: str
    inputs: list[np.ndarray]  # (T, FRAME_DIM) per audio version; [0] is the original audio
    targets: np.ndarray  # (T, len(RIG_TARGET_NAMES))
    found: np.ndarray  # (T,) bool
    loudness: np.ndarray  # (T,) of the original audio
    stress: np.ndarray  # (T,)


@dataclass
class LiteMotionReport:
    """Scores on the held-out clips (Pearson r of the mouth opening per clip) and the fitted statistics."""

    held_out: list[str]
    trained_on: list[str]
    r_learned: dict[str, float]
    r_rules: dict[str, float]
    blink_stats: dict[str, Any]
    head_stats: dict[str, Any]
    seconds: float
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _augmented(audio: np.ndarray, loudness: np.ndarray, spf: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The other audio versions a clip is seen with: quieter with a noise floor, muffled and louder, and with its
    pauses replaced by digital silence (what a TTS or a muted microphone sends between phrases)."""
    quiet = audio * 0.15 + rng.normal(0.0, 10 ** (-55 / 20), len(audio))  # -16 dB with a noise floor
    kernel = np.hanning(7)
    loud = np.clip(np.convolve(audio, kernel / kernel.sum(), mode="same") * 2.5, -1.0, 1.0)
    gated = audio.copy()
    for n in np.flatnonzero(loudness < PAUSE_LOUDNESS):
        centre = n * spf
        gated[max(0, centre - spf // 2): centre + spf // 2] = 0.0
    return [quiet.astype(np.float32), loud.astype(np.float32), gated.astype(np.float32)]


def load_clips(data: str | Path, seed: int = 0, augment: bool = True,
               progress: Callable[[str], None] | None = None) -> list[TalkingClip]:
    """Every clip of a prepared folder with its features (original + augmented audio) and rig targets.

    Raises:
        DataError: no manifest, or shards written before the rig targets existed.
    """
    manifest = load_manifest(data)
    rng = np.random.default_rng(seed)
    clips = []
    for record in sorted(manifest.clips.values(), key=lambda r: r.clip_id):
        clip_id = record.clip_id
        arrays = read_clip_shard(Path(data) / record.shard)
        names = arrays.meta.get("rig_names")
        if names != list(RIG_TARGET_NAMES):
            raise DataError(f"{clip_id}: its rig targets are {names}, expected {list(RIG_TARGET_NAMES)}: "
                            "prepare the data again")
        audio = np.asarray(arrays.audio, np.float32)
        frames = frame_features(audio, SAMPLE_RATE, manifest.fps)[: len(arrays.rig)]
        inputs = [feature_matrix(frames)]
        loudness = np.array([f.loudness for f in frames])
        stress = np.array([f.stress for f in frames])
        if augment:
            for version in _augmented(audio, loudness, SAMPLE_RATE // manifest.fps, rng):
                inputs.append(feature_matrix(frame_features(version, SAMPLE_RATE, manifest.fps)[: len(arrays.rig)]))
        t = min(len(x) for x in inputs)
        clips.append(TalkingClip(clip_id=clip_id, inputs=[x[:t] for x in inputs], targets=np.asarray(arrays.rig)[:t],
                                 found=np.asarray(arrays.face_found)[:t], loudness=loudness[:t], stress=stress[:t]))
        if progress:
            progress(clip_id)
    return clips


def split(clips: list[TalkingClip], held_out: tuple[str, ...]) -> tuple[list[TalkingClip], list[TalkingClip]]:
    """(training, held-out) by clip-id prefix.

    Raises:
        ConfigError: a prefix matches no clip, or nothing is left to train on.
    """
    for prefix in held_out:
        if not any(c.clip_id.startswith(prefix) for c in clips):
            raise ConfigError(f"--held-out {prefix!r} matches no clip (clips: {', '.join(c.clip_id for c in clips)})")
    test = [c for c in clips if c.clip_id.startswith(held_out)] if held_out else []
    train = [c for c in clips if c not in test]
    if not train:
        raise ConfigError("every clip is held out: nothing to train on")
    return train, test


# ---------------------------------------------------------------------------------------------- statistics


def fit_blink_stats(clips: list[TalkingClip], fps: float) -> dict[str, Any]:
    """Blink rate, interval shape and the mean closure profile of the real blinks in ``clips``."""
    col = RIG_TARGET_NAMES.index("blink")
    intervals: list[float] = []
    profiles: list[np.ndarray] = []
    count, seconds = 0, 0.0
    per_minute = []
    speech_blinks = speech_s = pause_blinks = pause_s = 0.0
    for c in clips:
        openness = 1.0 - c.targets[:, col]
        events = blink_events(openness)
        count += len(events)
        seconds += len(openness) / fps
        per_minute.append(60.0 * len(events) * fps / max(len(openness), 1))
        starts = [a for a, _ in events]
        intervals += [(b - a) / fps for a, b in zip(starts, starts[1:], strict=False)]
        speaking = c.loudness > SPEECH_LOUDNESS
        speech_s += speaking.sum() / fps
        pause_s += (~speaking).sum() / fps
        for a, b in events:
            if speaking[a]:
                speech_blinks += 1
            else:
                pause_blinks += 1
            lo, hi = max(0, a - 2), min(len(openness), b + 4)
            profile = np.zeros(10)
            seg = c.targets[lo:hi, col][:10]
            profile[: len(seg)] = seg
            profiles.append(profile)
    iv = np.array(intervals) if intervals else np.array([3.0])
    mean_iv, var_iv = float(iv.mean()), float(iv.var()) if len(iv) > 1 else 1.0
    shape = float(np.clip(mean_iv ** 2 / max(var_iv, 1e-6), 0.8, 6.0))
    profile = np.mean(profiles, axis=0) if profiles else np.array([0.5, 1.0, 1.0, 0.6, 0.3, 0.1])
    # The shape the animator plays: the frames above 0.4 of the mean profile, peak scaled to a full close (the
    # mean of blinks aligned on their start smears their ends into a long half-closed tail no single blink has).
    keep = np.flatnonzero(profile > 0.4 * profile.max())
    shape_curve = profile[keep[0]: keep[-1] + 1] / max(float(profile.max()), 1e-6) if len(keep) else profile
    return {"per_minute": 60.0 * count / max(seconds, 1e-6), "per_minute_by_clip": per_minute,
            "interval_mean_s": mean_iv, "interval_gamma_shape": shape,
            "speech_per_minute": 60.0 * speech_blinks / max(speech_s, 1e-6),
            "pause_per_minute": 60.0 * pause_blinks / max(pause_s, 1e-6),
            "profile": [round(float(v), 4) for v in shape_curve], "blinks": count, "seconds": seconds}


def _ar2(x: np.ndarray) -> tuple[float, float]:
    """Yule-Walker AR(2) coefficients of a zero-mean series."""
    r = [float(np.dot(x[: len(x) - k], x[k:]) / len(x)) for k in range(3)]
    det = r[0] ** 2 - r[1] ** 2
    if det <= 1e-12:
        return 0.9, 0.0
    a1 = (r[1] * r[0] - r[1] * r[2]) / det
    a2 = (r[0] * r[2] - r[1] ** 2) / det
    return float(a1), float(a2)


def fit_head_stats(clips: list[TalkingClip], fps: float) -> dict[str, Any]:
    """Per axis: the real std (median over clips), an AR(2) for its spectrum, how much livelier the head is in
    speech than in pauses, and the nod (pitch) that follows a stressed syllable."""
    out: dict[str, Any] = {}
    kernel = np.array([1.0, 2.0, 1.0]) / 4.0  # the mesh's frame-to-frame jitter is not head motion
    for axis in HEAD_TARGETS:
        col = RIG_TARGET_NAMES.index(axis)
        stds, coefs, weights = [], [], []
        speech_v = pause_v = 0.0
        speech_n = pause_n = 0
        for c in clips:
            a = np.convolve(c.targets[:, col], kernel, mode="same")
            a = a - a.mean()
            if len(a) < 25:
                continue
            stds.append(float(a.std()))
            coefs.append(_ar2(a / max(a.std(), 1e-6)))
            weights.append(len(a))
            v = np.diff(a) ** 2
            speaking = c.loudness[1:] > SPEECH_LOUDNESS
            speech_v += float(v[speaking].sum())
            speech_n += int(speaking.sum())
            pause_v += float(v[~speaking].sum())
            pause_n += int((~speaking).sum())
        w = np.array(weights, np.float64)
        a1, a2 = (np.array(coefs) * w[:, None]).sum(axis=0) / w.sum() if coefs else (0.9, 0.0)
        liveliness = math.sqrt((speech_v / max(speech_n, 1)) / max(pause_v / max(pause_n, 1), 1e-9))
        out[axis] = {"std_deg": float(np.median(stds)) if stds else 2.0,
                     "std_by_clip": stds, "ar": [float(a1), float(a2)],
                     "speech_vs_pause": float(np.clip(liveliness, 0.5, 3.0)) if speech_n and pause_n else 1.0}
    # Nods: pitch change per unit of stress, by least squares over lags 0..5 frames after the syllable.
    col = RIG_TARGET_NAMES.index("pitch")
    lags = 6
    rows, ys = [], []
    for c in clips:
        p = np.convolve(c.targets[:, col], kernel, mode="same")
        dp = np.diff(p, prepend=p[0])
        s = c.stress
        for t in range(lags, len(p)):
            rows.append(s[t - lags + 1: t + 1][::-1])
            ys.append(dp[t])
    if rows:
        x, y = np.array(rows), np.array(ys)
        coef, *_ = np.linalg.lstsq(x.T @ x + 1e-3 * np.eye(lags), x.T @ y, rcond=None)
        explained = 1.0 - float(np.var(y - x @ coef) / max(np.var(y), 1e-12))
    else:
        coef, explained = np.zeros(lags), 0.0
    out["nod_kernel_deg"] = [round(float(v), 4) for v in coef]
    out["nod_explained"] = explained
    return out


# ---------------------------------------------------------------------------------------------- training


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.std(a) < 1e-9 or np.std(b) < 1e-9:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def fit_filter(train: list[TalkingClip], past: int, ridge: float) -> MotionFilter:
    """Ridge regression of the mouth targets on the context windows of every training clip and audio version
    (frames without a face left out). Closed form: the same data gives the same weights.

    Ridge shrinks the predictions toward the mean; each output is then scaled so that its spread over the
    training frames is the real mouths' (a render should open as far as people do), and the output for silence
    is kept as the rest position.
    """
    names = MOUTH_TARGETS
    cols = [RIG_TARGET_NAMES.index(n) for n in names]
    dim = (past + 2) * FRAME_DIM
    x_all = np.concatenate([context_windows(x, past)[c.found] for c in train for x in c.inputs]).astype(np.float64)
    y_all = np.concatenate([c.targets[c.found][:, cols] for c in train for _ in c.inputs]).astype(np.float64)
    in_mean = x_all.mean(axis=0)
    in_std = x_all.std(axis=0) + 1e-3
    model = MotionFilter(weight=np.zeros((len(names), dim), np.float32), bias=np.zeros(len(names), np.float32),
                         in_mean=in_mean.astype(np.float32), in_std=in_std.astype(np.float32),
                         rest=np.zeros(len(names), np.float32), output_names=names)
    xn = model.standardise(x_all.astype(np.float32)).astype(np.float64)
    x_mean = xn.mean(axis=0)
    y_mean = y_all.mean(axis=0)
    xc = xn - x_mean
    weight = np.linalg.solve(xc.T @ xc + ridge * np.eye(dim), xc.T @ (y_all - y_mean)).T
    pred = xc @ weight.T
    gain = np.clip(y_all.std(axis=0) / np.maximum(pred.std(axis=0), 1e-9), 1.0, MAX_GAIN)
    weight *= gain[:, None]
    model.weight = weight.astype(np.float32)
    model.bias = (y_mean - weight @ x_mean).astype(np.float32)
    # Rest: the answer to silence, which the gated copies taught it (pauses as digital silence).
    silence = model.standardise(np.tile(SILENT_FRAME, past + 2)[None])
    model.rest = (silence @ model.weight.T + model.bias)[0].astype(np.float32)
    return model


def train_lite_motion(data: str | Path, out: str | Path, options: LiteMotionOptions,
                      progress: Callable[[str], None] | None = None) -> LiteMotionReport:
    """Fit the filter on the training speakers, score the held-out speakers against the rules, fit the blink and
    head statistics, and write ``out`` (safetensors, the statistics in its metadata)."""
    started = time.monotonic()
    fps = float(load_manifest(data).fps)
    clips = load_clips(data, seed=options.seed, progress=progress)
    train, test = split(clips, options.held_out)
    model = fit_filter(train, options.past, options.ridge)
    blink_stats = fit_blink_stats(train, fps)
    head_stats = fit_head_stats(train, fps)
    r_learned, r_rules = score_held_out(model, test, data, fps)
    model.stats = {"blink": blink_stats, "head": head_stats, "fps": fps, "held_out": list(options.held_out),
                   "trained_on": [c.clip_id for c in train], "seed": options.seed, "ridge": options.ridge}
    model.save(out)
    return LiteMotionReport(held_out=[c.clip_id for c in test], trained_on=[c.clip_id for c in train],
                            r_learned=r_learned, r_rules=r_rules, blink_stats=blink_stats, head_stats=head_stats,
                            seconds=time.monotonic() - started, options=asdict(options))


def opening(model: MotionFilter | None, values: np.ndarray) -> np.ndarray:
    """The lip gap ``metrics.face_measures.lip_gap`` sees: the mean of the outer and inner lip gaps, from a
    model's outputs (``model``) or from rig targets (None)."""
    names = model.output_names if model is not None else RIG_TARGET_NAMES
    return 0.5 * (values[:, names.index("lips_apart")] + values[:, names.index("mouth_open")])


def score_held_out(net: MotionFilter, test: list[TalkingClip], data: str | Path,
                   fps: float) -> tuple[dict[str, float], dict[str, float]]:
    """Per held-out clip: r of the learned lip gap and of the rules' jaw with the real one, both as ``lip_gap``
    measures it (the mean of the outer and inner lip gaps), on frames with a face."""
    from emo_stream.animators.lite_motion import MotionController

    shards = {r.clip_id: r.shard for r in load_manifest(data).clips.values()}

    learned, rules = {}, {}
    for c in test:
        arrays = read_clip_shard(Path(data) / shards[c.clip_id])
        frames = frame_features(np.asarray(arrays.audio, np.float32), SAMPLE_RATE, fps)[: len(c.targets)]
        pred = opening(net, net.run(feature_matrix(frames)))
        controller = MotionController(fps=int(fps), motion=0.0, seed=0)
        jaw = np.array([controller.step(f, frames[i + 1] if i + 1 < len(frames) else None).jaw
                        for i, f in enumerate(frames)])
        real = opening(None, c.targets)
        ok = c.found
        learned[c.clip_id] = _pearson(pred[ok], real[ok])
        rules[c.clip_id] = _pearson(jaw[ok], real[ok])
    return learned, rules
