"""Batches for a training run: the dataset named by the config, in a resumable, per-step deterministic order.

Batch ``s`` of a run always holds the same samples (the dataset is deterministic for (seed, epoch, index) and
the order of an epoch is a permutation seeded by (seed, epoch)), so a run resumed at step ``s`` sees exactly
what an uninterrupted one would. Under DDP each process takes its slice of the global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from emo_stream.errors import ConfigError, InputNotFoundError
from emo_stream.training.device import Runtime
from emo_stream.training.sample import TrainingBatch, collate
from emo_stream.training.train_config import DataConfig


def build_dataset(data: DataConfig, seed: int) -> Any:
    """The ``ClipDataset`` of ``data.root`` (imported lazily), or synthetic clips."""
    if data.synthetic:
        from emo_stream.training.synthetic import SyntheticClips

        return SyntheticClips(data.synthetic_clips, data.clip_frames, data.motion_frames, data.size or 64,
                              data.fps, seed)
    from pathlib import Path

    if data.root is None or not Path(data.root).expanduser().is_dir():
        raise InputNotFoundError(f"data.root: shard folder not found: {data.root}")
    try:
        from emo_stream.training.dataset import ClipDataset
    except ImportError as exc:  # the shard reader ships separately from the trainers
        raise ConfigError(f"data.root: cannot read shards ({exc}); use data.synthetic for a smoke run") from None
    return ClipDataset(Path(data.root).expanduser(), clip_frames=data.clip_frames, motion_frames=data.motion_frames,
                       size=data.size, seed=seed, samples_per_epoch=data.samples_per_epoch, augment=data.augment)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()


def iter_batches(dataset: Any, batch_size: int, runtime: Runtime, seed: int, start_step: int = 0,
                 num_workers: int = 0) -> Iterator[TrainingBatch]:
    """Endless batches from step ``start_step`` on (each process gets ``batch_size`` samples per step).

    An epoch's leftover samples (fewer than a global batch) are skipped, so every step has the same size.
    """
    n = len(dataset)
    global_batch = batch_size * runtime.world_size
    if n < global_batch:
        raise ConfigError(f"optim.batch_size: {global_batch} samples per step, but the dataset has only {n}")
    per_epoch = n // global_batch
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        dataset.set_epoch(epoch)
        order = _epoch_order(n, seed, epoch)
        batches = []
        for step in range(offset, per_epoch):
            first = step * global_batch + runtime.rank * batch_size
            batches.append(order[first:first + batch_size])
        if num_workers:
            # Workers are made per epoch so they see the dataset after ``set_epoch``.
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                                                 num_workers=num_workers, pin_memory=runtime.device.type == "cuda")
            yield from loader
        else:
            for indices in batches:
                yield collate([dataset[i] for i in indices])
        epoch, offset = epoch + 1, 0
