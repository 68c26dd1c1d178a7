"""Samplers for the EMO denoiser: diffusers schedulers with the EMO family's settings.

The relatives (EchoMimic, Hallo) sample with DDIM on v-prediction, zero-terminal-SNR rescaled betas
(linear 0.00085–0.012) and trailing timestep spacing; distilled few-step models use LCM or TCD. The model
knows nothing about noise: a checkpoint names its scheduler class and config, and the pipeline calls
``set_timesteps``/``step``.
"""

from __future__ import annotations

from typing import Any

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
