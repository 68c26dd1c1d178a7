"""EMO's training stages: the optimisation loop, EMA, resumable checkpoints, logs and sample renders.

A run (``emo-stream train --config F``) writes into ``output_dir``::

    log.csv                        step, loss, lr, grad_norm, samples/s (+ tensorboard/ if importable)
    samples/step-0000100.png       reference + targets over reference + sampled frames
    checkpoint-0000100/            a checkpoint folder (model_index.json + parts, the raw weights) and
      training_state.pt            optimizer, GradScaler, EMA, step and the config beside it
    final/                         the checkpoint with the EMA weights: the next stage's or a server's input

Randomness (noise, timesteps, condition dropout) is drawn from a generator seeded per step, and batch ``s``
always holds the same samples (``loader``), so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emo_stream.errors import CheckpointError, ConfigError
from emo_stream.models.checkpoint import EmoComponents, InferenceSettings, load_checkpoint, save_checkpoint
from emo_stream.training.device import Runtime, eval_mode, setup_runtime
from emo_stream.training.ema import EMA
from emo_stream.training.grad_checkpoint import enable_block_checkpointing
from emo_stream.training.run_log import RunLog
from emo_stream.training.sample import TrainingBatch
from emo_stream.training.stages import (
    TRAINED_PARTS,
    EmoTrainingModel,
    FrozenParts,
    encode_batch,
    set_trainable,
)
from emo_stream.training.train_config import ModelConfig, TrainConfig

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
CHECKPOINT_PREFIX = "checkpoint-"


def build_start_components(model: ModelConfig, device: torch.device | str = "cpu") -> EmoComponents:
    """The model a run starts from: ``model.checkpoint`` if set, else random weights of the named config."""
    if model.checkpoint:
        return load_checkpoint(model.checkpoint, device)
    from emo_stream.models import configs as named
    from emo_stream.models.factory import TINY_SETTINGS, build_components

    configs = getattr(named, model.init)()
    audio_mode = configs["denoiser"]["audio_mode"]
    if model.init.startswith("tiny"):
        settings = dataclasses.replace(TINY_SETTINGS, audio_mode=audio_mode)
    else:
        settings = InferenceSettings(audio_mode=audio_mode)
    return build_components(configs, settings, seed=model.seed)


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of one step's randomness on one process (independent of where a run was resumed)."""
    return ((seed * 1_000_003 + step) * 8191 + rank) % (2**63 - 1)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The resumable checkpoint with the highest step in ``output_dir``, or None."""
    found = sorted(p for p in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file())
    return found[-1] if found else None


@dataclass
class TrainResult:
    """What a ``fit`` call did.

    Attributes:
        step: the step the run stopped at.
        losses: the training loss of each step this call ran.
        final_dir: the EMA checkpoint written at the end (None if the run stopped early).
        log_path: the CSV log.
        samples: PNG renders written.
    """

    step: int
    losses: list[float]
    final_dir: Path | None
    log_path: Path
    samples: list[Path] = field(default_factory=list)


class Trainer:
    """One EMO training stage.

    Args:
        config: the run's config.
        components: the model to train (default: ``build_start_components(config.model)``).
        runtime: device/precision/process group (default: from ``config.run``).
        progress: a tqdm bar on stderr.
    """

    def __init__(self, config: TrainConfig, components: EmoComponents | None = None, runtime: Runtime | None = None,
                 progress: bool = False) -> None:
        self.config = config
        self.runtime = runtime or setup_runtime(config.run.device, config.run.precision)
        self.progress = progress
        device = self.runtime.device
        self.components = components or build_start_components(config.model)
        for part in self.components.parts().values():
            if isinstance(part, torch.nn.Module):
                # Trained weights and their optimizer state live in fp32 (autocast does the mixed precision).
                if any(p.dtype != torch.float32 for p in part.parameters()):
                    part.float()
                part.to(device)
        self.stage = config.stage.stage
        # 1. What trains (everything else, VAE and speech encoder included, is frozen).
        self.trained = set_trainable(self.components, config.stage.groups)
        if not sum(self.trained.values()):
            raise ConfigError(f"stage.trainable: the groups {', '.join(config.stage.groups)} have no parameters "
                              "in this model")
        self.frozen = FrozenParts(self.components.vae.eval(), self.components.speech_encoder.eval(),
                                  self.components.scheduler)
        if config.run.gradient_checkpointing:
            enable_block_checkpointing(self.components.denoiser)
            enable_block_checkpointing(self.components.reference_net)
        self.model = EmoTrainingModel(self.components, self.stage, config.model.speed_max,
                                       config.stage.face_loss_weight).train()
        self.ddp = self.runtime.wrap(self.model)
        # 2. Optimizer, loss scaling, EMA.
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        o = config.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=(o.betas[0], o.betas[1]), eps=o.eps,
                                           weight_decay=o.weight_decay)
        self.scaler = self.runtime.grad_scaler()
        self.ema = EMA(self.model, config.run.ema_decay) if config.run.ema_decay > 0 else None
        self.step = 0
        self.output_dir = Path(config.output_dir)
        self.grad_norm = 0.0

    # -- one step -----------------------------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        warmup = self.config.optim.warmup_steps
        return self.config.optim.lr * (min(1.0, (step + 1) / warmup) if warmup else 1.0)

    def train_step(self, batch: TrainingBatch) -> float:
        """One optimisation step on ``batch``; returns its loss (before the update)."""
        cfg, rt = self.config, self.runtime
        generator = torch.Generator(rt.device).manual_seed(step_seed(cfg.run.seed, self.step, rt.rank))
        batch = batch.to(rt.device, torch.float32)
        with rt.autocast():
            inputs = encode_batch(self.frozen, batch, self.stage, cfg.data.fps, generator, cfg.stage.condition_drop,
                                  cfg.stage.motion_drop, cfg.stage.max_noise)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        with rt.autocast():
            loss = self.ddp(inputs)
        self.scaler.scale(loss).backward()
        if cfg.optim.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.max_grad_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def loss_on(self, batch: TrainingBatch, seed: int = 0) -> float:
        """The training loss of ``batch`` with the randomness of ``seed``, without an update (for evaluation)."""
        cfg, rt = self.config, self.runtime
        generator = torch.Generator(rt.device).manual_seed(seed)
        batch = batch.to(rt.device, torch.float32)
        with rt.autocast():
            inputs = encode_batch(self.frozen, batch, self.stage, cfg.data.fps, generator, 0.0, 0.0)
            return float(self.model(inputs))

    # -- checkpoints --------------------------------------------------------------------------------------

    def _settings(self) -> InferenceSettings:
        """The inference settings the trained model is written with (clip layout of the data it saw)."""
        s, d = self.components.settings, self.config.data
        updates: dict[str, Any] = {"fps": d.fps}
        if d.size:
            updates["sample_size"] = d.size
        if self.stage == 2:
            updates.update(clip_frames=d.clip_frames, motion_frames=d.motion_frames)
        return dataclasses.replace(s, **updates)

    def _write_model(self, folder: Path) -> None:
        components = dataclasses.replace(self.components, settings=self._settings())
        save_checkpoint(components, folder)

    def save(self, folder: Path | None = None) -> Path:
        """Write a resumable checkpoint (``checkpoint-<step>/`` by default); returns its folder."""
        folder = Path(folder or self.output_dir / f"{CHECKPOINT_PREFIX}{self.step:07d}")
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self._write_model(tmp)
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                 "ema": None if self.ema is None else self.ema.state_dict(),
                 "config": dataclasses.asdict(self.config)}
        torch.save(state, tmp / STATE_FILE)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)  # a crash mid-write never leaves a checkpoint that looks complete
        self._prune()
        return folder

    def _prune(self) -> None:
        keep = self.config.run.keep_checkpoints
        if not keep:
            return
        found = sorted(p for p in self.output_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file())
        for old in found[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def resume(self, folder: Path | str) -> int:
        """Continue from a checkpoint written by ``save`` (``"auto"``: the latest in ``output_dir``, if any).

        Returns:
            the step the run continues from (0 when ``auto`` found nothing).

        Raises:
            CheckpointError: the folder is not a resumable checkpoint of this model.
        """
        if str(folder) == "auto":
            found = latest_checkpoint(self.output_dir)
            if found is None:
                return 0
            folder = found
        folder = Path(folder)
        state_path = folder / STATE_FILE
        if not state_path.is_file():
            raise CheckpointError(f"{folder}: not a resumable checkpoint (no {STATE_FILE})")
        loaded = load_checkpoint(folder, self.runtime.device)
        for name in TRAINED_PARTS:
            mine, theirs = getattr(self.components, name), getattr(loaded, name)
            if (mine is None) != (theirs is None):
                raise CheckpointError(f"{folder}: part '{name}' does not match the model being trained")
            if mine is not None:
                try:
                    mine.load_state_dict(theirs.state_dict())
                except RuntimeError as exc:
                    raise CheckpointError(f"{folder}: part '{name}' does not fit ({str(exc).splitlines()[0]})"
                                          ) from None
        state = torch.load(state_path, map_location=self.runtime.device, weights_only=True)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:
            raise CheckpointError(f"{folder}: optimizer state does not fit this stage's parameters ({exc})") from None
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        return self.step

    def write_final(self, folder: Path | None = None) -> Path:
        """The checkpoint with the EMA weights (the raw ones without EMA): what inference and stage 2 load."""
        folder = Path(folder or self.output_dir / "final")
        shutil.rmtree(folder, ignore_errors=True)
        if self.ema is None:
            self._write_model(folder)
        else:
            with self.ema.applied(self.model):
                self._write_model(folder)
        return folder

    # -- sample renders -----------------------------------------------------------------------------------

    def render(self, batch: TrainingBatch) -> Path:
        """Sample a few frames of ``batch[0]`` with the EMA weights and write ``samples/step-<step>.png``."""
        from emo_stream.training.samples import render_sample, save_png

        run = self.config.run
        batch = batch.to(self.runtime.device, torch.float32)
        with eval_mode(self.model), torch.no_grad():
            if self.ema is not None:
                with self.ema.applied(self.model):
                    image = render_sample(self.components, batch, self.stage, self.config.data.fps, run.sample_frames,
                                          run.sample_steps, seed=run.seed, strength=self.config.stage.max_noise)
            else:
                image = render_sample(self.components, batch, self.stage, self.config.data.fps, run.sample_frames,
                                      run.sample_steps, seed=run.seed, strength=self.config.stage.max_noise)
        return save_png(image, self.output_dir / "samples" / f"step-{self.step:07d}.png")

    # -- the loop -----------------------------------------------------------------------------------------

    def fit(self, batches: Iterable[TrainingBatch] | None = None,
            on_step: Callable[[int, float], None] | None = None) -> TrainResult:
        """Train up to ``optim.steps``; write logs, samples, checkpoints and ``final/``.

        Args:
            batches: the batches to train on (default: the config's data, from the current step on).
            on_step: called with (step, loss) after every step.
        """
        from tqdm import tqdm

        cfg, rt = self.config, self.runtime
        total = cfg.optim.steps
        if batches is None:
            from emo_stream.training.loader import build_dataset, iter_batches

            dataset = build_dataset(cfg.data, cfg.run.seed)
            batches = iter_batches(dataset, cfg.optim.batch_size, rt, cfg.run.seed, self.step, cfg.data.num_workers)
        log = RunLog(self.output_dir) if rt.is_main else None
        losses: list[float] = []
        samples: list[Path] = []
        first: TrainingBatch | None = None
        bar = tqdm(total=total, initial=self.step, disable=not (self.progress and rt.is_main), file=sys.stderr,
                   desc=f"stage {self.stage}", unit="step", dynamic_ncols=True)
        tick = time.perf_counter()
        try:
            for batch in batches:
                if self.step >= total:
                    break
                first = first or batch
                loss = self.train_step(batch)
                mean_loss = rt.mean(loss)  # the whole global batch's, the same on every process
                losses.append(mean_loss)
                bar.update()
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                if not math.isfinite(mean_loss):
                    logger.warning("step %d: loss is %s", self.step, mean_loss)
                if log is not None and (self.step % cfg.run.log_every == 0 or self.step == total):
                    now = time.perf_counter()
                    log.write(self.step, loss=mean_loss, lr=self.lr_at(self.step - 1), grad_norm=self.grad_norm,
                              seconds=now - tick,
                              samples_per_s=cfg.optim.batch_size * rt.world_size * cfg.run.log_every / (now - tick))
                    tick = now
                if rt.is_main and cfg.run.sample_every and self.step % cfg.run.sample_every == 0:
                    try:
                        samples.append(self.render(first))
                    except Exception:  # a sample strip is a look at progress: never lose the run over it
                        logger.exception("step %d: the sample render failed; training goes on", self.step)
                if cfg.run.checkpoint_every and self.step % cfg.run.checkpoint_every == 0 and self.step < total:
                    if rt.is_main:
                        self.save()
                    rt.barrier()
                if on_step is not None:
                    on_step(self.step, loss)
        except KeyboardInterrupt:
            if rt.is_main and self.step:  # keep what was trained: --resume auto continues from here
                self.save()
            raise
        finally:
            bar.close()
            if log is not None:
                log.close()
        final = None
        if self.step >= total:
            if rt.is_main:
                self.save()
                final = self.write_final()
            rt.barrier()
        return TrainResult(step=self.step, losses=losses, final_dir=final, log_path=self.output_dir / "log.csv",
                           samples=samples)
