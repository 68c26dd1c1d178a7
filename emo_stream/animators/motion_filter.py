"""The learned lite motion's model, run in numpy (the lite path imports no torch).

A causal linear filter: each frame's mouth targets (``training.rig_targets``, eye spans) are a learned linear
function of the speech features of the last ``past`` frames, this frame and the next one (the animator's one
frame of lookahead). Five minutes of real talking video is too little for more: a recurrent network trained
on it scored below the rules on held-out speakers, the ridge-regularised filter above them
(docs/lite-motion.md). Offline (``run``) and streaming (``step``) share ``step``, so both give the same numbers.
The weights and the fitted blink and head statistics live in one safetensors file
(``emo_stream/assets/lite_motion.safetensors``), written by ``emo_stream.training.lite_motion``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emo_stream.audio.features import MEL_BANDS, MEL_RANGE_DB, FrameFeatures
from emo_stream.errors import ConfigError

# The scalar speech features the filter reads, each with a scale that brings it near unit range. The band shares
# are weighted by loudness (``WEIGHTED_BY_LOUDNESS``): a share of near-silence is arbitrary, and silence must read
# as silence.
INPUT_SCALARS: tuple[tuple[str, float], ...] = (
    ("loudness", 1.0), ("band_low", 1.0), ("band_mid", 1.0), ("band_high", 1.0), ("voicing", 1.0),
    ("f1_hz", 1e-3), ("f2_hz", 1 / 3000), ("onset", 1.0), ("closure", 1.0), ("pitch_st", 1 / 12),
    ("stress", 1.0), ("singing", 1.0), ("jaw", 1.0), ("spread", 1.0), ("flux", 0.1))
WEIGHTED_BY_LOUDNESS = frozenset({"band_low", "band_mid", "band_high"})
FRAME_DIM = MEL_BANDS + len(INPUT_SCALARS)
# What a frame of silence looks like to the network: the lookahead past the end of a stream.
SILENT_FRAME = np.concatenate([np.full(MEL_BANDS, -MEL_RANGE_DB / 20.0), np.zeros(len(INPUT_SCALARS))]).astype(np.float32)
FORMAT = "emo-stream lite motion 2 (causal linear)"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "lite_motion.safetensors"
_TENSORS = ("weight", "bias", "in_mean", "in_std", "rest")
# Standardised inputs are clipped here, in fitting and in use: digital silence or a clipped recording must not
# extrapolate the filter far beyond the speech it was fitted on.
INPUT_CLIP = 4.0


def frame_vector(feat: FrameFeatures) -> np.ndarray:
    """One frame's network input (``FRAME_DIM`` float32): the log-mel, then the scaled scalars."""
    scalars = np.array([getattr(feat, name) * scale * (feat.loudness if name in WEIGHTED_BY_LOUDNESS else 1.0)
                        for name, scale in INPUT_SCALARS], dtype=np.float32)
    return np.concatenate([np.asarray(feat.mel, np.float32), scalars])


def feature_matrix(frames: list[FrameFeatures]) -> np.ndarray:
    """(T, FRAME_DIM) network inputs of a stream's frames."""
    if not frames:
        return np.zeros((0, FRAME_DIM), np.float32)
    return np.stack([frame_vector(f) for f in frames])


def paired_inputs(x: np.ndarray) -> np.ndarray:
    """(T, 2·FRAME_DIM): each frame's vector beside the next one's (silence after the last)."""
    ahead = np.concatenate([x[1:], SILENT_FRAME[None]], axis=0) if len(x) else x
    return np.concatenate([x, ahead], axis=1)


def context_windows(x: np.ndarray, past: int) -> np.ndarray:
    """(T, (past + 2) · FRAME_DIM): per frame, the ``past`` frames before it (silence before the stream), the
    frame and the next one: what ``MotionFilter.step`` sees, for a whole stream at once (training)."""
    x = np.asarray(x, np.float32)
    padded = np.concatenate([np.tile(SILENT_FRAME, (past, 1)), x, SILENT_FRAME[None]], axis=0)
    t = len(x)
    return np.concatenate([padded[k: k + t] for k in range(past + 2)], axis=1)


@dataclass
class MotionFilter:
    """The filter and its normalisation, and the fitted statistics.

    Attributes:
        weight: (len(output_names), (past + 2) · FRAME_DIM), on standardised inputs (clipped to ±``INPUT_CLIP``),
            oldest frame first.
        output_names: the mouth targets it gives, in order.
        stats: fitted blink and head statistics (see ``learned_motion``) and how the weights were trained.
    """

    weight: np.ndarray
    bias: np.ndarray
    in_mean: np.ndarray
    in_std: np.ndarray
    rest: np.ndarray  # the outputs for silence: the mouth at rest
    output_names: tuple[str, ...]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def past(self) -> int:
        return int(self.weight.shape[1] // FRAME_DIM) - 2

    def initial_state(self) -> np.ndarray:
        """The context before the first frame: silence."""
        return np.tile(SILENT_FRAME, self.past)

    def standardise(self, windows: np.ndarray) -> np.ndarray:
        return np.clip((windows - self.in_mean) / self.in_std, -INPUT_CLIP, INPUT_CLIP)

    def step(self, pair: np.ndarray, context: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame: ``pair`` (2·FRAME_DIM: this frame and the next) and the past frames → (outputs, context)."""
        window = np.concatenate([context, pair])
        y = self.weight @ self.standardise(window) + self.bias
        return y.astype(np.float32), window[FRAME_DIM: FRAME_DIM * (self.past + 1)].astype(np.float32)

    def run(self, x: np.ndarray) -> np.ndarray:
        """(T, len(output_names)) for a whole stream's (T, FRAME_DIM) inputs, frame by frame as ``step``."""
        context = self.initial_state()
        out = np.zeros((len(x), len(self.output_names)), np.float32)
        for t, pair in enumerate(paired_inputs(np.asarray(x, np.float32))):
            out[t], context = self.step(pair, context)
        return out

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        tensors = {name: np.ascontiguousarray(getattr(self, name), dtype=np.float32) for name in _TENSORS}
        meta = {"format": FORMAT, "output_names": json.dumps(list(self.output_names)),
                "frame_dim": str(FRAME_DIM), "stats": json.dumps(self.stats)}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_WEIGHTS) -> MotionFilter:
        """Read a file ``save`` wrote.

        Raises:
            ConfigError: the file is missing or is not a lite-motion file for these features.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no lite motion weights at {path}: run `make train-lite-motion`, or set "
                              "lite.motion: rules")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in _TENSORS}
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise ConfigError(f"cannot read lite motion weights {path}: {exc}") from None
        if meta.get("format") != FORMAT or meta.get("frame_dim") != str(FRAME_DIM):
            raise ConfigError(f"{path} is not a lite motion file for these features (format {meta.get('format')!r}, "
                              f"frame_dim {meta.get('frame_dim')!r}, expected {FRAME_DIM}): train it again")
        return cls(**tensors, output_names=tuple(json.loads(meta["output_names"])),
                   stats=json.loads(meta.get("stats", "{}")))
