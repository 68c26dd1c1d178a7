"""EMO's training stages, few-step distillation and the small decoder at tiny size on the CPU.

Batches are synthetic (moving blobs with a matching tone, ``emo_stream.training.synthetic``): S = 64, F = 4,
M = 2. "Lowers the loss" is measured on a fixed batch with fixed noise and timesteps (``Trainer.loss_on``),
before and after a few steps; the per-step training losses themselves vary with each step's timesteps.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from emo_stream.cli import main, runner
from emo_stream.models import save_checkpoint, tiny_components
from emo_stream.models.checkpoint import load_checkpoint
from emo_stream.training.distill import DecoderDistiller, boundary_scalings
from emo_stream.training.run_log import read_log
from emo_stream.training.sample import TrainingBatch, collate
from emo_stream.training.stages import parameter_group
from emo_stream.training.synthetic import SyntheticClips
from emo_stream.training.train_config import load_distill_config, load_train_config
from emo_stream.training.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "train"
SIZE, FRAMES, MOTION = 64, 4, 2


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    # main() would point fd 2 at /dev/null (for native loggers); keep pytest's capture of stderr instead.
    monkeypatch.setattr(runner, "quiet_native_stderr", lambda: None)
    # The CPU is shared: one thread keeps the tiny runs predictable (and float results reproducible).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch_of(stage: int, n: int = 2, seed: int = 0) -> TrainingBatch:
    frames, motion = (1, 0) if stage == 1 else (FRAMES, MOTION)
    ds = SyntheticClips(n, frames, motion, SIZE, seed=seed)
    return collate([ds[i] for i in range(n)])


def config(stage: int, tmp_path: Path, **overrides):
    frames, motion = (1, 0) if stage == 1 else (FRAMES, MOTION)
    base = {"output_dir": str(tmp_path / f"stage{stage}"), "stage.stage": stage, "data.synthetic": True,
            "data.size": SIZE, "data.clip_frames": frames, "data.motion_frames": motion, "optim.lr": 1e-3,
            "optim.batch_size": 2, "optim.steps": 4, "run.device": "cpu", "run.ema_decay": 0.9,
            "run.checkpoint_every": 0, "stage.condition_drop": 0.0, "model.init": "tiny"}
    base.update(overrides)
    return load_train_config(None, base)


def params_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module, group: str, part: str, mode: str) -> bool:
    now = dict(module.named_parameters())
    names = [n for n in before if parameter_group(part, n, mode) == group]
    assert names, f"no parameters in group {group} of {part}"
    return any(not torch.equal(before[n], now[n]) for n in names)


# ------------------------------------------------------------------------------------------------ the stages


@pytest.mark.parametrize("stage", [1, 2])
def test_steps_lower_the_loss_and_train_only_the_stage_groups(stage, tmp_path):
    trainer = Trainer(config(stage, tmp_path))
    batch = batch_of(stage)
    c = trainer.components
    denoiser0, reference0 = params_of(c.denoiser), params_of(c.reference_net)
    before = trainer.loss_on(batch, seed=123)
    losses = [trainer.train_step(batch) for _ in range(6)]
    after = trainer.loss_on(batch, seed=123)
    print(f"stage {stage}: fixed-batch loss {before:.4f} -> {after:.4f}; step losses {np.round(losses, 4)}")
    assert all(np.isfinite(losses))
    assert after < 0.9 * before
    mode = c.denoiser.config.audio_mode
    trained = {"backbone": stage == 1, "temporal": stage == 2, "audio": stage == 2, "speed": stage == 2}
    for group, expected in trained.items():
        assert changed(denoiser0, c.denoiser, group, "denoiser", mode) == expected, group
    assert changed(reference0, c.reference_net, "reference_net", "reference_net", mode) == (stage == 1)


def test_parameter_groups_of_the_tiny_model():
    names = dict(tiny_components(live=False).denoiser.named_parameters())
    groups = {parameter_group("denoiser", n, "inline") for n in names}
    assert groups == {"backbone", "temporal", "audio", "speed"}
    assert parameter_group("denoiser", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.weight",
                           "inline") == "audio"
    assert parameter_group("denoiser", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.weight",
                           "separate") == "backbone"
    assert parameter_group("denoiser", "down_blocks.0.resnets.0.norm2.weight", "inline") == "backbone"
    assert parameter_group("denoiser", "down_blocks.0.motion_modules.0.speed_proj.weight", "inline") == "speed"


def test_resume_continues_at_the_same_loss(tmp_path):
    cfg = config(2, tmp_path, **{"run.ema_decay": 0.5})
    batch = batch_of(2, seed=3)
    straight = Trainer(cfg)
    losses = [straight.train_step(batch) for _ in range(2)]
    folder = straight.save()
    losses += [straight.train_step(batch) for _ in range(2)]

    resumed = Trainer(cfg)
    assert resumed.resume("auto") == 2
    assert resumed.resume(folder) == 2
    again = [resumed.train_step(batch) for _ in range(2)]
    print(f"uninterrupted steps 3-4: {losses[2:]}, resumed: {again}")
    np.testing.assert_allclose(again, losses[2:], rtol=1e-5, atol=1e-7)
    for name, value in straight.ema.shadow.items():
        torch.testing.assert_close(resumed.ema.shadow[name], value)


@pytest.mark.parametrize("stage", [1, 2])
def test_gradient_checkpointing_gives_the_same_loss_and_grads(stage, tmp_path):
    batch = batch_of(stage)
    grads, losses = [], []
    for checkpointing in (False, True):
        trainer = Trainer(config(stage, tmp_path, **{"run.gradient_checkpointing": checkpointing}))
        generator = torch.Generator().manual_seed(5)
        from emo_stream.training.stages import encode_batch

        inputs = encode_batch(trainer.frozen, batch, stage, 25, generator, 0.3, 0.0)
        loss = trainer.model(inputs)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert set(grads[0]) == set(grads[1]) and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_reference_attention_with_mixed_rows_under_autocast():
    # Rows with and without reference (condition dropout, the teacher's unconditional rows) take the reference
    # processor's masked path. On CUDA, autocast hands it fp32 LayerNorm output while its projections return
    # bf16, and the processor's index_put refused that (found on an H200) until it cast its results; fp32 input
    # under CPU autocast reproduces it.
    denoiser = tiny_components().denoiser
    name, block = next(iter(denoiser.transformer_blocks().items()))
    channels = block.norm1.normalized_shape[0]
    hidden = torch.randn(4, 16, channels)
    reference = torch.randn(2, 16, channels)
    mask = torch.tensor([True, True, False, False])

    def call() -> torch.Tensor:
        proc = block.attn1.processor
        proc.reference, proc.reference_mask = reference, mask
        try:
            return proc(block.attn1, hidden)
        finally:
            proc.reference = proc.reference_mask = None

    expected = call()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = call()
    torch.testing.assert_close(got.float(), expected, atol=0.1, rtol=0.05)


def test_bf16_autocast_with_condition_dropout_and_checkpointing(tmp_path):
    trainer = Trainer(config(1, tmp_path, **{"run.precision": "bf16", "run.gradient_checkpointing": True,
                                             "stage.condition_drop": 0.5, "optim.batch_size": 4}))
    batch = batch_of(1, n=4)
    losses = [trainer.train_step(batch) for _ in range(2)]
    assert all(np.isfinite(losses))


# ------------------------------------------------------------------------------------------------ distillation


def test_boundary_scalings_match_the_lcm_scheduler():
    from emo_stream.models.schedulers import make_scheduler

    scheduler = make_scheduler("LCMScheduler")
    t = torch.tensor([0, 19, 259, 999])
    c_skip, c_out = boundary_scalings(t)
    for i, step in enumerate(t.tolist()):
        ref_skip, ref_out = scheduler.get_scalings_for_boundary_condition_discrete(step)
        assert float(c_skip[i]) == pytest.approx(float(ref_skip), rel=1e-5, abs=1e-9)
        assert float(c_out[i]) == pytest.approx(float(ref_out), rel=1e-5, abs=1e-9)


def test_small_decoder_steps_lower_the_loss(tmp_path):
    teacher = tiny_components()
    cfg = load_distill_config(None, {"teacher": "unused", "output_dir": "unused", "data.synthetic": True,
                                     "data.size": SIZE, "decoder.lr": 3e-3, "run.device": "cpu"})
    from emo_stream.training.device import setup_runtime

    distiller = DecoderDistiller(teacher, cfg, setup_runtime("cpu"))
    frames = batch_of(2).target.permute(0, 2, 1, 3, 4).reshape(-1, 3, SIZE, SIZE)
    with torch.no_grad():
        before = float(distiller.loss(frames))
    losses = [distiller.train_step(frames) for _ in range(20)]
    with torch.no_grad():
        after = float(distiller.loss(frames))
    print(f"small decoder loss {before:.4f} -> {after:.4f}")
    # The random tiny VAE decodes to near-noise, which a 4-stage toy decoder fits slowly: ~10 % in 20 steps.
    assert after < 0.95 * before and all(np.isfinite(losses))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("teacher") / "tiny"
    save_checkpoint(tiny_components(seed=1), folder)
    return folder


def test_distill_writes_a_few_step_checkpoint_the_emo_backend_runs(teacher, tmp_path, capsys):
    out = tmp_path / "lcm"
    code = main(["distill", "--teacher", str(teacher), "--out", str(out), "--config",
                 str(CONFIGS / "distill-tiny.yaml"), "--num-steps", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "2-step LCM" in err
    index = json.loads((out / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "LCMScheduler"]
    assert index["inference"]["num_inference_steps"] == 2 and index["inference"]["guidance_scale"] == 1.0
    assert read_log(out / "lcd.csv") and read_log(out / "decoder.csv")
    components = load_checkpoint(out)
    teacher_parts = load_checkpoint(teacher)
    assert not all(torch.equal(a, b) for a, b in zip(components.denoiser.parameters(),
                                                     teacher_parts.denoiser.parameters(), strict=True))

    from emo_stream.animators import create_animator
    from emo_stream.avatar import prepare_avatar
    from emo_stream.streaming import iter_windows
    from tests import media

    animator = create_animator("emo", size=SIZE, checkpoint=str(out), realtime=False, warmup=False, clip_frames=4)
    assert animator.steps == 2 and animator.guidance_scale == 1.0
    assert type(animator.pipe.scheduler).__name__ == "LCMScheduler"
    avatar = prepare_avatar(media.save_png(media.astronaut(), "astronaut.png"), size=SIZE)
    state = animator.prepare(avatar, seed=0)
    audio = (0.3 * np.sin(2 * np.pi * 220 * np.arange(8 * 640) / 16_000)).astype(np.float32)
    frames = []
    for window in iter_windows([audio]):
        frames.extend(animator.feed(window, state))
    frames.extend(animator.flush(state))
    assert len(frames) == 8
    assert all(f.rgb.shape == (SIZE, SIZE, 3) for f in frames)
    assert np.ptp(np.stack([f.rgb for f in frames])) > 0

    # An existing non-empty --out is refused, in one line.
    assert main(["distill", "--teacher", str(teacher), "--out", str(out), "--config",
                 str(CONFIGS / "distill-tiny.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "not empty" in err


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_train_stage1_writes_logs_samples_checkpoints_and_resumes(tmp_path, capsys):
    out = tmp_path / "run1"
    args = ["train", "--config", str(CONFIGS / "stage1-tiny.yaml"), "--output-dir", str(out), "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "stage 1: steps 0 -> 4" in err
    rows = read_log(out / "log.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in rows)
    assert (out / "samples" / "step-0000004.png").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-0000002", "checkpoint-0000004"]
    final = load_checkpoint(out / "final")
    assert final.settings.sample_size == SIZE

    # Again without --resume: refused, one line; with --resume auto it continues to the new step count.
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "--resume auto" in err
    assert main([*args, "--resume", "auto", "--steps", "6"]) == 0
    assert "stage 1: steps 4 -> 6" in capsys.readouterr().err
    assert [r["step"] for r in read_log(out / "log.csv")][-2:] == [5, 6]


def test_cli_train_stage2_from_stage1_output(tmp_path, capsys):
    import yaml

    stage1 = tmp_path / "s1"
    save_checkpoint(tiny_components(live=False), stage1)
    data = yaml.safe_load((CONFIGS / "stage2-tiny.yaml").read_text())
    data["model"]["checkpoint"] = str(stage1)
    path = tmp_path / "stage2.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "run2"
    code = main(["train", "--config", str(path), "--output-dir", str(out), "--quiet", "--steps", "2"])
    assert code == 0, capsys.readouterr().err
    assert load_checkpoint(out / "final").settings.clip_frames == 4
    assert len(read_log(out / "log.csv")) == 2


BAD_CONFIGS = [
    ("optim:\n  lr: fast\n", "optim.lr"),
    ("optim:\n  learning_rate: 0.1\n", "optim.learning_rate: unknown key"),
    ("stage:\n  stage: 3\n", "stage.stage"),
    ("stage:\n  stage: 1\ndata:\n  synthetic: true\n  size: 64\n  clip_frames: 4\n", "data.clip_frames"),
    ("stage:\n  trainable: [everything]\ndata:\n  synthetic: true\n  size: 64\n", "stage.trainable[0]"),
    ("data:\n  root: /nonexistent/shards\noptim:\n  steps: 1\nrun:\n  device: cpu\n", "shard folder not found"),
    ("data:\n  synthetic: true\n  size: 64\nrun:\n  precision: fp8\n", "run.precision"),
    ("optim: [1, 2]\n", "optim: expected a mapping"),
    ("optim: [\n", "not valid YAML"),
    ("model:\n  checkpoint: /nonexistent/ckpt\ndata:\n  synthetic: true\n  size: 64\nrun:\n  device: cpu\n",
     "checkpoint folder not found"),
]


@pytest.mark.parametrize("text,words", BAD_CONFIGS)
def test_cli_train_bad_config_is_one_line_error(text, words, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text + f"output_dir: {tmp_path / 'out'}\n")
    assert main(["train", "--config", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert words in err


def test_cli_missing_config_and_bad_distill_steps(teacher, tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["distill", "--teacher", str(teacher), "--out", str(tmp_path / "o"), "--config",
                 str(CONFIGS / "distill-tiny.yaml"), "--num-steps", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: lcd.steps") and "\n" not in err
    assert main(["distill", "--teacher", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--config",
                 str(CONFIGS / "distill-tiny.yaml")]) == 2
    assert "checkpoint folder not found" in capsys.readouterr().err


def test_full_size_configs_parse():
    for name in ("stage1", "stage2"):
        cfg = load_train_config(CONFIGS / f"{name}.yaml")
        assert cfg.run.precision == "bf16" and cfg.run.gradient_checkpointing and cfg.optim.lr == 1e-5
    assert load_train_config(CONFIGS / "stage2.yaml").data.clip_frames == 12
    cfg = load_distill_config(CONFIGS / "distill.yaml", {"teacher": "t", "output_dir": "o"})
    assert 1 <= cfg.lcd.steps <= 4


def test_cli_train_from_a_shard_folder(tmp_path, capsys):
    """One tiny ``data prepare``-format folder, written directly from synthetic clips."""
    root = shard_folder(tmp_path / "shards", clips=2, frames=10)
    out = tmp_path / "run"
    path = tmp_path / "cfg.yaml"
    path.write_text(f"output_dir: {out}\nstage:\n  stage: 2\nmodel:\n  init: tiny\n"
                    f"data:\n  root: {root}\n  size: {SIZE}\n  clip_frames: {FRAMES}\n  motion_frames: {MOTION}\n"
                    "optim:\n  lr: 1.0e-3\n  batch_size: 1\n  steps: 2\n"
                    "run:\n  device: cpu\n  log_every: 1\n  checkpoint_every: 0\n")
    assert main(["train", "--config", str(path), "--quiet"]) == 0, capsys.readouterr().err
    assert len(read_log(out / "log.csv")) == 2


def shard_folder(root: Path, clips: int, frames: int) -> Path:
    from emo_stream.training import shards
    from emo_stream.training.rig_targets import RIG_TARGET_NAMES

    shutil.rmtree(root, ignore_errors=True)
    (root / shards.SHARDS_DIR).mkdir(parents=True)
    manifest = shards.Manifest(fps=25, size=SIZE)
    ds = SyntheticClips(clips, frames, 0, SIZE, seed=7)
    for i in range(clips):
        s = ds[i]
        clip_id = f"clip{i}"
        video = ((s.target.permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        arrays = {"frames": video, "audio": np.zeros(frames * 640, np.float32),
                  "features": np.zeros((frames, 1), np.float32), "head_speed": s.head_speed.numpy(),
                  "face_mask": s.face_mask[0].numpy().astype(np.uint8),
                  "boxes": np.tile(np.array([8, 8, 56, 56], np.float32), (frames, 1)),
                  "rig": np.zeros((frames, len(RIG_TARGET_NAMES)), np.float32), "face_found": np.ones(frames, bool)}
        src = root / f"src{i}.mp4"
        src.write_bytes(b"x")
        key = shards.SourceKey.of(src)
        shard = f"{shards.SHARDS_DIR}/{clip_id}.tar"
        shards.write_clip_shard(root / shard, clip_id, arrays, {"clip_id": clip_id, "fps": 25})
        manifest.clips[key.path] = shards.ClipRecord(
            clip_id=clip_id, shard=shard, frames=frames, fps=25, size=SIZE, duration_s=frames / 25, source=key,
            source_fps=25.0, source_size=(SIZE, SIZE), face_frames=1.0)
    manifest.save(root)
    return root


def test_img2img_sampling_trains_and_distills_where_it_samples(teacher, tmp_path, capsys):
    """``stage.max_noise`` keeps training timesteps below it; ``sampling`` goes into the distilled checkpoint, whose
    consistency training then draws only grid timesteps below its ``reference_strength``."""
    from emo_stream.training.device import setup_runtime
    from emo_stream.training.distill import ConsistencyDistiller
    from emo_stream.training.stages import encode_batch

    trainer = Trainer(config(2, tmp_path / "stage", **{"stage.max_noise": 0.3}))
    batch = collate([SyntheticClips(16, 4, 2, SIZE, seed=0)[i] for i in range(16)])
    inputs = encode_batch(trainer.frozen, batch, 2, 25, torch.Generator().manual_seed(0), 0.0, 0.0,
                          trainer.config.stage.max_noise)
    assert int(inputs.timesteps.max()) < 300 and int(inputs.timesteps.max()) > 100

    overrides = {"sampling.reference_strength": 0.4, "sampling.noise_correlation": 0.9}
    cfg = load_distill_config(CONFIGS / "distill-tiny.yaml", {"teacher": str(teacher), "output_dir": "x",
                                                             **overrides})
    assert ConsistencyDistiller(load_checkpoint(teacher), cfg, setup_runtime("cpu")).grid_points == 20
    # A config silent on the strength keeps the one the teacher already samples at.
    anchored = load_checkpoint(teacher)
    anchored = dataclasses.replace(anchored, settings=dataclasses.replace(anchored.settings, reference_strength=0.5))
    silent = load_distill_config(CONFIGS / "distill-tiny.yaml", {"teacher": str(teacher), "output_dir": "x"})
    assert ConsistencyDistiller(anchored, silent, setup_runtime("cpu")).grid_points == 25
    yaml_text = (CONFIGS / "distill-tiny.yaml").read_text().replace(
        "run:", "sampling:\n  reference_strength: 0.4\n  noise_correlation: 0.9\n  decode_residual: true\n"
                 "  generate_region: lower_face\nrun:")
    (tmp_path / "distill.yaml").write_text(yaml_text)
    out = tmp_path / "lcm"
    assert main(["distill", "--teacher", str(teacher), "--out", str(out), "--config", str(tmp_path / "distill.yaml"),
                 "--quiet"]) == 0, capsys.readouterr().err
    settings = load_checkpoint(out).settings
    assert (settings.reference_strength, settings.noise_correlation, settings.decode_residual,
            settings.generate_region) == (0.4, 0.9, True, "lower_face")
    for key, value in (("reference_strength", 1.5), ("generate_region", "mouth")):
        with pytest.raises(Exception, match=key):
            load_distill_config(CONFIGS / "distill-tiny.yaml", {"teacher": "t", "output_dir": "o",
                                                               f"sampling.{key}": value})


def test_a_failing_sample_render_does_not_lose_the_run(tmp_path, monkeypatch, caplog):
    def broken(self, batch):
        raise RuntimeError("no display")

    monkeypatch.setattr(Trainer, "render", broken)
    trainer = Trainer(config(1, tmp_path, **{"optim.steps": 2, "run.sample_every": 1}))
    result = trainer.fit()
    assert result.step == 2 and result.final_dir is not None and (result.final_dir / "model_index.json").exists()
    assert "sample render failed" in caplog.text
