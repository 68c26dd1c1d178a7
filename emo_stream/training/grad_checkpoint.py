"""Gradient checkpointing of the EMO UNets' blocks (memory for compute in training).

diffusers' ``enable_gradient_checkpointing`` only knows its own block classes, and ours carry per-call state
outside their arguments: the reference processors hold the portrait's features (denoiser) or the dict they
record into (ReferenceNet) only while the model's ``forward`` runs, and the backward pass recomputes a block
after that forward has returned. So each block is wrapped here with ``torch.utils.checkpoint`` (non-reentrant,
so gradients also reach the features a ReferenceNet block records as a side output), and the wrapper puts the
processors' state back as it was at forward time for the recomputation.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from emo_stream.models.unet import EmoUNet

_STATE_ATTRS = ("reference", "reference_mask", "store")
# The blocks already wrapped (a second enable must not wrap a wrapper).
_WRAPPED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _processors(block: nn.Module) -> list[Any]:
    procs = []
    for attention in getattr(block, "attentions", []):
        for tb in attention.transformer_blocks:
            procs.append(tb.attn1.processor)
    return procs


def _wrap(block: nn.Module) -> None:
    original = block.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not (block.training and torch.is_grad_enabled()):
            return original(*args, **kwargs)
        procs = _processors(block)
        saved = [{a: getattr(p, a) for a in _STATE_ATTRS if hasattr(p, a)} for p in procs]
        calls = [0]

        def run(*a: Any) -> Any:
            calls[0] += 1
            if calls[0] == 1:  # the forward itself: the processors are set up by the model's forward
                return original(*a, **kwargs)
            # A recomputation in backward: same reference features as the forward saw; records go to a
            # throwaway dict (the bank recorded in the forward is what gradients flow into).
            try:
                for proc, state in zip(procs, saved, strict=True):
                    for attr, value in state.items():
                        setattr(proc, attr, {} if attr == "store" and value is not None else value)
                return original(*a, **kwargs)
            finally:
                for proc, state in zip(procs, saved, strict=True):
                    for attr in state:
                        setattr(proc, attr, None)

        return checkpoint(run, *args, use_reentrant=False)

    block.forward = forward
    _WRAPPED.add(block)


def enable_block_checkpointing(unet: EmoUNet) -> None:
    """Recompute each down/mid/up block of ``unet`` in backward instead of keeping its activations.

    Only in training mode with grad enabled; eval and ``no_grad`` forwards run as before. Idempotent.
    """
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        if block not in _WRAPPED:
            _wrap(block)
