"""Exponential moving average of the trained parameters (the weights a run publishes)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """Shadow copies (fp32) of the parameters of ``module`` that require grad.

    Only trained parameters are tracked: frozen ones equal their EMA by definition, and copying a full-size
    backbone that stage 2 keeps frozen would double its memory for nothing.

    Args:
        module: the trained module (parameter names are its ``named_parameters`` names).
        decay: shadow = decay · shadow + (1 - decay) · param after each step.
        warmup: use ``min(decay, (1 + step) / (10 + step))`` so early EMA weights are not the init's.
    """

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay = decay
        self.warmup = warmup
        self.step = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().float().clone() for name, p in module.named_parameters() if p.requires_grad}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.step) / (10 + self.step))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the shadow towards ``module``'s current parameters."""
        decay = self.current_decay()
        params = dict(module.named_parameters())
        names = list(self.shadow)
        shadows = [self.shadow[n] for n in names]
        current = [params[n].detach().float() for n in names]
        torch._foreach_lerp_(shadows, current, 1.0 - decay)
        self.step += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the shadow into ``module``'s parameters."""
        params = dict(module.named_parameters())
        for name, value in self.shadow.items():
            params[name].copy_(value.to(params[name].dtype))

    @contextlib.contextmanager
    def applied(self, module: nn.Module) -> Iterator[None]:
        """``module`` holds the EMA weights inside the block and its own weights again after it."""
        params = dict(module.named_parameters())
        backup = {name: params[name].detach().clone() for name in self.shadow}
        self.copy_to(module)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in backup.items():
                    params[name].copy_(value)

    def state_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "step": self.step, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        shadow = state["shadow"]
        assert isinstance(shadow, dict)
        missing = sorted(set(self.shadow) - set(shadow))
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameter(s), e.g. {missing[0]}")
        for name in self.shadow:
            self.shadow[name].copy_(shadow[name])
        step = state["step"]
        assert isinstance(step, int)
        self.step = step
