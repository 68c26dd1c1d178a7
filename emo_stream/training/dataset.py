"""Training samples from prepared shards: deterministic for a seed, with bounded memory.

An epoch is a seeded permutation of *slots*: each clip with T frames has ``ceil(W / F)`` slots, W = T − F − M + 1
being its number of valid windows, so one epoch sees about every frame of every clip once whatever the clips'
lengths. Slot k of a clip starts its window at k·F plus a seeded jitter below F, so successive epochs see
different windows. With ``samples_per_epoch`` an epoch is that many slots: whole permutations one after the
other, the last one cut short. Sample i of epoch e depends only on (seed, e, i): any ``DataLoader`` worker, in
any order, returns the same sample.

Only a few shards are open at a time (an LRU of memory maps), and a sample reads just its own frames, so memory
does not grow with the size of the dataset.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from emo_stream.errors import ConfigError, DataError
from emo_stream.training.augment import draw_augmentation
from emo_stream.training.sample import TrainingSample
from emo_stream.training.shards import ClipArrays, ClipRecord, load_manifest, read_clip_shard

log = logging.getLogger(__name__)

MAX_OPEN_SHARDS = 8


class ClipDataset(Dataset):
    """Windows of F target frames (after M motion frames) from the clips of a ``data prepare`` folder.

    Args:
        root: the folder ``emo-stream data prepare --out`` wrote (``manifest.json`` + ``shards/``).
        clip_frames: F, target frames per sample.
        motion_frames: M, frames before the target (0 for none).
        size: side of the returned frames (None: as stored); the crops are resized on the fly.
        seed: same seed, same samples.
        samples_per_epoch: epoch length (None: one slot per F frames of every clip, see module docstring).
        max_open_shards: shards kept open (memory-mapped) at once.
        augment: recolour and mirror each sample (``augment.draw_augmentation``, seeded like the sample).

    Raises:
        DataError: no manifest, no clips, or no clip has F + M frames (shorter clips are left out with a warning).
        ConfigError: bad F, M, size, seed or epoch length.
    """

    def __init__(self, root: str | Path, clip_frames: int, motion_frames: int = 0, size: int | None = None,
                 seed: int = 0, samples_per_epoch: int | None = None, max_open_shards: int = MAX_OPEN_SHARDS,
                 augment: bool = False) -> None:
        if clip_frames < 1 or motion_frames < 0:
            raise ConfigError(f"clip_frames must be >= 1 and motion_frames >= 0, got {clip_frames}, {motion_frames}")
        if size is not None and size < 8:
            raise ConfigError(f"size must be at least 8 pixels, got {size}")
        if seed < 0:
            raise ConfigError(f"seed must be >= 0 (it seeds numpy's SeedSequence), got {seed}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ConfigError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        self.root = Path(root)
        manifest = load_manifest(self.root)
        clips = sorted(manifest.clips.values(), key=lambda c: c.clip_id)
        if not clips:
            raise DataError(f"{self.root} holds no prepared clips (all skipped?): see its manifest.json")
        need = clip_frames + motion_frames
        self.clips: list[ClipRecord] = [c for c in clips if c.frames >= need]
        if not self.clips:
            longest = max(c.frames for c in clips)
            raise DataError(f"no clip in {self.root} has {need} frames (clip_frames {clip_frames} + motion_frames "
                            f"{motion_frames}); the longest has {longest}: use fewer frames or longer videos")
        if len(self.clips) < len(clips):
            log.warning("%d of %d clips in %s are shorter than %d frames and are left out",
                        len(clips) - len(self.clips), len(clips), self.root, need)
        self.clip_frames, self.motion_frames = clip_frames, motion_frames
        self.fps, self.sample_rate = manifest.fps, manifest.sample_rate
        self.stored_size = manifest.size
        self.size = size or manifest.size
        self.seed = seed
        self.samples_per_epoch = samples_per_epoch
        self.max_open_shards = max(1, max_open_shards)
        self.augment = augment
        self._windows = np.array([c.frames - need + 1 for c in self.clips], dtype=np.int64)
        slots = -(-self._windows // clip_frames)  # ceil
        self._slot_clip = np.repeat(np.arange(len(self.clips)), slots)
        self._slot_index = np.concatenate([np.arange(n) for n in slots])
        self._epoch = 0
        self._order = self._make_order()
        self._open: OrderedDict[int, ClipArrays] = OrderedDict()

    # ------------------------------------------------------------------ order

    def _make_order(self) -> np.ndarray:
        """This epoch's slots: whole permutations of all slots, one after the other, as many as the epoch length
        needs. Indices only (4 bytes a sample), so random access from any DataLoader worker is O(1)."""
        total = len(self._slot_clip)
        length = self.samples_per_epoch or total
        rng = np.random.default_rng([self.seed, self._epoch])
        rounds = [rng.permutation(total).astype(np.int32) for _ in range(-(-length // total))]
        return np.concatenate(rounds)[:length]

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (deterministic: the same epoch gives the same order)."""
        self._epoch = int(epoch)
        self._order = self._make_order()

    def __len__(self) -> int:
        return len(self._order)

    def window(self, index: int) -> tuple[int, int, int]:
        """(clip number, first target frame, reference frame) of sample ``index``, without reading pixels."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        index %= len(self)
        slot = int(self._order[index])
        clip = int(self._slot_clip[slot])
        rng = np.random.default_rng([self.seed, self._epoch, index])
        first = min(int(self._slot_index[slot]) * self.clip_frames + int(rng.integers(self.clip_frames)),
                    int(self._windows[clip]) - 1)
        reference = int(rng.integers(self.clips[clip].frames))
        return clip, first + self.motion_frames, reference

    # ------------------------------------------------------------------ reading

    def _arrays(self, clip: int) -> ClipArrays:
        arrays = self._open.get(clip)
        if arrays is not None:
            self._open.move_to_end(clip)
            return arrays
        arrays = read_clip_shard(self.root / self.clips[clip].shard)
        self._open[clip] = arrays
        while len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)  # the memory maps close when dropped
        return arrays

    def _pixels(self, frames: np.ndarray) -> torch.Tensor:
        """[N, S, S, 3] uint8 → [3, N, size, size] float32 in [-1, 1]."""
        frames = np.array(frames)  # a copy: the memory map is read-only, and torch wants writable memory
        if self.size != self.stored_size:
            down = self.size < self.stored_size
            interpolation = cv2.INTER_AREA if down else cv2.INTER_CUBIC
            frames = np.stack([cv2.resize(f, (self.size, self.size), interpolation=interpolation) for f in frames]) \
                if len(frames) else np.zeros((0, self.size, self.size, 3), dtype=np.uint8)
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float()
        return x.div_(127.5).sub_(1.0)

    def __getitem__(self, index: int) -> TrainingSample:
        clip, start, reference = self.window(index)
        arrays = self._arrays(clip)
        f, m = self.clip_frames, self.motion_frames
        spf = self.sample_rate // self.fps
        mask = np.asarray(arrays.face_mask)
        if self.size != self.stored_size:
            mask = cv2.resize(mask, (self.size, self.size), interpolation=cv2.INTER_NEAREST)
        window = self._pixels(arrays.frames[start - m: start + f])
        portrait = self._pixels(arrays.frames[reference: reference + 1])[:, 0]
        face_mask = torch.from_numpy(mask.astype(np.float32))[None]
        if self.augment:  # its own stream: the windows stay those of the unaugmented dataset
            change = draw_augmentation(np.random.default_rng([self.seed, self._epoch, index % len(self), 1]))
            window, portrait, face_mask = change.pixels(window), change.pixels(portrait), change.mask(face_mask)
        return TrainingSample(
            reference=portrait,
            target=window[:, m:],
            motion=window[:, :m],
            audio=torch.from_numpy(np.array(arrays.audio[start * spf: (start + f) * spf], dtype=np.float32)),
            face_mask=face_mask,
            head_speed=torch.from_numpy(np.array(arrays.head_speed[start: start + f], dtype=np.float32)),
            clip_id=self.clips[clip].clip_id,
            start=start,
        )

    def __getstate__(self) -> dict:
        # DataLoader workers started by spawn get the index, not the open memory maps.
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state
