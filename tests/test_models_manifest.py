"""Full-size models built on the meta device have exactly the key names and shapes of the public checkpoints.

The manifests in emo_stream/importers/manifests/ list every tensor of EchoMimic v1's four .pth files and of Hallo v1's
``net.pth`` (keys prefixed by part). Importing those checkpoints is then a prefix strip: these tests prove it
for reference_unet, denoising_unet + motion modules, face_locator (both families) and Hallo's audioproj and
imageproj. No key is expected to differ; ``EXPECTED_EXTRA`` lists our EMO-only additions (absent upstream).
"""

from __future__ import annotations

import re

import pytest
import torch

from emo_stream.importers.manifests import load_manifest
from emo_stream.models import AudioProjection, EmoDenoiser, FaceLocator, ImageProjection, ReferenceNet
from emo_stream.models import configs as named

# Our keys that no upstream file has: EMO's speed conditioning (zero-initialised, only when configured).
EXPECTED_EXTRA = re.compile(r"^(speed_embedding\.linear_[12]\.(weight|bias)|.*\.motion_modules\.\d+\.speed_proj\.(weight|bias))$")


def manifest(name: str) -> dict:
    return load_manifest(name)


def shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def diff(ours: dict[str, list[int]], theirs: dict[str, list[int]]) -> tuple[list[str], list[str], list[str]]:
    missing = sorted(set(theirs) - set(ours))
    extra = sorted(set(ours) - set(theirs))
    mismatched = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
    return missing, extra, mismatched


def count(model: torch.nn.Module) -> tuple[int, int]:
    params = sum(p.numel() for p in model.parameters())
    return params, params + sum(b.numel() for b in model.buffers() if b is not None)


def on_meta(cls, config):
    with torch.device("meta"):
        return cls(**config)


@pytest.fixture(scope="module")
def echomimic():
    files = manifest("echomimic_v1.json")
    configs = named.echomimic_v1()
    return files, {
        "denoiser": on_meta(EmoDenoiser, configs["denoiser"]),
        "reference_net": on_meta(ReferenceNet, configs["reference_net"]),
        "face_locator": on_meta(FaceLocator, configs["face_locator"]),
    }


@pytest.fixture(scope="module")
def hallo():
    files = manifest("hallo_v1.json")
    configs = named.hallo_v1()
    models = {
        "denoising_unet": on_meta(EmoDenoiser, configs["denoiser"]),
        "reference_unet": on_meta(ReferenceNet, configs["reference_net"]),
        "face_locator": on_meta(FaceLocator, configs["face_locator"]),
        "audioproj": on_meta(AudioProjection, configs["audio_projection"]),
        "imageproj": on_meta(ImageProjection, configs["image_projection"]),
    }
    return files["net.pth"], models


def test_echomimic_denoiser_is_denoising_unet_plus_motion_module(echomimic):
    files, models = echomimic
    theirs = {**files["denoising_unet.pth"]["tensors"], **files["motion_module.pth"]["tensors"]}
    assert diff(shapes(models["denoiser"]), theirs) == ([], [], [])
    params, elements = count(models["denoiser"])
    assert params == files["denoising_unet.pth"]["n_params"] + files["motion_module.pth"]["n_params"]
    assert elements == files["denoising_unet.pth"]["n_elements"] + files["motion_module.pth"]["n_elements"]
    # The 42 pos_encoder.pe tables are persistent buffers, as upstream.
    buffers = {k for k, _ in models["denoiser"].named_buffers() if k.endswith("pos_encoder.pe")}
    assert buffers == set(files["motion_module.pth"]["buffers"])
    assert len({k.split(".temporal_transformer")[0] for k in buffers}) == 21


def test_echomimic_reference_net_and_face_locator(echomimic):
    files, models = echomimic
    for ours, file in (("reference_net", "reference_unet.pth"), ("face_locator", "face_locator.pth")):
        assert diff(shapes(models[ours]), files[file]["tensors"]) == ([], [], []), ours
        assert count(models[ours])[0] == files[file]["n_params"], ours
    assert not any("attn2" in k or "conv_out" in k for k in shapes(models["reference_net"]))


@pytest.mark.parametrize("prefix", ["denoising_unet", "reference_unet", "face_locator", "audioproj", "imageproj"])
def test_hallo_net_parts_after_the_prefix_strip(hallo, prefix):
    net, models = hallo
    theirs = {k[len(prefix) + 1:]: v for k, v in net["tensors"].items() if k.startswith(prefix + ".")}
    assert theirs, prefix
    assert diff(shapes(models[prefix]), theirs) == ([], [], [])


def test_hallo_net_is_covered_completely(hallo):
    net, models = hallo
    ours = {f"{prefix}.{k}" for prefix, model in models.items() for k in model.state_dict()}
    assert ours == set(net["tensors"])
    assert sum(count(m)[0] for m in models.values()) == net["n_params"]
    assert sum(count(m)[1] for m in models.values()) == net["n_elements"]


def test_our_full_size_model_adds_only_the_speed_layers(echomimic):
    files, _ = echomimic
    theirs = {**files["denoising_unet.pth"]["tensors"], **files["motion_module.pth"]["tensors"]}
    ours = on_meta(EmoDenoiser, named.emo_full()["denoiser"])
    missing, extra, mismatched = diff(shapes(ours), theirs)
    assert missing == [] and mismatched == []
    assert extra and all(EXPECTED_EXTRA.match(k) for k in extra)
    assert len([k for k in extra if "speed_proj.weight" in k]) == 21
