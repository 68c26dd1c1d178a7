"""Few-step distillation of the EMO denoiser (latent consistency distillation) and the small streaming decoder.

``emo-stream distill --teacher DIR --out DIR`` writes a checkpoint that samples in 1-4 steps without guidance:

1. Latent consistency distillation (LCD, as LCM): the student starts as a copy of the teacher's denoiser; a
   target network is its EMA. For a clean clip z0 and a grid timestep t (the teacher's DDIM grid of
   ``num_ddim_timesteps``, LCM's ``original_inference_steps``), x_t = add_noise(z0, ε, t); the teacher, *with*
   classifier-free guidance (its reference/audio/face unconditional recipe), solves the probability-flow ODE
   from t to s = t − 1000/N by DDIM (``solver_substeps`` steps); the student's consistency function at
   (x_t, t) is pulled towards the target network's at (x_s, s). f(x, t) = c_skip(t)·x + c_out(t)·x̂0 with
   the boundary scalings of ``LCMScheduler`` (σ_data 0.5, timestep scaling 10), so the LCM scheduler samples
   the distilled model as it was trained. The student runs without guidance: the guidance is distilled in.
2. The small decoder is trained to reproduce the VAE decoder (the VAE's decode of the same latents is the
   target; MSE + L1).

The output checkpoint is the teacher's parts with the distilled denoiser, the trained small decoder, an
``LCMScheduler`` and inference settings ``num_inference_steps`` = ``lcd.steps``, ``guidance_scale`` = 1.0.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from emo_stream.errors import OutputError
from emo_stream.models.checkpoint import EmoComponents, load_checkpoint, save_checkpoint
from emo_stream.models.denoiser import EmoDenoiser
from emo_stream.models.schedulers import make_scheduler
from emo_stream.models.small_decoder import SmallDecoder
from emo_stream.training.device import Runtime, setup_runtime
from emo_stream.training.grad_checkpoint import enable_block_checkpointing
from emo_stream.training.run_log import RunLog
from emo_stream.training.sample import TrainingBatch
from emo_stream.training.stages import (
    EmoTrainingModel,
    FrozenParts,
    encode_batch,
    unconditional,
    vae_latents,
)
from emo_stream.training.train_config import DistillConfig
from emo_stream.training.trainer import step_seed

logger = logging.getLogger(__name__)

SIGMA_DATA = 0.5


def boundary_scalings(timesteps: torch.Tensor, timestep_scaling: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """LCM's c_skip, c_out at ``timesteps`` (``LCMScheduler.get_scalings_for_boundary_condition_discrete``)."""
    t = timesteps.float() * timestep_scaling
    c_skip = SIGMA_DATA**2 / (t**2 + SIGMA_DATA**2)
    c_out = t / (t**2 + SIGMA_DATA**2) ** 0.5
    return c_skip, c_out


def _bcast(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class DdimSolver:
    """The teacher's DDIM on v-prediction, between any two timesteps (the ODE solver of LCD)."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        self.alphas_cumprod = alphas_cumprod.float()

    def scalings(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alphas_cumprod.to(like.device)[t]
        return _bcast(a.sqrt(), like), _bcast((1 - a).sqrt(), like)

    def x0_eps(self, v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """v-prediction → (x̂0, ε̂) at timestep t."""
        alpha, sigma = self.scalings(t, x)
        return alpha * x - sigma * v, alpha * v + sigma * x

    def step(self, v: torch.Tensor, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """One deterministic DDIM step from t to s."""
        x0, eps = self.x0_eps(v, x, t)
        alpha_s, sigma_s = self.scalings(s, x)
        return alpha_s * x0 + sigma_s * eps


@dataclass
class DistillResult:
    """What ``distill`` wrote.

    Attributes:
        out: the distilled checkpoint folder.
        lcd_losses / decoder_losses: the loss of every step of each part.
    """

    out: Path
    lcd_losses: list[float] = field(default_factory=list)
    decoder_losses: list[float] = field(default_factory=list)


class ConsistencyDistiller:
    """LCD of a teacher checkpoint's denoiser (see the module docstring).

    Args:
        teacher: the teacher's parts (its denoiser stays frozen; the student is a copy).
        config: the distillation config.
        runtime: device/precision/process group.
    """

    def __init__(self, teacher: EmoComponents, config: DistillConfig, runtime: Runtime) -> None:
        self.config, self.runtime = config, runtime
        lcd = config.lcd
        self.teacher = teacher
        for part in teacher.parts().values():
            if isinstance(part, torch.nn.Module):
                part.requires_grad_(False).eval()
        self.student = copy.deepcopy(teacher.denoiser).train().requires_grad_(True)
        self.target = copy.deepcopy(teacher.denoiser).eval()
        if config.run.gradient_checkpointing:
            enable_block_checkpointing(self.student)
        self.ddp_student = runtime.wrap(self.student)
        # The conditioning code of the training stages (frozen here): bank, face features, audio, speed.
        self.conditioner = EmoTrainingModel(teacher, stage=2).eval()
        self.frozen = FrozenParts(teacher.vae, teacher.speech_encoder, teacher.scheduler)
        self.solver = DdimSolver(teacher.scheduler.alphas_cumprod)
        self.guidance = float(lcd.guidance_scale if lcd.guidance_scale is not None else teacher.settings.guidance_scale)
        self.interval = teacher.scheduler.config.num_train_timesteps // lcd.num_ddim_timesteps
        # The strength the student will sample at: the config's, else the one the teacher already carries.
        strength = config.sampling.reference_strength or teacher.settings.reference_strength
        self.grid_points = max(lcd.steps, int(lcd.num_ddim_timesteps * strength))
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lcd.lr, weight_decay=0.0)
        self.scaler = runtime.grad_scaler()
        self.step = 0

    @torch.no_grad()
    def _teacher_v(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any], uncond: dict[str, Any]
                   ) -> torch.Tensor:
        """The teacher's guided v-prediction: uncond + w · (cond − uncond)."""
        cond_v = self.teacher.denoiser(x, t, **kwargs).sample.float()
        if self.guidance <= 1.0:
            return cond_v
        uncond_v = self.teacher.denoiser(x, t, **uncond).sample.float()
        return uncond_v + self.guidance * (cond_v - uncond_v)

    def _x0(self, net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        v = net(x, t, **kwargs).sample.float()
        return self.solver.x0_eps(v, x, t)[0]

    def losses(self, batch: TrainingBatch, generator: torch.Generator) -> torch.Tensor:
        """The consistency loss of one batch (the student's graph attached)."""
        cfg, rt = self.config, self.runtime
        lcd = cfg.lcd
        with torch.no_grad(), rt.autocast():
            inputs = encode_batch(self.frozen, batch, 2, cfg.data.fps, generator, 0.0, 0.0)
            kwargs = self.conditioner.conditions(inputs)
        uncond = unconditional(kwargs)
        z0, noise = inputs.latents, inputs.noise
        b = z0.shape[0]
        device = z0.device
        # 1. A grid timestep t and the next one down s (LCM's DDIM grid: (i + 1)·k − 1, s = t − k ≥ 0), only where
        #    the student will sample: below its reference_strength (LCMScheduler's strength takes that grid share).
        index = torch.randint(0, self.grid_points, (b,), generator=generator, device=device)
        t = (index + 1) * self.interval - 1
        s = (t - self.interval).clamp(min=0)
        x_t = self.frozen.scheduler.add_noise(z0, noise, t)
        # 2. The student's consistency function at (x_t, t), without guidance.
        with rt.autocast():
            x0_student = self._x0(self.ddp_student, x_t, t, kwargs)
        c_skip_t, c_out_t = boundary_scalings(t)
        pred = _bcast(c_skip_t, x_t) * x_t + _bcast(c_out_t, x_t) * x0_student
        # 3. The guided teacher's DDIM solve t → s, then the target network's consistency function at (x_s, s).
        with torch.no_grad(), rt.autocast():
            x = x_t.float()
            times = [t + (s - t) * j // lcd.solver_substeps for j in range(lcd.solver_substeps + 1)]
            for here, there in zip(times[:-1], times[1:], strict=True):
                x = self.solver.step(self._teacher_v(x, here, kwargs, uncond), x, here, there)
            x0_target = self._x0(self.target, x, s, kwargs)
            c_skip_s, c_out_s = boundary_scalings(s)
            target = _bcast(c_skip_s, x) * x + _bcast(c_out_s, x) * x0_target
        if lcd.loss == "l2":
            return F.mse_loss(pred.float(), target.float())
        c = lcd.huber_c
        return (torch.sqrt((pred.float() - target.float()) ** 2 + c**2) - c).mean()

    def train_step(self, batch: TrainingBatch) -> float:
        cfg, rt = self.config, self.runtime
        generator = torch.Generator(rt.device).manual_seed(step_seed(cfg.run.seed, self.step, rt.rank))
        loss = self.losses(batch.to(rt.device, torch.float32), generator)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        # The target network trails the student (LCM's EMA target, decay ~0.95).
        with torch.no_grad():
            torch._foreach_lerp_(list(self.target.parameters()), list(self.student.parameters()),
                                 1.0 - cfg.lcd.target_ema)
        self.step += 1
        return float(loss.detach())

    def distilled(self) -> EmoDenoiser:
        """The denoiser the checkpoint gets (``lcd.save``)."""
        return self.target if self.config.lcd.save == "target" else self.student


class DecoderDistiller:
    """Trains a ``SmallDecoder`` to reproduce the VAE decoder on the latents of real frames."""

    def __init__(self, teacher: EmoComponents, config: DistillConfig, runtime: Runtime) -> None:
        self.config, self.runtime, self.teacher = config, runtime, teacher
        existing = teacher.small_decoder
        if existing is None or config.decoder.reinit:
            kwargs = {} if existing is None else dict(existing.config)
            kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
            kwargs["latent_channels"] = teacher.vae.config.latent_channels
            torch.manual_seed(config.run.seed)
            existing = SmallDecoder(**kwargs)
        self.decoder = copy.deepcopy(existing).to(runtime.device).float().train().requires_grad_(True)
        self.ddp_decoder = runtime.wrap(self.decoder)
        self.optimizer = torch.optim.AdamW(self.decoder.parameters(), lr=config.decoder.lr, weight_decay=0.0)
        self.scaler = runtime.grad_scaler()

    def loss(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [N, 3, S, S] in [-1, 1] → weighted MSE + L1 of the small decoder against the VAE decoder."""
        vae = self.teacher.vae
        d = self.config.decoder
        with torch.no_grad():
            latents = vae_latents(vae, frames)
            target = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample
            target = target.float().clamp(-1, 1)  # what decode_latents shows
        with self.runtime.autocast():
            pred = self.ddp_decoder(latents).sample.float()
        return d.mse_weight * F.mse_loss(pred, target) + d.l1_weight * F.l1_loss(pred, target)

    def train_step(self, frames: torch.Tensor) -> float:
        loss = self.loss(frames.to(self.runtime.device, torch.float32))
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def _frames(batches: Iterator[TrainingBatch], count: int) -> torch.Tensor:
    """``count`` frames [N, 3, S, S] from the target frames of the next batches."""
    out: list[torch.Tensor] = []
    while sum(x.shape[0] for x in out) < count:
        target = next(batches).target
        out.append(target.permute(0, 2, 1, 3, 4).reshape(-1, *target.shape[1:2], *target.shape[3:]))
    return torch.cat(out)[:count]


def distill(config: DistillConfig, batches: Iterable[TrainingBatch] | None = None, runtime: Runtime | None = None,
            progress: bool = False) -> DistillResult:
    """Distil ``config.teacher`` into ``config.output_dir`` (LCD, then the small decoder).

    Args:
        config: the distillation config (teacher and output folder set).
        batches: training batches (default: the config's data).
        runtime: device/precision/process group (default: from ``config.run``).
        progress: tqdm bars on stderr.

    Raises:
        CheckpointError: the teacher checkpoint is missing or broken.
        OutputError: the output folder exists and is not empty.
    """
    from tqdm import tqdm

    rt = runtime or setup_runtime(config.run.device, config.run.precision)
    out = Path(config.output_dir or "")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"output folder {out} exists and is not empty (pick a new --out)")
    teacher = load_checkpoint(config.teacher or "", rt.device)
    for part in teacher.parts().values():
        if isinstance(part, torch.nn.Module) and any(p.dtype != torch.float32 for p in part.parameters()):
            part.float()
    if batches is None:
        from emo_stream.training.loader import build_dataset, iter_batches

        dataset = build_dataset(config.data, config.run.seed)
        batches = iter_batches(dataset, config.lcd.batch_size, rt, config.run.seed, 0, config.data.num_workers)
    stream = iter(batches)
    tmp = out.with_name(out.name + ".tmp")
    if rt.is_main:  # one process owns the output folder; the others only train
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    rt.barrier()
    result = DistillResult(out=out)
    bar_opts: dict[str, Any] = dict(disable=not (progress and rt.is_main), file=sys.stderr, unit="step",
                                    dynamic_ncols=True)

    # 1. Latent consistency distillation of the denoiser.
    lcd = ConsistencyDistiller(teacher, config, rt)
    log = RunLog(tmp, "lcd", tensorboard=False) if rt.is_main else None
    for _ in tqdm(range(config.lcd.train_steps), desc="distill denoiser", **bar_opts):
        loss = rt.mean(lcd.train_step(next(stream)))
        result.lcd_losses.append(loss)
        if log is not None and (lcd.step % config.run.log_every == 0 or lcd.step == config.lcd.train_steps):
            log.write(lcd.step, loss=loss)
    denoiser = lcd.distilled().eval().requires_grad_(False)

    # 2. The small streaming decoder against the VAE decoder.
    dec = DecoderDistiller(teacher, config, rt)
    log = RunLog(tmp, "decoder", tensorboard=False) if rt.is_main else None
    for step in tqdm(range(1, config.decoder.train_steps + 1), desc="distill decoder", **bar_opts):
        loss = rt.mean(dec.train_step(_frames(stream, config.decoder.batch_size)))
        result.decoder_losses.append(loss)
        if log is not None and (step % config.run.log_every == 0 or step == config.decoder.train_steps):
            log.write(step, loss=loss)
    decoder = dec.decoder.eval().requires_grad_(False)

    # 3. The few-step checkpoint: LCM scheduler on the teacher's grid, guidance folded in.
    if rt.is_main:
        scheduler = make_scheduler("LCMScheduler", original_inference_steps=config.lcd.num_ddim_timesteps)
        updates: dict[str, Any] = {"num_inference_steps": config.lcd.steps, "guidance_scale": 1.0}
        # The LCM step takes the student's output as is, from unclamped noise: the conditions it was trained in.
        known = {f.name for f in dataclasses.fields(teacher.settings)}
        updates.update({k: v for k, v in (("step_rule", "scheduler"), ("initial_noise_clamp", 0.0)) if k in known})
        updates.update(config.sampling.updates())
        settings = dataclasses.replace(teacher.settings, **updates)
        components = dataclasses.replace(teacher, denoiser=denoiser, small_decoder=decoder, scheduler=scheduler,
                                         settings=settings)
        save_checkpoint(components, tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    rt.barrier()
    return result
