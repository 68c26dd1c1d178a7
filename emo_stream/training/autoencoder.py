"""The VAE stage of a model trained from scratch: the checkpoint's ``AutoencoderKL`` on prepared frames.

EMO starts from SD-1.5's VAE; a model whose VAE is random (the tiny configs) has no latent space worth denoising,
so a from-scratch run trains its autoencoder first (``scripts/train_tiny.py``): reconstruction (L1 + MSE of a
sample of the posterior, decoded) plus a small KL term, on single frames of a ``data prepare`` folder. At the end
the latents' scaling factor is set to 1 / std of the latents of a few batches (as SD's 0.18215 was chosen), so
the diffusion stages see unit-variance latents. The output is a whole checkpoint folder (``final/``): the
start model with the trained VAE, which stage 1 loads through ``model.checkpoint``.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from emo_stream.config_reader import check, load
from emo_stream.models.checkpoint import EmoComponents, save_checkpoint
from emo_stream.training.run_log import RunLog
from emo_stream.training.sample import TrainingBatch
from emo_stream.training.samples import _to_uint8, save_png
from emo_stream.training.train_config import DataConfig, ModelConfig

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

logger = logging.getLogger(__name__)


@dataclass
class AutoencoderConfig:
    """``scripts/train_tiny.py``'s VAE stage (YAML: ``configs/train/tiny-autoencoder.yaml``).

    Attributes:
        output_dir: where ``log.csv`` and ``final/`` go.
        model: the start model (its ``vae`` part is trained; the other parts are written as they are).
        data: the frames (``clip_frames`` 1, ``motion_frames`` 0); target and reference frames both train.
        steps / lr / batch_size: AdamW and the step budget (batch in samples: two frames each).
        l1_weight / mse_weight / kl_weight: the loss; KL is per latent element, against N(0, 1).
        sample_posterior: decode a sample of the posterior (a VAE); False decodes its mean (a plain autoencoder
            with the KL term as a weight on the latents' size: converges in far fewer steps, and the diffusion
            stages use the mean anyway).
        mouth_loss_weight: extra loss weight of the lower face (``pipelines.regions``: nose to below the chin);
            0 = a plain per-pixel loss. The mouth is ~1 % of a frame: unweighted, a small autoencoder spends
            nothing on it and decodes an open mouth and a closed one alike.
        scale_batches: batches whose latents set ``vae.config.scaling_factor`` (0: keep the config's).
        seed: weights, sampling and batch order.
        log_every: steps between ``log.csv`` rows.
    """

    output_dir: str = "runs/autoencoder"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(init="tiny_face"))
    data: DataConfig = field(default_factory=DataConfig)
    steps: int = 1000
    lr: float = 1e-3
    batch_size: int = 8
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    kl_weight: float = 1e-3
    sample_posterior: bool = True
    mouth_loss_weight: float = 0.0
    scale_batches: int = 8
    seed: int = 0
    log_every: int = 25

    def validate(self, prefix: str = "") -> None:
        self.model.validate("model")
        self.data.validate("data")
        check(self.data.clip_frames == 1 and self.data.motion_frames == 0, "data.clip_frames",
              "the autoencoder trains on single frames: clip_frames 1, motion_frames 0")
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.lr > 0 and self.batch_size >= 1, "lr", "lr must be > 0 and batch_size >= 1")
        check(self.mouth_loss_weight >= 0, "mouth_loss_weight", f"must be >= 0, got {self.mouth_loss_weight}")
        check(min(self.l1_weight, self.mse_weight, self.kl_weight) >= 0 and self.l1_weight + self.mse_weight > 0,
              "l1_weight", "loss weights must be >= 0, and L1 and MSE not both 0")
        check(self.scale_batches >= 0 and self.log_every >= 1, "scale_batches",
              "scale_batches must be >= 0 and log_every >= 1")


def load_autoencoder_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None
                            ) -> AutoencoderConfig:
    """A validated ``AutoencoderConfig`` from a YAML file (None: defaults) plus dotted overrides."""
    return load(AutoencoderConfig, path, overrides)


@dataclass
class AutoencoderResult:
    """What ``train_autoencoder`` did: the loss of every step, the scaling factor set, the checkpoint written."""

    losses: list[float]
    scaling_factor: float
    final_dir: Path


def _frames(batch: TrainingBatch) -> torch.Tensor:
    """[2B, 3, S, S]: the target frame and the reference frame of every sample."""
    return torch.cat([batch.target[:, :, 0], batch.reference]).float()


def pixel_weights(batch: TrainingBatch, mouth_weight: float) -> torch.Tensor | None:
    """[2B, 1, S, S] loss weights of ``_frames(batch)``: 1 + ``mouth_weight`` in each sample's lower face, scaled
    to a mean of 1 per frame (the loss keeps its scale); None for a plain loss."""
    if not mouth_weight:
        return None
    from emo_stream.pipelines.regions import face_region

    masks = []
    for mask in batch.face_mask.float():
        region = face_region(mask[None], "lower_face")
        masks.append(torch.zeros_like(mask[None]) if region is None else region)
    weight = 1.0 + mouth_weight * torch.cat(masks)
    weight = weight / weight.mean(dim=(-2, -1), keepdim=True)
    return torch.cat([weight, weight])


def reconstruction_loss(vae: AutoencoderKL, frames: torch.Tensor, config: AutoencoderConfig,
                        generator: torch.Generator, weights: torch.Tensor | None = None) -> torch.Tensor:
    """L1 + MSE of the decoded posterior sample against ``frames`` (in [-1, 1]), per pixel times ``weights``
    [N, 1, S, S] if given, plus the weighted KL."""
    posterior = vae.encode(frames).latent_dist
    latents = posterior.sample(generator) if config.sample_posterior else posterior.mean
    decoded = vae.decode(latents).sample
    if weights is None:
        loss = config.l1_weight * F.l1_loss(decoded, frames) + config.mse_weight * F.mse_loss(decoded, frames)
    else:
        error = decoded - frames
        loss = (config.l1_weight * (error.abs() * weights).mean()
                + config.mse_weight * (error.square() * weights).mean())
    if config.kl_weight:
        loss = loss + config.kl_weight * posterior.kl().mean() / posterior.mean[0].numel()
    return loss


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, batches: Iterator[TrainingBatch], count: int) -> float:
    """1 / std of the posterior means of ``count`` batches (the factor that makes the latents unit-variance)."""
    means = [vae.encode(_frames(next(batches))).latent_dist.mean for _ in range(count)]
    return float(1.0 / torch.cat(means).std().clamp(min=1e-6))


def train_autoencoder(config: AutoencoderConfig, components: EmoComponents | None = None,
                      batches: Iterable[TrainingBatch] | None = None, progress: bool = False) -> AutoencoderResult:
    """Train ``components.vae`` (default: the config's start model) and write ``output_dir/final``.

    Args:
        config: the stage's config.
        components: the start model (default: ``build_start_components(config.model)``).
        batches: training batches (default: the config's data, seeded by ``config.seed``).
        progress: a tqdm bar on stderr.
    """
    from tqdm import tqdm

    from emo_stream.training.device import setup_runtime
    from emo_stream.training.trainer import build_start_components

    runtime = setup_runtime("cpu", "fp32")
    components = components or build_start_components(config.model)
    if batches is None:
        from emo_stream.training.loader import build_dataset, iter_batches

        dataset = build_dataset(config.data, config.seed)
        batches = iter_batches(dataset, config.batch_size, runtime, config.seed, 0, config.data.num_workers)
    stream = iter(batches)
    vae = components.vae.float().train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out, tensorboard=False)
    losses: list[float] = []
    tick = time.perf_counter()
    bar = tqdm(range(1, config.steps + 1), desc="autoencoder", unit="step", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    try:
        for step in bar:
            # Cosine decay to a tenth: the last steps sharpen the reconstruction.
            for group in optimizer.param_groups:
                group["lr"] = config.lr * (0.55 + 0.45 * torch.cos(torch.tensor(step / config.steps * torch.pi)).item())
            batch = next(stream)
            loss = reconstruction_loss(vae, _frames(batch), config, generator,
                                       pixel_weights(batch, config.mouth_loss_weight))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if step % config.log_every == 0 or step == config.steps:
                now = time.perf_counter()
                log.write(step, loss=losses[-1], lr=optimizer.param_groups[0]["lr"], seconds=now - tick)
                tick = now
    finally:
        bar.close()
        log.close()
    vae.eval().requires_grad_(False)
    return _finish(config, components, stream, losses)


def _finish(config: AutoencoderConfig, components: EmoComponents, stream: Iterator[TrainingBatch],
            losses: list[float]) -> AutoencoderResult:
    """The latents' scaling factor, a sample strip and the checkpoint folder ``output_dir/final``."""
    vae, out = components.vae, Path(config.output_dir)
    scale = float(vae.config.scaling_factor)
    if config.scale_batches:
        scale = latent_scale(vae, stream, config.scale_batches)
        vae.register_to_config(scaling_factor=scale)
    with torch.no_grad():  # a strip to look at: frames over their reconstructions
        frames = _frames(next(stream))[:8]
        decoded = vae.decode(vae.encode(frames).latent_dist.mean).sample
    save_png(np.concatenate([np.concatenate([_to_uint8(f) for f in frames], 1),
                             np.concatenate([_to_uint8(f) for f in decoded], 1)], 0), out / "samples" / "final.png")
    final = out / "final"
    tmp = final.with_name("final.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    settings = dataclasses.replace(components.settings, sample_size=config.data.size or components.settings.sample_size)
    save_checkpoint(dataclasses.replace(components, settings=settings), tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    logger.info("autoencoder: loss %.4f -> %.4f, scaling factor %.4f", losses[0], losses[-1], scale)
    return AutoencoderResult(losses=losses, scaling_factor=scale, final_dir=final)
