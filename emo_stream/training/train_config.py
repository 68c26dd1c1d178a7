"""Typed configs of ``emo-stream train`` and ``emo-stream distill`` (YAML files in ``configs/train/``).

Every section is a dataclass; an unknown key or a bad value is a ``ConfigError`` that names the dotted key
(``optim.lr: expected float, got 'fast'``): read by ``emo_stream.config_reader``, like every config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emo_stream.config_reader import check, load, validate_sections
from emo_stream.models.checkpoint import GENERATE_REGIONS

PRECISIONS = ("fp32", "bf16", "fp16")
# Parameter groups a stage can train (see ``stages.parameter_group``).
GROUPS = ("reference_net", "backbone", "face_locator", "temporal", "audio", "speed")
STAGE_GROUPS = {1: ["reference_net", "backbone", "face_locator"], 2: ["temporal", "audio", "speed", "face_locator"]}
MODEL_INITS = ("tiny", "tiny_separate", "tiny_face", "emo_full", "echomimic_v1", "hallo_v1")


@dataclass
class DataConfig:
    """Where samples come from.

    Attributes:
        root: a folder of prepared shards (``emo-stream data prepare``), read with ``ClipDataset``.
        synthetic: use moving-pattern clips instead (smoke runs and tests; no data needed).
        synthetic_clips: how many synthetic samples make an epoch.
        size: crop side in pixels (None: the shards' own size; synthetic needs a value).
        clip_frames: target frames per sample (stage 1 trains on single frames: 1).
        motion_frames: frames before the target fed as motion frames (stage 1: 0).
        fps: video frame rate of the shards (the audio window per frame follows from it).
        samples_per_epoch: ``ClipDataset``'s epoch length (None: its default).
        num_workers: DataLoader worker processes (0: load in the training process).
        augment: recolour and mirror every sample (``training.augment``): a model trained on few portraits
            learns to carry the reference's look instead of learning those portraits.
    """

    root: str | None = None
    synthetic: bool = False
    synthetic_clips: int = 8
    size: int | None = None
    clip_frames: int = 1
    motion_frames: int = 0
    fps: int = 25
    samples_per_epoch: int | None = None
    num_workers: int = 0
    augment: bool = False

    def validate(self, prefix: str) -> None:
        check(self.synthetic or bool(self.root), f"{prefix}.root", "set a shard folder (or synthetic: true)")
        check(not self.synthetic or (self.size or 0) >= 8, f"{prefix}.size", "synthetic data needs a size >= 8")
        check(self.size is None or self.size % 8 == 0, f"{prefix}.size", f"must be a multiple of 8, got {self.size}")
        check(self.clip_frames >= 1, f"{prefix}.clip_frames", f"must be >= 1, got {self.clip_frames}")
        check(self.motion_frames >= 0, f"{prefix}.motion_frames", f"must be >= 0, got {self.motion_frames}")
        check(self.fps > 0, f"{prefix}.fps", f"must be > 0, got {self.fps}")
        check(self.synthetic_clips >= 1, f"{prefix}.synthetic_clips", "must be >= 1")
        check(self.num_workers >= 0, f"{prefix}.num_workers", "must be >= 0")


@dataclass
class ModelConfig:
    """The model a run starts from.

    Attributes:
        checkpoint: a checkpoint folder to start from (stage 2: stage 1's output; imported EchoMimic weights).
        init: named config to initialise randomly when ``checkpoint`` is None (``emo_stream.models.configs``).
        seed: seed of that random initialisation.
        speed_max: head speed (radians per frame) of the last speed bucket; the buckets' centres are spread
            evenly over [0, speed_max] (EMO's speed buckets).
    """

    checkpoint: str | None = None
    init: str = "tiny"
    seed: int = 0
    speed_max: float = 0.1

    def validate(self, prefix: str) -> None:
        check(self.init in MODEL_INITS, f"{prefix}.init", f"one of {', '.join(MODEL_INITS)}, got {self.init!r}")
        check(self.speed_max > 0, f"{prefix}.speed_max", f"must be > 0, got {self.speed_max}")


@dataclass
class OptimConfig:
    """AdamW and the step budget.

    Attributes:
        lr: learning rate (EMO: 1e-5).
        batch_size: samples per step on each device.
        steps: optimisation steps of the run (a resumed run continues up to this number).
        weight_decay / betas / eps: AdamW's.
        max_grad_norm: gradient clipping (0: off).
        warmup_steps: linear learning-rate warm-up.
    """

    lr: float = 1e-5
    batch_size: int = 4
    steps: int = 1000
    weight_decay: float = 1e-2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    warmup_steps: int = 0

    def validate(self, prefix: str) -> None:
        check(self.lr > 0, f"{prefix}.lr", f"must be > 0, got {self.lr}")
        check(self.batch_size >= 1, f"{prefix}.batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.steps >= 1, f"{prefix}.steps", f"must be >= 1, got {self.steps}")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{prefix}.betas",
              f"two values in [0, 1), got {self.betas}")
        check(self.max_grad_norm >= 0, f"{prefix}.max_grad_norm", "must be >= 0")
        check(self.warmup_steps >= 0, f"{prefix}.warmup_steps", "must be >= 0")


@dataclass
class RunConfig:
    """Device, precision and bookkeeping of a run.

    Attributes:
        device: ``auto`` (CUDA if present, one GPU per torchrun process), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32``, ``bf16`` (autocast) or ``fp16`` (autocast + GradScaler).
        gradient_checkpointing: recompute UNet blocks in the backward pass (memory for compute).
        seed: seeds the noise, timesteps and condition dropout of every step (resumable: per-step seeds).
        ema_decay: EMA of the trained weights (0: no EMA); the EMA weights are what ``final/`` holds.
        log_every: steps between CSV (and TensorBoard) rows.
        checkpoint_every: steps between resumable checkpoints (0: only at the end).
        keep_checkpoints: resumable checkpoints kept (older ones are deleted; 0: keep all).
        sample_every: steps between sample renders (0: never).
        sample_steps: sampler steps of a sample render.
        sample_frames: frames in a sample render (capped at the clip length).
    """

    device: str = "auto"
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0
    ema_decay: float = 0.9999
    log_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    sample_every: int = 0
    sample_steps: int = 20
    sample_frames: int = 4

    def validate(self, prefix: str) -> None:
        check(self.precision in PRECISIONS, f"{prefix}.precision",
              f"one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        check(0.0 <= self.ema_decay < 1.0, f"{prefix}.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        for key in ("log_every", "checkpoint_every", "keep_checkpoints", "sample_every"):
            check(getattr(self, key) >= 0, f"{prefix}.{key}", "must be >= 0")
        check(self.log_every >= 1, f"{prefix}.log_every", "must be >= 1")
        check(self.sample_steps >= 1 and self.sample_frames >= 1, f"{prefix}.sample_steps",
              "sample_steps and sample_frames must be >= 1")


@dataclass
class StageConfig:
    """What a stage trains and how it conditions.

    Attributes:
        stage: 1 (image pretraining: ReferenceNet + backbone on single frames, no temporal/audio/speed layers)
            or 2 (video: temporal, audio and speed layers, motion frames, face locator).
        trainable: parameter groups to train (default: the stage's, ``STAGE_GROUPS``).
        condition_drop: probability of dropping reference, audio and face features of a sample together (the
            unconditional recipe classifier-free guidance needs at inference).
        motion_drop: probability of dropping the motion frames of a sample (EMO: the first clip has none).
        face_loss_weight: extra weight of the loss inside the face mask (0: plain MSE; w: the face's latents
            count 1 + w times, normalised so the mean weight is 1): a small model spends its few steps on the
            face, where the audio acts, rather than on the background.
        max_noise: train on timesteps below this share of the schedule only (1: all). A checkpoint that samples
            from the noised portrait (``reference_strength`` s) never sees more noise than s: a small model
            spends its steps there.
    """

    stage: int = 1
    trainable: list[str] | None = None
    condition_drop: float = 0.05
    motion_drop: float = 0.0
    face_loss_weight: float = 0.0
    max_noise: float = 1.0

    def validate(self, prefix: str) -> None:
        check(0.0 < self.max_noise <= 1.0, f"{prefix}.max_noise", f"must be in (0, 1], got {self.max_noise}")
        check(self.stage in (1, 2), f"{prefix}.stage", f"1 (image) or 2 (video), got {self.stage}")
        for i, group in enumerate(self.trainable or []):
            check(group in GROUPS, f"{prefix}.trainable[{i}]", f"one of {', '.join(GROUPS)}, got {group!r}")
        check(self.trainable is None or len(self.trainable) > 0, f"{prefix}.trainable", "nothing to train")
        for key in ("condition_drop", "motion_drop"):
            check(0.0 <= getattr(self, key) <= 1.0, f"{prefix}.{key}", "must be in [0, 1]")
        check(self.face_loss_weight >= 0.0, f"{prefix}.face_loss_weight", "must be >= 0")

    @property
    def groups(self) -> list[str]:
        return list(self.trainable) if self.trainable else list(STAGE_GROUPS[self.stage])


@dataclass
class TrainConfig:
    """``emo-stream train --config F``."""

    output_dir: str = "runs/train"
    stage: StageConfig = field(default_factory=StageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self, prefix: str = "") -> None:
        validate_sections(self, prefix)
        if self.stage.stage == 1:
            check(self.data.clip_frames == 1, "data.clip_frames", "stage 1 trains on single frames: set 1")
            check(self.data.motion_frames == 0, "data.motion_frames", "stage 1 has no motion frames: set 0")


@dataclass
class LcdConfig:
    """Latent consistency distillation of the denoiser.

    Attributes:
        steps: sampler steps the distilled model is made for (1-4; written to the checkpoint's settings).
        num_ddim_timesteps: the teacher's DDIM grid (the LCM scheduler's ``original_inference_steps``).
        solver_substeps: teacher DDIM steps per grid interval (>1: a finer multi-step ODE solve per target).
        guidance_scale: the teacher's classifier-free guidance distilled in (None: the teacher's setting).
        train_steps / lr / batch_size: the optimisation.
        target_ema: EMA decay of the target network (LCM: 0.95).
        loss: ``huber`` (LCM's pseudo-Huber) or ``l2``.
        huber_c: pseudo-Huber constant.
        save: which net becomes the checkpoint's denoiser: ``target`` (EMA) or ``student``.
    """

    steps: int = 4
    num_ddim_timesteps: int = 50
    solver_substeps: int = 1
    guidance_scale: float | None = None
    train_steps: int = 1000
    lr: float = 1e-6
    batch_size: int = 4
    target_ema: float = 0.95
    loss: str = "huber"
    huber_c: float = 0.001
    save: str = "target"

    def validate(self, prefix: str) -> None:
        check(1 <= self.steps <= 4, f"{prefix}.steps", f"a few-step model takes 1-4 steps, got {self.steps}")
        check(self.num_ddim_timesteps >= self.steps and 1000 % self.num_ddim_timesteps == 0,
              f"{prefix}.num_ddim_timesteps", f"must divide 1000 and be >= steps, got {self.num_ddim_timesteps}")
        check(self.solver_substeps >= 1, f"{prefix}.solver_substeps", "must be >= 1")
        check(self.guidance_scale is None or self.guidance_scale >= 1.0, f"{prefix}.guidance_scale", "must be >= 1")
        check(self.train_steps >= 0, f"{prefix}.train_steps", "must be >= 0")
        check(self.lr > 0 and self.batch_size >= 1, f"{prefix}.lr", "lr must be > 0 and batch_size >= 1")
        check(0.0 <= self.target_ema < 1.0, f"{prefix}.target_ema", "must be in [0, 1)")
        check(self.loss in ("huber", "l2"), f"{prefix}.loss", f"huber or l2, got {self.loss!r}")
        check(self.save in ("target", "student"), f"{prefix}.save", f"target or student, got {self.save!r}")


@dataclass
class DecoderConfig:
    """Training of the small streaming decoder against the VAE decoder.

    Attributes:
        train_steps / lr / batch_size: the optimisation (batch in frames; 0 steps: keep the teacher's decoder).
        mse_weight / l1_weight: loss = mse_weight · MSE + l1_weight · L1 against the VAE's decode.
        reinit: start from a fresh decoder even if the teacher has one.
    """

    train_steps: int = 1000
    lr: float = 1e-3
    batch_size: int = 8
    mse_weight: float = 1.0
    l1_weight: float = 1.0
    reinit: bool = False

    def validate(self, prefix: str) -> None:
        check(self.train_steps >= 0, f"{prefix}.train_steps", "must be >= 0")
        check(self.lr > 0 and self.batch_size >= 1, f"{prefix}.lr", "lr must be > 0 and batch_size >= 1")
        check(self.mse_weight >= 0 and self.l1_weight >= 0 and self.mse_weight + self.l1_weight > 0,
              f"{prefix}.mse_weight", "loss weights must be >= 0 and not both 0")


@dataclass
class SamplingConfig:
    """How the distilled checkpoint samples (``model_index.json`` ``inference``; None keeps the teacher's).

    Attributes:
        reference_strength: start every frame from the portrait noised to this share of the schedule (img2img);
            1 = from pure noise.
        noise_correlation: AR(1) correlation of the initial noise across frames and clips (0: independent).
        decode_residual: decode frames as the portrait plus the decoded change (``InferenceSettings``).
        generate_region: ``frame``, ``face`` or ``lower_face``: what the model generates; the rest stays the
            portrait (``InferenceSettings``).
    """

    reference_strength: float | None = None
    noise_correlation: float | None = None
    decode_residual: bool | None = None
    generate_region: str | None = None

    def validate(self, prefix: str) -> None:
        check(self.reference_strength is None or 0.0 < self.reference_strength <= 1.0,
              f"{prefix}.reference_strength", f"must be in (0, 1], got {self.reference_strength}")
        check(self.noise_correlation is None or 0.0 <= self.noise_correlation < 1.0,
              f"{prefix}.noise_correlation", f"must be in [0, 1), got {self.noise_correlation}")
        check(self.generate_region is None or self.generate_region in GENERATE_REGIONS, f"{prefix}.generate_region",
              f"one of {', '.join(GENERATE_REGIONS)}, got {self.generate_region!r}")

    def updates(self) -> dict[str, float | bool | str]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class DistillConfig:
    """``emo-stream distill --teacher DIR --out DIR [--config F]``."""

    teacher: str | None = None
    output_dir: str | None = None
    data: DataConfig = field(default_factory=lambda: DataConfig(clip_frames=4, motion_frames=2))
    lcd: LcdConfig = field(default_factory=LcdConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(ema_decay=0.0))

    def validate(self, prefix: str = "") -> None:
        validate_sections(self, prefix)
        check(bool(self.teacher), "teacher", "set the teacher checkpoint folder (--teacher DIR)")
        check(bool(self.output_dir), "output_dir", "set the output folder (--out DIR)")


def load_train_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A validated ``TrainConfig`` from a YAML file (None: defaults) plus dotted overrides."""
    return load(TrainConfig, path, overrides)


def load_distill_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> DistillConfig:
    """A validated ``DistillConfig`` from a YAML file (None: defaults) plus dotted overrides."""
    return load(DistillConfig, path, overrides)
