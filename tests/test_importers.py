"""EchoMimic v1 / Hallo v1 importers: key tables against the published manifests, and tiny end-to-end imports.

Key/shape level: the manifests in emo_stream/importers/manifests list every tensor of the public files. Each manifest key is
turned into a meta tensor and run through the importer's own routing + filling code (``Source``/``fill_part``)
into our full-size models built on the meta device: every source key lands on a model key of equal shape, and
no model key is left over except the declared EMO-only speed layers.

End to end: the real weights are gigabytes, so the tests write *fake source files with the published key
structure but tiny widths* (our tiny configs' random state dicts saved in the SOURCE layout: the inverse of the
key tables, split into the published files / prefixed into Hallo's ``net.pth``, ``torch.save``d, float16 where
upstream is float16), plus a tiny diffusers VAE folder, a tiny OpenAI-format Whisper ``.pt`` and a tiny
transformers wav2vec2 folder. Tiny widths replace the full-size tensors; names and file layout do not change.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from emo_stream.errors import CheckpointError, EmoStreamError
from emo_stream.importers import REPORT_FILE, import_echomimic, import_hallo, tables
from emo_stream.importers.core import ImportReport, Source, fill_part
from emo_stream.models import (
    AudioProjection,
    EmoDenoiser,
    FaceLocator,
    ImageProjection,
    InferenceSettings,
    ReferenceNet,
    SpeechEncoder,
    build_components,
    load_checkpoint,
)
from emo_stream.models import configs as named
from emo_stream.models.reference_net import reference_config
from emo_stream.pipelines import EmoPipeline
from tests.test_models_manifest import manifest, on_meta

CLASSES = {"denoiser": EmoDenoiser, "reference_net": ReferenceNet, "face_locator": FaceLocator,
           "audio_projection": AudioProjection, "image_projection": ImageProjection, "speech_encoder": SpeechEncoder}


def meta_source(label: str, tensors: dict[str, list[int]], table: tables.KeyTable, report: ImportReport) -> Source:
    return Source(label, {k: torch.empty(shape, device="meta") for k, shape in tensors.items()}, table, report)


def new_report() -> ImportReport:
    return ImportReport(family="test", variant="default", source="manifest", settings={})


# -- key/shape level against the manifests ---------------------------------------------------------------------

@pytest.mark.parametrize("speed_buckets", [0, 9])
def test_echomimic_manifest_fills_our_full_size_model(speed_buckets):
    files = manifest("echomimic_v1.json")
    configs = named.echomimic_v1()
    if speed_buckets:  # our EMO layout: the same plus speed conditioning
        configs["denoiser"].update(num_speed_buckets=speed_buckets, speed_embedding_dim=320)
    report = new_report()
    covered = set()
    for part, names in tables.ECHOMIMIC_FILES.items():
        model = on_meta(CLASSES[part], configs[part])
        sources = []
        for name in names:
            file = name.format(acc="")
            covered.add(file)
            src = meta_source(file, files[file]["tensors"], tables.echomimic_table(part), report)
            assert set(src.by_part) == {part}
            sources.append(lambda src=src: src)
        fill_part(part, model, sources, report)
        assert all(not s().tensors for s in sources), part  # every source key consumed
        left = report.parts[part].left_at_init
        if speed_buckets and part == "denoiser":
            assert left and all(tables.is_emo_only(part, k) for k in left)
            assert len([k for k in left if k.endswith("speed_proj.weight")]) == 21
        else:
            assert left == [], part
    assert covered == set(files)
    assert report.parts["denoiser"].filled == files["denoising_unet.pth"]["n_tensors"] + \
        files["motion_module.pth"]["n_tensors"]


def test_hallo_manifest_fills_our_full_size_model():
    net = manifest("hallo_v1.json")["net.pth"]
    configs = named.hallo_v1()
    report = new_report()
    src = meta_source("net.pth", net["tensors"], tables.HALLO_NET, report)
    assert set(src.by_part) == set(tables.HALLO_PREFIXES.values())
    for part in tables.HALLO_PREFIXES.values():
        fill_part(part, on_meta(CLASSES[part], configs[part]), [lambda: src], report)
        assert report.parts[part].left_at_init == [], part
    assert not src.tensors and not src.by_part
    assert sum(r.filled for r in report.parts.values()) == net["n_tensors"]


def openai_whisper_keys(n_state: int, n_layer: int, n_mels: int, n_ctx: int) -> dict[str, list[int]]:
    """The encoder keys of openai/whisper ``model.py`` (AudioEncoder: conv1/2, positional_embedding, blocks, ln_post)."""
    keys = {"encoder.conv1.weight": [n_state, n_mels, 3], "encoder.conv1.bias": [n_state],
            "encoder.conv2.weight": [n_state, n_state, 3], "encoder.conv2.bias": [n_state],
            "encoder.positional_embedding": [n_ctx, n_state],
            "encoder.ln_post.weight": [n_state], "encoder.ln_post.bias": [n_state]}
    for i in range(n_layer):
        b = f"encoder.blocks.{i}."
        for lin in ("query", "key", "value", "out"):
            keys[f"{b}attn.{lin}.weight"] = [n_state, n_state]
            if lin != "key":
                keys[f"{b}attn.{lin}.bias"] = [n_state]
        keys.update({f"{b}mlp.0.weight": [4 * n_state, n_state], f"{b}mlp.0.bias": [4 * n_state],
                     f"{b}mlp.2.weight": [n_state, 4 * n_state], f"{b}mlp.2.bias": [n_state]})
        for ln in ("attn_ln", "mlp_ln"):
            keys[f"{b}{ln}.weight"] = [n_state]
            keys[f"{b}{ln}.bias"] = [n_state]
    return keys


def test_whisper_tiny_table_fills_our_speech_encoder():
    keys = openai_whisper_keys(384, 4, 80, 1500)
    keys["decoder.token_embedding.weight"] = [51865, 384]  # the decoder is dropped on purpose
    report = new_report()
    src = meta_source("whisper_tiny.pt", keys, tables.WHISPER, report)
    fill_part("speech_encoder", on_meta(SpeechEncoder, named.echomimic_v1()["speech_encoder"]), [lambda: src], report)
    assert report.parts["speech_encoder"].left_at_init == [] and not src.tensors
    assert report.dropped["whisper_tiny.pt"]["count"] == 1


# -- tiny sources in the published layout --------------------------------------------------------------------

WHISPER_TINY_TINY = {"d_model": 16, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
                     "num_mel_bins": 80, "max_source_positions": 1500, "decoder_layers": 1,
                     "decoder_attention_heads": 2, "decoder_ffn_dim": 64, "vocab_size": 51865}
WAV2VEC2_TINY = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
                 "conv_dim": [8, 8], "conv_kernel": [10, 3], "conv_stride": [5, 2], "num_conv_pos_embeddings": 16,
                 "num_conv_pos_embedding_groups": 2, "vocab_size": 32}


def no_speed(denoiser: dict) -> dict:
    return {k: v for k, v in denoiser.items() if k not in ("num_speed_buckets", "speed_embedding_dim")}


def tiny_echomimic_configs() -> dict:
    configs = named.tiny()
    configs.pop("small_decoder")
    configs["denoiser"] = no_speed(configs["denoiser"])
    configs["reference_net"] = reference_config(configs["denoiser"], cross_attention_dim=None)
    configs["speech_encoder"] = {"kind": "whisper", "encoder_config": WHISPER_TINY_TINY, "window_before": 1,
                                 "window_after": 2, "states_hz": 50.0}  # 4 × 2 states = 8 tokens × 16
    return configs


def tiny_hallo_configs() -> dict:
    configs = named.tiny_separate()
    configs.pop("small_decoder")
    configs["denoiser"] = no_speed(configs["denoiser"])
    configs["speech_encoder"] = {"kind": "wav2vec2", "encoder_config": WAV2VEC2_TINY, "window_before": 1,
                                 "window_after": 2, "states_hz": 0.0}  # window 4 × 2 layers × 16 = the projection
    return configs


OPENAI_NAMES = [  # transformers WhisperEncoder → openai/whisper (written independently of tables.WHISPER)
    (r"^encoder\.embed_positions\.weight$", "encoder.positional_embedding"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.q_proj\.", r"encoder.blocks.\1.attn.query."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.k_proj\.", r"encoder.blocks.\1.attn.key."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.v_proj\.", r"encoder.blocks.\1.attn.value."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"encoder.blocks.\1.attn.out."),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"encoder.blocks.\1.attn_ln."),
    (r"^encoder\.layers\.(\d+)\.fc1\.", r"encoder.blocks.\1.mlp.0."),
    (r"^encoder\.layers\.(\d+)\.fc2\.", r"encoder.blocks.\1.mlp.2."),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.", r"encoder.blocks.\1.mlp_ln."),
    (r"^encoder\.layer_norm\.", "encoder.ln_post."),
]


def to_openai(key: str) -> str:
    for pattern, repl in OPENAI_NAMES:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key, count=1)
    return key


def write_echomimic_sources(root: Path, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Tiny EchoMimic files in ``root`` (four .pth + *_acc variants, whisper .pt, vae/); returns our state dicts."""
    configs = tiny_echomimic_configs()
    comps = build_components(configs, InferenceSettings(), seed=seed)
    ours = {p: {k: v.clone() for k, v in getattr(comps, p).state_dict().items()}
            for p in ("denoiser", "reference_net", "face_locator", "speech_encoder")}
    root.mkdir(parents=True)
    den = ours["denoiser"]
    for suffix, scale in (("", 1.0), ("_acc", -1.0)):  # acc files: same keys, other values
        torch.save({k: v * scale for k, v in den.items() if ".motion_modules." not in k},
                   root / f"denoising_unet{suffix}.pth")
        torch.save({k: v * scale for k, v in den.items() if ".motion_modules." in k}, root / f"motion_module{suffix}.pth")
    torch.save(ours["reference_net"], root / "reference_unet.pth")
    torch.save(ours["face_locator"], root / "face_locator.pth")
    whisper = {to_openai(k): v.half() for k, v in ours["speech_encoder"].items()}
    whisper["decoder.token_embedding.weight"] = torch.randn(8, 16).half()
    whisper["decoder.blocks.0.attn.query.weight"] = torch.randn(16, 16).half()
    dims = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 16, "n_audio_head": 2, "n_audio_layer": 1,
            "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 16, "n_text_head": 2, "n_text_layer": 1}
    torch.save({"dims": dims, "model_state_dict": whisper}, root / "whisper_tiny.pt")
    comps.vae.save_pretrained(root / "vae")
    return ours


def write_hallo_sources(root: Path, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Tiny Hallo sources: prefixed float16 ``hallo/net.pth``, an old-style wav2vec2 folder, vae/."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    configs = tiny_hallo_configs()
    comps = build_components(configs, InferenceSettings(audio_mode="separate"), seed=seed)
    parts = ("denoiser", "reference_net", "face_locator", "image_projection", "audio_projection")
    ours = {p: {k: v.half().float() for k, v in getattr(comps, p).state_dict().items()} for p in parts}
    prefix = {part: p for p, part in tables.HALLO_PREFIXES.items()}
    net = {prefix[p] + k: v.half() for p in parts for k, v in ours[p].items()}
    (root / "hallo").mkdir(parents=True)
    torch.save(net, root / "hallo" / "net.pth")
    # wav2vec2-base-960h layout: Wav2Vec2ForCTC (``wav2vec2.*`` + ``lm_head``), weight-norm as weight_g/weight_v,
    # pickled pytorch_model.bin.
    torch.manual_seed(seed)
    ctc = Wav2Vec2ForCTC(Wav2Vec2Config(**WAV2VEC2_TINY)).eval()
    sd = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                             "weight_v"): v
          for k, v in ctc.state_dict().items()}
    assert any(k.endswith("weight_g") for k in sd) and any(k.startswith("lm_head.") for k in sd)
    (root / "wav2vec2").mkdir()
    ctc.config.to_json_file(root / "wav2vec2" / "config.json")
    torch.save(sd, root / "wav2vec2" / "pytorch_model.bin")
    ctc.save_pretrained(root / "wav2vec2_safetensors")  # today's transformers layout
    ours["speech_encoder"] = {"encoder." + k[len("wav2vec2."):]: v for k, v in ctc.state_dict().items()
                              if k.startswith("wav2vec2.") and "masked_spec_embed" not in k}
    comps.vae.save_pretrained(root / "vae")
    return ours


@pytest.fixture(scope="module")
def echomimic_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("echomimic") / "src"
    return root, write_echomimic_sources(root, seed=3)


@pytest.fixture(scope="module")
def hallo_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("hallo") / "src"
    return root, write_hallo_sources(root, seed=4)


def assert_weights(folder: Path, ours: dict[str, dict[str, torch.Tensor]], scale_denoiser: float = 1.0):
    comps = load_checkpoint(folder)  # strict: every part, every key, parts fit each other
    for part, sd in ours.items():
        loaded = getattr(comps, part).state_dict()
        for key, value in sd.items():
            expected = value * scale_denoiser if part == "denoiser" else value
            torch.testing.assert_close(loaded[key].float(), expected.float(), atol=1e-3, rtol=1e-3,
                                       msg=f"{part}.{key}")
    return comps


def render(folder: Path, fps_frames: int = 6) -> np.ndarray:
    pipe = EmoPipeline.from_checkpoint(str(folder))
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    portrait = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    t = np.arange(int(16000 * fps_frames / pipe.settings.fps)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    out = pipe(portrait, audio, num_inference_steps=1, clip_frames=4, generator=torch.Generator().manual_seed(0))
    assert out.frames.shape[1:] == (64, 64, 3) and len(out.frames) >= fps_frames - 1
    return out.frames


def test_echomimic_tiny_import_end_to_end(echomimic_src, tmp_path):
    src, ours = echomimic_src
    out = tmp_path / "ckpt"
    report = import_echomimic(src, out, vae=src / "vae", whisper=src / "whisper_tiny.pt",
                              configs=tiny_echomimic_configs(), speed_buckets=3, progress=False)
    # EMO-only speed layers listed and kept at their initialisation (speed_proj zero: no effect).
    left = report.left_at_init()
    assert left and all(re.search(r"speed_(embedding|proj)", k) for k in left)
    saved = json.loads((out / REPORT_FILE).read_text())
    assert saved["dropped"][str(src / "whisper_tiny.pt")]["count"] == 2
    assert saved["parts"]["denoiser"]["left_at_init"] == report.parts["denoiser"].left_at_init
    index = json.loads((out / "model_index.json").read_text())
    expected = {"num_inference_steps": 30, "guidance_scale": 2.5, "fps": 24, "audio_mode": "inline",
                "clip_frames": 12, "motion_frames": 0, "sample_size": 64, "step_rule": "scheduler",
                "initial_noise_clamp": 1.5, "context_overlap": 3}
    assert {k: index["inference"][k] for k in expected} == expected
    comps = assert_weights(out, ours)
    assert comps.denoiser.config.num_speed_buckets == 3
    assert all(float(p.detach().abs().max()) == 0 for n, p in comps.denoiser.named_parameters() if "speed_proj" in n)
    sched = comps.scheduler.config
    assert (sched.prediction_type, sched.rescale_betas_zero_snr, sched.timestep_spacing) == \
        ("v_prediction", True, "trailing")
    frames = render(out)
    assert np.isfinite(frames.astype(np.float32)).all()
    assert not any(p.name.startswith(".ckpt") for p in tmp_path.iterdir())


def cli_args(argv: list[str]) -> argparse.Namespace:
    from emo_stream.cli.import_weights import add_import_parser

    parser = argparse.ArgumentParser(prog="emo-stream")
    add_import_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def write_configs(path: Path, configs: dict) -> Path:
    path.write_text(json.dumps(configs))
    return path


def test_echomimic_acc_through_the_cli_handler(echomimic_src, tmp_path, capsys):
    src, ours = echomimic_src
    out = tmp_path / "acc"
    args = cli_args(["import", "echomimic", "--src", str(src), "--acc", "--vae", str(src / "vae"), "--whisper",
                     str(src / "whisper_tiny.pt"), "--out", str(out), "--quiet",
                     "--configs", str(write_configs(tmp_path / "c.json", tiny_echomimic_configs()))])
    assert args.func(args) == 0
    assert "0 left at initialisation" in capsys.readouterr().err
    index = json.loads((out / "model_index.json").read_text())
    inference = index["inference"]
    assert (inference["num_inference_steps"], inference["guidance_scale"], inference["step_rule"],
            inference["initial_noise_clamp"], inference["context_overlap"]) == (6, 1.0, "echomimic_acc", 1.5, 3)
    assert index["_imported_from"]["variant"] == "acc"
    assert_weights(out, ours, scale_denoiser=-1.0)  # the *_acc files' values


def test_hallo_tiny_import_end_to_end_and_cli(hallo_src, tmp_path):
    src, ours = hallo_src
    out = tmp_path / "hallo_ckpt"
    report = import_hallo(src, out, vae=src / "vae", wav2vec2=src / "wav2vec2", configs=tiny_hallo_configs(),
                          progress=False)
    assert report.left_at_init() == []
    assert str(src / "wav2vec2" / "pytorch_model.bin") in report.dropped  # lm_head
    index = json.loads((out / "model_index.json").read_text())
    assert {k: index["inference"][k] for k in ("num_inference_steps", "guidance_scale", "fps", "audio_mode",
                                                "motion_frames")} == \
        {"num_inference_steps": 40, "guidance_scale": 3.5, "fps": 25, "audio_mode": "separate", "motion_frames": 2}
    assert_weights(out, ours)
    render(out)
    # Offline, a file's tokens come from one wav2vec2 pass over it, zero-padded after normalisation to whole
    # 16-frame clips as Hallo's inference pads it (10 frames: 6 more, 3,840 zero samples; 16: none), and the
    # render takes the checkpoint's 16-frame clips.
    from emo_stream.animators.emo import EmoAnimator

    animator = EmoAnimator.from_checkpoint(out, size=64, realtime=False, warmup=False)
    assert animator.clip_frames == 16
    calls = []
    animator.pipe.encode_audio = lambda wave, frames, fps, **k: calls.append((len(wave), frames, k)) or \
        torch.zeros(1, frames, 1, 1)
    for frames in (10, 16):
        animator.pipe.encode_whole(np.zeros(frames * 640 - 100, np.float32), frames, 16, 25)
    assert calls == [(6_300, 16, {"trailing_zeros": 3_840}), (10_140, 16, {"trailing_zeros": 0})]
    args = cli_args(["import", "hallo", "--src", str(src / "hallo" / "net.pth"), "--vae", str(src / "vae"),
                     "--wav2vec2", str(src / "wav2vec2_safetensors"), "--out", str(tmp_path / "via_cli"), "--quiet",
                     "--dtype", "float16", "--configs", str(write_configs(tmp_path / "c.json", tiny_hallo_configs()))])
    assert args.func(args) == 0
    via_cli = load_checkpoint(tmp_path / "via_cli", dtype=torch.float16)
    assert via_cli.denoiser.dtype == torch.float16
    for key, value in ours["speech_encoder"].items():
        torch.testing.assert_close(via_cli.speech_encoder.state_dict()[key], value, msg=key)


# -- refusals ----------------------------------------------------------------------------------------------

def test_legacy_pickles_load_too(echomimic_src, tmp_path):
    """Pre-zip torch.save files (no memory map) are read as well, still weights-only."""
    src, ours = echomimic_src
    legacy = tmp_path / "legacy"
    shutil.copytree(src, legacy)
    for name in ("face_locator.pth", "denoising_unet.pth"):
        _legacy_format(legacy / name)
    import_echomimic(legacy, tmp_path / "out", vae=legacy / "vae", whisper=legacy / "whisper_tiny.pt",
                     configs=tiny_echomimic_configs(), progress=False)
    assert_weights(tmp_path / "out", {"face_locator": ours["face_locator"], "denoiser": ours["denoiser"]})


class Foreign:
    """A class a weights-only unpickler must refuse."""


def _foreign(path: Path) -> str:
    torch.save({"conv_in.weight": torch.zeros(1), "extra": Foreign()}, path)
    return "tests.test_importers.Foreign"


def _legacy_format(path: Path) -> str:
    torch.save(torch.load(path, weights_only=True), path, _use_new_zipfile_serialization=False)
    return ""


def _whisper_heads(path: Path) -> str:
    obj = torch.load(path, weights_only=True)
    obj["dims"]["n_audio_head"] = 4
    torch.save(obj, path)
    return "n_audio_head"


def _drop_key(path: Path) -> str:
    sd = torch.load(path, weights_only=True)
    key = sorted(sd)[3]
    del sd[key]
    torch.save(sd, path)
    return key


def _extra_key(path: Path) -> str:
    sd = torch.load(path, weights_only=True)
    sd["conv_out.weight"] = torch.zeros(4, 32, 3, 3)
    torch.save(sd, path)
    return "conv_out.weight"


def _bad_shape(path: Path) -> str:
    sd = torch.load(path, weights_only=True)
    key = sorted(k for k in sd if k.endswith("weight"))[0]
    sd[key] = torch.zeros(*sd[key].shape[:-1], sd[key].shape[-1] + 1)
    torch.save(sd, path)
    return key


@pytest.mark.parametrize(("file", "spoil", "words"), [
    ("face_locator.pth", _foreign, "refused"),
    ("reference_unet.pth", _drop_key, "missing key"),
    ("reference_unet.pth", _extra_key, "unexpected key"),
    ("face_locator.pth", _bad_shape, "has shape"),
    ("motion_module.pth", _drop_key, "missing key"),
    ("whisper_tiny.pt", _foreign, "refused"),
    ("whisper_tiny.pt", _whisper_heads, "dims.n_audio_head = 4"),
])
def test_bad_sources_are_refused_and_nothing_is_written(echomimic_src, tmp_path, file, spoil, words):
    src, _ = echomimic_src
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    named_key = spoil(bad / file)
    out = tmp_path / "out"
    with pytest.raises(EmoStreamError) as info:
        import_echomimic(bad, out, vae=bad / "vae", whisper=bad / "whisper_tiny.pt",
                         configs=tiny_echomimic_configs(), progress=False)
    message = str(info.value)
    assert isinstance(info.value, CheckpointError)
    assert words in message and named_key in message, message
    if spoil is _foreign or file != "motion_module.pth":
        assert file in message, message
    assert "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # no --out, no temp folder


def test_hallo_unknown_prefix_and_existing_out_are_refused(hallo_src, tmp_path):
    src, _ = hallo_src
    net = torch.load(src / "hallo" / "net.pth", weights_only=True)
    net["pose_guider.conv_in.weight"] = torch.zeros(1)
    torch.save(net, tmp_path / "net.pth")
    with pytest.raises(CheckpointError, match=r"net\.pth: unexpected key 'pose_guider\.conv_in\.weight'"):
        import_hallo(tmp_path / "net.pth", tmp_path / "out", vae=src / "vae", wav2vec2=src / "wav2vec2",
                     configs=tiny_hallo_configs(), progress=False)
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    with pytest.raises(CheckpointError, match="already exists"):
        import_hallo(src, tmp_path / "out", vae=src / "vae", wav2vec2=src / "wav2vec2",
                     configs=tiny_hallo_configs(), progress=False)


def test_cli_main_prints_one_error_line(echomimic_src, tmp_path, monkeypatch, capsys):
    """Through the engine's command line (``python -m emo_stream import ...``)."""
    from emo_stream import cli
    from emo_stream.cli import runner

    monkeypatch.setattr(runner, "quiet_native_stderr", lambda: None)
    src, _ = echomimic_src
    rc = cli.main(["import", "echomimic", "--src", str(tmp_path / "nowhere"), "--vae", str(src / "vae"),
                   "--whisper", str(src / "whisper_tiny.pt"), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == cli.EXIT_USER_ERROR
    assert err == [f"error: --src: not found: {tmp_path / 'nowhere'}"]
    assert not (tmp_path / "out").exists()


def test_absent_inputs_fail_before_any_work(echomimic_src, tmp_path):
    src, _ = echomimic_src
    configs = tiny_echomimic_configs()
    configs.pop("speech_encoder")
    cases = [
        (dict(vae=tmp_path / "novae", whisper=src / "whisper_tiny.pt"), "--vae: folder not found"),
        (dict(vae=src / "vae", whisper=tmp_path / "no.pt"), "--whisper: file not found"),
        (dict(vae=src / "vae", whisper=src / "whisper_tiny.pt", configs=configs), "no config for part(s) speech_encoder"),
        (dict(vae=src / "vae", whisper=src / "whisper_tiny.pt", acc=True, configs={
            **tiny_echomimic_configs(), "face_locator": {"bogus": 1}}), "part 'face_locator' cannot be built"),
    ]
    for kwargs, words in cases:
        kwargs.setdefault("configs", tiny_echomimic_configs())
        with pytest.raises(CheckpointError) as info:
            import_echomimic(src, tmp_path / "out", progress=False, **kwargs)
        assert words in str(info.value)
        assert list(tmp_path.iterdir()) == []


def test_offline_render_of_an_echomimic_checkpoint_uses_the_sources_windows(echomimic_src, tmp_path, monkeypatch):
    """``emo-stream render`` renders EchoMimic the way its source does: the whole video in context windows,
    with its own 30 DDIM steps and guidance (offline never trades quality for time)."""
    import av

    from emo_stream.animators.emo import EmoAnimator
    from emo_stream.render import RenderOptions, render_file
    from tests import media

    src, _ = echomimic_src
    out = tmp_path / "ckpt"
    import_echomimic(src, out, vae=src / "vae", whisper=src / "whisper_tiny.pt", configs=tiny_echomimic_configs(),
                     progress=False)
    seen = {}
    whole_video = EmoAnimator.whole_video

    def spy(self, state, wave):
        seen.update(steps=self.steps, scheduler=self.scheduler_name, guidance=self.guidance_scale, samples=wave.size)
        yield from whole_video(self, state, wave)

    monkeypatch.setattr(EmoAnimator, "whole_video", spy)
    calls = []
    denoise_video = EmoPipeline.denoise_video
    monkeypatch.setattr(EmoPipeline, "denoise_video",
                        lambda self, *a, **k: calls.append(1) or denoise_video(self, *a, **k))
    wav = media.sox("tone-0.8s.wav", "-q", "-n", "-r", "16000", "-c", "1", "-b", "16", "{out}", "synth", "0.8",
                    "sine", "220")
    video = tmp_path / "out.mp4"
    summary = render_file(media.save_png(media.astronaut(), "astronaut.png"), wav, video,
                          RenderOptions(size=64, backend="emo", checkpoint=out))
    assert calls == [1] and seen == {"steps": 30, "scheduler": "DDIMScheduler", "guidance": 2.5,
                                     "samples": 12_800}
    # As many frames as EchoMimic's feature2chunks makes for 0.8 s (40 whisper states): until a frame's centre is
    # past the last state, ceil(41 × 25 / 50) + 1 = 22, two past the audio's 20.
    assert summary.frames == 22
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 22
