"""Checkpoint folders: the tiny-checkpoint script, the loader, and CheckpointError naming the bad part."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from emo_stream.errors import CheckpointError
from emo_stream.models import EmoComponents, load_checkpoint, tiny_components
from server.config import load_config
from tests.media import REPO


def run_script(out_dir: Path, *args: str) -> None:
    spec = importlib.util.spec_from_file_location("make_tiny_checkpoint", REPO / "scripts" / "make_tiny_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(out_dir), *args]) == 0


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    run_script(folder, "--seed", "5")
    return folder


@pytest.fixture
def folder(tiny_folder, tmp_path) -> Path:
    """A private copy to damage."""
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_folder, copy)
    return copy


def test_script_writes_a_loadable_folder_with_every_part(tiny_folder):
    index = json.loads((tiny_folder / "model_index.json").read_text())
    for part in ("reference_net", "denoiser", "face_locator", "audio_projection", "speech_encoder", "vae",
                 "small_decoder", "scheduler"):
        assert part in index, part
    assert index["inference"]["audio_mode"] == "inline"
    assert (tiny_folder / "denoiser" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tiny_folder / "scheduler" / "scheduler_config.json").is_file()
    components = load_checkpoint(tiny_folder, "cpu", torch.float32)
    assert isinstance(components, EmoComponents)
    assert components.settings.clip_frames == 4
    assert components.scheduler.config.prediction_type == "v_prediction"
    expected = tiny_components(seed=5)
    for name, part in expected.parts().items():
        if isinstance(part, torch.nn.Module):
            got, want = getattr(components, name).state_dict(), part.state_dict()
            assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), name


def test_separate_audio_checkpoint_round_trips(tmp_path):
    run_script(tmp_path / "sep", "--audio-mode", "separate")
    components = load_checkpoint(tmp_path / "sep")
    assert components.denoiser.config.audio_mode == "separate"
    assert components.audio_projection is not None and components.image_projection is not None


def test_load_in_half_precision_keeps_the_speech_front_end_in_float32(tiny_folder):
    components = load_checkpoint(tiny_folder, "cpu", torch.bfloat16)
    assert next(components.denoiser.parameters()).dtype == torch.bfloat16
    assert next(components.speech_encoder.parameters()).dtype == torch.float32


def expect_error(folder: Path, *words: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder)
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert "\n" not in message
    return message


def edit_index(folder: Path, **changes) -> None:
    path = folder / "model_index.json"
    index = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            index.pop(key)
        else:
            index[key] = value
    path.write_text(json.dumps(index))


def test_missing_part_folder_names_the_part(folder):
    shutil.rmtree(folder / "denoiser")
    expect_error(folder, "'denoiser'", "not found")


def test_part_missing_from_the_index_names_the_part(folder):
    edit_index(folder, face_locator=...)
    expect_error(folder, "'face_locator'", "missing")


def test_misnamed_class_names_the_part(folder):
    edit_index(folder, reference_net=["emo_stream.models", "RefNet"])
    expect_error(folder, "'reference_net'", "RefNet")


def test_class_from_another_library_is_refused(folder):
    edit_index(folder, vae=["os", "system"])
    expect_error(folder, "'vae'", "not allowed")


def test_missing_weights_name_the_part(folder):
    (folder / "speech_encoder" / "diffusion_pytorch_model.safetensors").unlink()
    expect_error(folder, "'speech_encoder'")


def test_corrupt_weights_name_the_part(folder):
    path = folder / "face_locator" / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    expect_error(folder, "'face_locator'")


def test_weights_that_do_not_fit_the_config_name_the_part(folder):
    path = folder / "small_decoder" / "config.json"
    config = json.loads(path.read_text())
    config["block_out_channels"] = [32, 16, 8, 8]
    path.write_text(json.dumps(config))
    expect_error(folder, "'small_decoder'")


def test_parts_that_do_not_fit_each_other_name_the_part(folder):
    path = folder / "reference_net" / "config.json"
    config = json.loads(path.read_text())
    config["layers_per_block"] = 2
    path.write_text(json.dumps(config))
    # Rebuild the weights for the new layout so the part itself loads; only the fit check can catch it.
    from emo_stream.models import ReferenceNet

    ReferenceNet(**{k: v for k, v in config.items() if not k.startswith("_")}).save_pretrained(folder / "reference_net")
    expect_error(folder, "'reference_net'", "layers_per_block")


def test_unknown_part_and_setting_are_refused(folder):
    edit_index(folder, pose_encoder=["emo_stream.models", "PoseEncoder"])
    expect_error(folder, "pose_encoder")
    edit_index(folder, pose_encoder=..., inference={"steps": 3})
    expect_error(folder, "steps")


def test_not_a_checkpoint(tmp_path):
    expect_error(tmp_path / "nowhere", "not found")
    expect_error(tmp_path, "model_index.json")
    (tmp_path / "model_index.json").write_text("{not json")
    expect_error(tmp_path, "unreadable")


def test_emo_gpu_config_points_at_a_checkpoint_folder():
    config = load_config(REPO / "configs" / "emo-gpu.yaml")
    assert config.animator.backend == "emo"
    assert config.animator.device == "cuda"
    assert config.animator.checkpoint


def test_pickled_weights_are_refused(folder):
    """A part saved as a pickle (.bin) is not loaded: checkpoints carry safetensors only."""
    from emo_stream.models import SpeechEncoder

    part = folder / "speech_encoder"
    model = SpeechEncoder.from_pretrained(part, low_cpu_mem_usage=False)
    (part / "diffusion_pytorch_model.safetensors").unlink()
    model.save_pretrained(part, safe_serialization=False)
    expect_error(folder, "'speech_encoder'", "safetensors")


def test_load_part_reads_one_part_alone(tiny_folder):
    """``load_part`` (``scripts/ae_ceiling.py`` reads a VAE this way): the part as the whole load has it, and an
    absent part named in the error."""
    from emo_stream.models.checkpoint import load_part

    alone = load_part(tiny_folder, "vae")
    whole = load_checkpoint(tiny_folder).vae
    assert type(alone) is type(whole)
    got, want = alone.state_dict(), whole.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(CheckpointError, match="no part 'image_projection'"):
        load_part(tiny_folder, "image_projection")
