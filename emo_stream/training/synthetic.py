"""Synthetic training clips: moving coloured blobs with matching audio, for smoke runs and tests.

Same API as ``dataset.ClipDataset`` (``len``, ``ds[i]`` deterministic for (seed, epoch, i), ``set_epoch``), so
the tiny configs and the tests train without prepared shards. A clip is a soft blob on a gradient
background that moves on a smooth path; its size follows the loudness of a tone, so the audio says something
about the frames (a learnable, if trivial, audio-to-motion mapping).
"""

from __future__ import annotations

import math

import torch

from emo_stream.training.sample import TrainingSample

SAMPLE_RATE = 16_000


class SyntheticClips:
    """Deterministic synthetic ``TrainingSample`` s.

    Args:
        num_clips: samples per epoch.
        clip_frames / motion_frames: F and M of every sample.
        size: frame side in pixels.
        fps: frame rate (the audio spans F × 16000 / fps samples).
        seed: base seed; sample i of epoch e uses seed + 1000·e + i.
    """

    def __init__(self, num_clips: int, clip_frames: int, motion_frames: int, size: int, fps: int = 25,
                 seed: int = 0) -> None:
        self.num_clips = num_clips
        self.clip_frames = clip_frames
        self.motion_frames = motion_frames
        self.size = size
        self.fps = fps
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_clips

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> TrainingSample:
        if not 0 <= index < self.num_clips:
            raise IndexError(index)
        gen = torch.Generator().manual_seed(self.seed + 1000 * self.epoch + index)
        total = self.motion_frames + self.clip_frames
        rand = torch.rand(8, generator=gen)
        colour = rand[:3] * 2 - 1
        background = rand[3:6] * 0.6 - 0.3
        phase = float(rand[6]) * 2 * math.pi
        freq = 110.0 + 330.0 * float(rand[7])
        # 1. Audio: a tone whose loudness swells and fades; frames follow its per-frame envelope.
        per_frame = SAMPLE_RATE // self.fps
        n = total * per_frame
        t = torch.arange(n) / SAMPLE_RATE
        envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 1.5 * t + phase)
        audio = 0.5 * envelope * torch.sin(2 * math.pi * freq * t)
        loud = envelope.reshape(total, per_frame).mean(1)
        # 2. Frames: a blob on a smooth path, radius from the loudness.
        s = self.size
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
        frames_t = torch.arange(total, dtype=torch.float32)
        cx = 0.4 * torch.sin(0.3 * frames_t + phase)
        cy = 0.4 * torch.cos(0.2 * frames_t + phase)
        radius = 0.25 + 0.2 * loud
        frames = []
        for f in range(total):
            blob = torch.exp(-((xx - cx[f]) ** 2 + (yy - cy[f]) ** 2) / (2 * radius[f] ** 2))
            bg = background[:, None, None] + 0.3 * xx[None] * torch.sign(colour[:, None, None])
            frames.append((bg * (1 - blob) + colour[:, None, None] * blob).clamp(-1, 1))
        video = torch.stack(frames, dim=1)  # [3, M + F, S, S]
        speed = torch.sqrt((cx[1:] - cx[:-1]) ** 2 + (cy[1:] - cy[:-1]) ** 2)
        speed = torch.cat([speed[:1], speed])
        mask = torch.zeros(1, s, s)
        mask[:, s // 8: s - s // 8, s // 8: s - s // 8] = 1.0
        ref_index = int(torch.randint(total, (1,), generator=gen))
        start = self.motion_frames
        return TrainingSample(
            reference=video[:, ref_index].clone(),
            target=video[:, start:].clone(),
            motion=video[:, :start].clone(),
            audio=audio[start * per_frame:].clone(),
            face_mask=mask,
            head_speed=speed[start:].clone(),
            clip_id=f"synthetic-{self.seed}-{index}",
            start=start,
        )
