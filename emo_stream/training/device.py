"""Device, precision and processes of a training run, in the manner of accelerate (which we do not depend on).

One ``Runtime`` says where this process trains: the device (CPU for tiny configs, one GPU per process
otherwise), the autocast dtype, and — when launched under ``torchrun`` with ``WORLD_SIZE > 1`` — its rank in
the process group, in which case the trained module is wrapped in ``DistributedDataParallel``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from emo_stream.errors import ConfigError

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runtime:
    """Where and how this process trains.

    Attributes:
        device: this process's device.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        rank / local_rank / world_size: the process group (0 / 0 / 1 without torchrun).
    """

    device: torch.device
    precision: str = "fp32"
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """The process that logs, renders samples and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return AUTOCAST_DTYPES[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """Mixed-precision context for forward passes (a no-op in fp32)."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled for fp16 only (bf16 has fp32's range and needs none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in DistributedDataParallel when there are several processes, as is otherwise."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def mean(self, value: float) -> float:
        """``value`` averaged over the processes (for logging the loss of the whole batch)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], device=self.device, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size


def setup_runtime(device: str = "auto", precision: str = "fp32") -> Runtime:
    """Pick the device, check the precision and join the process group when ``torchrun`` started us.

    Raises:
        ConfigError: an unknown device, a GPU asked for where there is none, or a precision it cannot run.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if precision not in AUTOCAST_DTYPES:
        raise ConfigError(f"run.precision: one of {', '.join(AUTOCAST_DTYPES)}, got {precision!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"run.device: unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device: {device!r} asked for, but torch sees no CUDA GPU")
        if dev.index is None:  # one GPU per process under torchrun
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    if precision == "fp16" and dev.type != "cuda":
        raise ConfigError("run.precision: fp16 needs a GPU (use bf16 or fp32 on the CPU)")
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Runtime(device=dev, precision=precision, rank=rank, local_rank=local_rank, world_size=world_size)


def teardown_runtime(runtime: Runtime) -> None:
    """Leave the process group (if we joined one)."""
    if runtime.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules in eval mode for a block (sample renders), then restore each one's mode."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)
