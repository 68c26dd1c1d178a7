"""Samplers for the EMO denoiser: diffusers schedulers with the EMO family's settings.

The relatives (EchoMimic, Hallo) sample with DDIM on v-prediction, zero-terminal-SNR rescaled betas
(linear 0.00085–0.012) and trailing timestep spacing; distilled few-step models use LCM or TCD. The model
knows nothing about noise: a checkpoint names its scheduler class and config, and the pipeline calls
``set_timesteps``/``step``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import DDIMScheduler, LCMScheduler, TCDScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "DDIMScheduler": DDIMScheduler,
    "LCMScheduler": LCMScheduler,
    "TCDScheduler": TCDScheduler,
}

# EchoMimic configs/inference/inference_v2.yaml noise_scheduler_kwargs; Hallo default.yaml is the same.
RELATIVES_DDIM: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "clip_sample": False,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
}


def make_scheduler(name: str = "DDIMScheduler", **overrides: Any) -> SchedulerMixin:
    """A scheduler with the relatives' betas/prediction/spacing (``overrides`` win).

    LCM/TCD get the same betas and prediction type; their own defaults cover the rest.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r} (known: {', '.join(SCHEDULERS)})")
    cls = SCHEDULERS[name]
    config = dict(RELATIVES_DDIM)
    if name != "DDIMScheduler":
        config.pop("clip_sample")
    config.update(overrides)
    return cls(**config)


# How a denoiser output becomes the scheduler's model output before ``scheduler.step``.
#   scheduler       the output goes to the scheduler as is (DDIM/LCM/TCD with the checkpoint's prediction type).
#   echomimic_acc   EchoMimic acc (``pipeline_echo_mimic_acc.py`` + ``src/utils/step_func.py``): the v-prediction is
#                   turned into x0, then into the "pseudo-velocity" that carries x_t to x0 at t = -1 (alpha 1),
#                   which DDIM's v-prediction step then consumes.
STEP_RULES = ("scheduler", "echomimic_acc")


def _alpha_at(alphas_cumprod: torch.Tensor, timestep: torch.Tensor | int) -> torch.Tensor:
    """alpha_bar at ``timestep``; 1 for a negative timestep (the clean end, "t = -1")."""
    t = int(timestep)
    return torch.ones((), dtype=torch.float64) if t < 0 else alphas_cumprod[t].double()


def pseudo_velocity(sample: torch.Tensor, target: torch.Tensor, alphas_cumprod: torch.Tensor,
                    timestep: torch.Tensor | int, timestep_prev: torch.Tensor | int) -> torch.Tensor:
    """The velocity that a DDIM v-step from ``timestep`` to ``timestep_prev`` needs to land on ``target``.

    With a_t, b_t = sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t) (s for ``timestep_prev``), a DDIM step maps
    (x_t, v) to a_s·x0 + b_s·eps with x0 = a_t·x_t − b_t·v and eps = b_t·x_t + a_t·v; solving for v gives
    v = (target − (a_s·a_t + b_s·b_t)·x_t) / (b_s·a_t − a_s·b_t).
    """
    a_t2, a_s2 = _alpha_at(alphas_cumprod, timestep), _alpha_at(alphas_cumprod, timestep_prev)
    a_t, b_t = a_t2.sqrt(), (1.0 - a_t2).sqrt()
    a_s, b_s = a_s2.sqrt(), (1.0 - a_s2).sqrt()
    x, y = sample.float(), target.float()
    return ((y - float(a_s * a_t + b_s * b_t) * x) / float(b_s * a_t - a_s * b_t)).to(sample.dtype)


def echomimic_acc_output(v_pred: torch.Tensor, sample: torch.Tensor, alphas_cumprod: torch.Tensor,
                         timestep: torch.Tensor | int) -> torch.Tensor:
    """EchoMimic acc's step: v → x0 → the pseudo-velocity towards t = -1.

    Algebraically this returns ``v_pred`` itself (with a_s = 1, b_s = 0 the pseudo-velocity is
    (a_t·x_t − x0) / b_t = v); the source computes it explicitly, so we do too, in float32, and the tests check
    the identity. What makes the acc weights few-step is their training, not this arithmetic.
    """
    a_t2 = _alpha_at(alphas_cumprod, timestep)
    a_t, b_t = float(a_t2.sqrt()), float((1.0 - a_t2).sqrt())
    x0 = a_t * sample.float() - b_t * v_pred.float()
    return pseudo_velocity(sample.float(), x0, alphas_cumprod, timestep, -1).to(v_pred.dtype)


def model_output_for_step(step_rule: str, pred: torch.Tensor, sample: torch.Tensor, scheduler: SchedulerMixin,
                          timestep: torch.Tensor | int) -> torch.Tensor:
    """Apply a checkpoint's ``step_rule`` to the denoiser output (see ``STEP_RULES``)."""
    if step_rule == "scheduler":
        return pred
    if step_rule == "echomimic_acc":
        return echomimic_acc_output(pred, sample, scheduler.alphas_cumprod, timestep)
    raise ValueError(f"unknown step rule {step_rule!r} (known: {', '.join(STEP_RULES)})")


def set_sampling_timesteps(scheduler: SchedulerMixin, steps: int, strength: float = 1.0,
                           device: torch.device | str | None = None) -> torch.Tensor:
    """Set ``steps`` sampling timesteps that start ``strength`` of the way up the noise schedule.

    ``strength`` 1 is sampling from pure noise. Below 1 sampling starts from a noised image (img2img, SDEdit):
    schedulers that take ``strength`` themselves (LCM, TCD) space their ``steps`` inside it; the others get a
    denser schedule of which the last ``steps`` fall inside it (diffusers' img2img ``get_timesteps``).
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if strength >= 1.0:
        scheduler.set_timesteps(steps, device=device)
    elif isinstance(scheduler, (LCMScheduler, TCDScheduler)):
        scheduler.set_timesteps(steps, device=device, strength=strength)
    else:
        scheduler.set_timesteps(max(steps, math.ceil(steps / strength)), device=device)
        scheduler.timesteps = scheduler.timesteps[-steps:]
    return scheduler.timesteps
