"""The training sample: what ``dataset`` yields and what every training stage consumes.

One sample is one window of one prepared clip. Pixels are float32 in [-1, 1], channel-first; the audio is the
16 kHz waveform that spans exactly the target frames (``frames × 16000 / fps`` samples) so a trainer encodes it
with the model's own speech encoder (``EmoPipeline.encode_audio``), as inference does. Stage 1 (image
pretraining) uses ``reference`` and the first target frame only; stage 2 (video) uses everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TrainingSample:
    """One window of a clip.

    Attributes:
        reference: [3, S, S] a frame of the same clip (the portrait the model animates).
        target: [3, F, S, S] the frames to generate.
        motion: [3, M, S, S] the M frames before ``target`` (motion frames; M may be 0).
        audio: [F × 16000 / fps] 16 kHz mono waveform spanning the target frames.
        face_mask: [1, S, S] face-region mask in {0, 1} (union of the face boxes over the clip).
        head_speed: [F] head-rotation speed per target frame (radians per frame).
        clip_id: the clip's id in the shard manifest (for logs and determinism checks).
        start: index of the first target frame within the clip.
    """

    reference: torch.Tensor
    target: torch.Tensor
    motion: torch.Tensor
    audio: torch.Tensor
    face_mask: torch.Tensor
    head_speed: torch.Tensor
    clip_id: str
    start: int


@dataclass
class TrainingBatch:
    """B samples stacked along a new first dimension (same shapes inside one batch)."""

    reference: torch.Tensor  # [B, 3, S, S]
    target: torch.Tensor  # [B, 3, F, S, S]
    motion: torch.Tensor  # [B, 3, M, S, S]
    audio: torch.Tensor  # [B, samples]
    face_mask: torch.Tensor  # [B, 1, S, S]
    head_speed: torch.Tensor  # [B, F]
    clip_ids: list[str]
    starts: list[int]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TrainingBatch:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, dtype) if dtype is not None and t.is_floating_point() else t.to(device)

        return TrainingBatch(move(self.reference), move(self.target), move(self.motion), self.audio.to(device),
                             move(self.face_mask), self.head_speed.to(device), self.clip_ids, self.starts)


def collate(samples: list[TrainingSample]) -> TrainingBatch:
    """Stack samples into a batch (``torch.utils.data.DataLoader``'s ``collate_fn``)."""
    if not samples:
        raise ValueError("collate: no samples")
    return TrainingBatch(
        reference=torch.stack([s.reference for s in samples]),
        target=torch.stack([s.target for s in samples]),
        motion=torch.stack([s.motion for s in samples]),
        audio=torch.stack([s.audio for s in samples]),
        face_mask=torch.stack([s.face_mask for s in samples]),
        head_speed=torch.stack([s.head_speed for s in samples]),
        clip_ids=[s.clip_id for s in samples],
        starts=[s.start for s in samples],
    )
