"""Import EchoMimic v1 / Hallo v1 weights into one EMO checkpoint folder, part by part.

Memory: one part is built and filled at a time, from one source file at a time (Hallo's ``net.pth`` is
memory-mapped when it is a zip-format file, so only the part being filled is paged in); each part is written
and freed before the next. Output: written into a temporary folder beside ``out`` and renamed at the end, so
a failed import leaves nothing at ``out``.

Safety: pickles are read with ``torch.load(weights_only=True)`` only; a file that needs any other global is
refused with a ``CheckpointError`` naming it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emo_stream.errors import CheckpointError
from emo_stream.importers import tables
from emo_stream.models import configs as named_configs
from emo_stream.models.checkpoint import FORMAT_VERSION, INDEX_FILE, PART_CLASSES, InferenceSettings

REPORT_FILE = "import_report.json"

# Sampler settings of the sources (docs/importing.md); the scheduler itself is make_scheduler's DDIM
# (v-prediction, zero-terminal-SNR rescale, trailing spacing, linear betas 0.00085–0.012) for all three.
ECHOMIMIC_SETTINGS = {"num_inference_steps": 30, "guidance_scale": 2.5, "fps": 24, "clip_frames": 12,
                      "motion_frames": 0, "initial_noise_clamp": 1.5, "context_overlap": 3}
ECHOMIMIC_ACC_SETTINGS = {**ECHOMIMIC_SETTINGS, "num_inference_steps": 6, "guidance_scale": 1.0,
                          "step_rule": "echomimic_acc"}
HALLO_SETTINGS = {"num_inference_steps": 40, "guidance_scale": 3.5, "fps": 25, "clip_frames": 16,
                  "motion_frames": 2}

# What the emo backend does differently from the source, stated in every import report, with its size where it
# was measured (bench/audio_parity.py; docs/importing.md says how). Reproduced, so not listed: the whisper path
# (30 s zero-padded blocks, the first n // 2 states of a block, the truncated frame centre int(i * 50 / fps), the
# frame count) and the context-window rotation of a one-window video; wav2vec2's normalisation, interpolation,
# layers and window, and Hallo's padding of a file to whole clips (tests/test_whisper_rules.py,
# tests/test_hallo_rules.py).
ECHOMIMIC_NOT_REPRODUCED = [
    "frame rate: 25 fps, the engine's clock (16 kHz must divide into it), where the source renders 24; the "
    "source's rules (frame centres, frame count, context windows) are applied at 25",
    "live streaming samples consecutive 12-frame clips with no context overlap across clip seams (the offline "
    "pipeline reproduces the source's whole-video 12-frame windows, overlap 3, shifted 2 frames per step)",
    "live streaming: whisper features from a bounded segment (2 s of past audio, the window's lookahead) placed at "
    "its offset in its 30 s block, not from the whole file: 1.2 % relative L2 from the whole-file features "
    "(whisper-tiny, random weights); offline renders use the whole file, as the source does",
    "offline: no cap on the length (the source renders at most its -L frames, 1,200 by default)",
    "audio decoding: PyAV to float at 16 kHz, where the source has the ffmpeg CLI write 16-bit PCM (its rounding: "
    "at most 1.5e-5 a sample)",
    "face-locator mask from our face detector's box instead of the source's MTCNN box"]
ECHOMIMIC_ACC_NOT_REPRODUCED = ECHOMIMIC_NOT_REPRODUCED
HALLO_NOT_REPRODUCED = [
    "no vocal separation: the source always runs its separator (Kim_Vocal_2) before wav2vec2, for inference and "
    "for its training data; with clean speech the round trip changes little, with music under the voice a lot "
    "(not measured: the separator's weights are not imported)",
    "live streaming: wav2vec2 features from a bounded segment (2 s of past audio, the window's lookahead), not from "
    "the whole file: 26.5 % relative L2 from the whole-file features (wav2vec2-base, random weights; its group norm, "
    "normalisation and attention read all of their input); offline renders use the whole file, padded to whole "
    "16-frame clips as the source pads it (that padding itself: 2.4 %)",
    "frame count: one frame per 40 ms, the last padded; the source's float ceil(samples / 16000 × 25) adds a frame "
    "for some exact multiples of 640 samples (925 of the 15,000 up to 10 minutes)",
    "face embedding: zeros unless the caller passes an insightface embedding (the import ships no face model)",
    "region masks: the lip region is approximated by the face region (no landmark-based lip mask)"]

@dataclass
class PartReport:
    filled: int = 0
    sources: list[str] = field(default_factory=list)
    left_at_init: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    """What an import read, dropped and left at initialisation (written as ``import_report.json``)."""

    family: str
    variant: str
    source: str
    settings: dict[str, Any]
    parts: dict[str, PartReport] = field(default_factory=dict)
    dropped: dict[str, dict[str, Any]] = field(default_factory=dict)  # file -> {"count", "reason"}
    not_reproduced: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def left_at_init(self) -> list[str]:
        return [f"{part}.{key}" for part, r in self.parts.items() for key in r.left_at_init]


# -- safe reading ------------------------------------------------------------------------------------------

def load_tensor_file(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` (memory-mapped for zip-format files); refusals name the file."""
    if not path.is_file():
        raise CheckpointError(f"source file not found: {path}")
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"the global {found.group(1)}" if found else "objects other than tensors"
        raise CheckpointError(f"{path}: refused: the pickle needs {what}; only plain tensor state dicts are "
                              "loaded (weights_only=True)") from None
    except Exception as exc:  # truncated zip, not a torch file, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{path}: not a readable torch state dict ({first})") from None


def state_dict_of(obj: Any, label: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{label}: expected a state dict (a dict of tensors), got {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{label}: entry {key!r} is not a named tensor ({type(value).__name__})")
    return obj


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{path}: not a readable safetensors file ({first})") from None


# -- one source file, routed -------------------------------------------------------------------------------

class Source:
    """One loaded source file, its keys routed to parts up front (an unknown key fails before any work)."""

    def __init__(self, label: str, tensors: dict[str, torch.Tensor], table: tables.KeyTable,
                 report: ImportReport) -> None:
        self.label = label
        self.tensors = tensors
        self.by_part: dict[str, list[tuple[str, str]]] = {}
        dropped = []
        for key in tensors:
            mapped = tables.map_or_fail(table, key, label)
            if mapped is None:
                dropped.append(key)
            else:
                self.by_part.setdefault(mapped[0], []).append((key, mapped[1]))
        for key in dropped:
            del self.tensors[key]
        if dropped:
            report.dropped[label] = {"count": len(dropped), "reason": table.drop_reason}

    def take(self, part: str) -> Iterator[tuple[str, str, torch.Tensor]]:
        """(source key, our key, tensor) for ``part``, each released from this source once taken."""
        for key, ours in self.by_part.pop(part, []):
            yield key, ours, self.tensors.pop(key)


def fill_part(part: str, model: torch.nn.Module, sources: list[Callable[[], Source]], report: ImportReport
              ) -> None:
    """Copy every routed source tensor into ``model`` (exact shapes); fail on any key left unexplained."""
    target = model.state_dict()
    filled: dict[str, str] = {}
    part_report = report.parts.setdefault(part, PartReport())
    for get_source in sources:
        source = get_source()
        part_report.sources.append(source.label)
        with torch.no_grad():
            for key, ours, tensor in source.take(part):
                dst = target.get(ours)
                if dst is None:
                    raise CheckpointError(f"{source.label}: unexpected key {key!r} (the {part} has no {ours!r})")
                if ours in filled:
                    raise CheckpointError(f"{source.label}: key {key!r} fills {part}.{ours} a second time "
                                          f"(already from {filled[ours]})")
                if tuple(tensor.shape) != tuple(dst.shape):
                    raise CheckpointError(f"{source.label}: key {key!r} has shape {list(tensor.shape)}, the "
                                          f"{part} needs {list(dst.shape)} for {ours!r}")
                if tensor.is_floating_point() != dst.is_floating_point():
                    raise CheckpointError(f"{source.label}: key {key!r} has dtype {tensor.dtype}, the {part} "
                                          f"needs {dst.dtype}")
                dst.copy_(tensor)
                filled[ours] = source.label
        del source
    missing = sorted(set(target) - set(filled))
    unexplained = [k for k in missing if not tables.is_emo_only(part, k)]
    if unexplained:
        files = ", ".join(part_report.sources)
        more = f" and {len(unexplained) - 1} more" if len(unexplained) > 1 else ""
        raise CheckpointError(f"{files}: missing key {unexplained[0]!r}{more} for the {part}")
    part_report.filled = len(filled)
    part_report.left_at_init = missing


# -- the import --------------------------------------------------------------------------------------------

class _Writer:
    """Writes parts into a temporary folder beside ``out``; ``commit`` renames it, ``abort`` removes it."""

    def __init__(self, out: Path, dtype: torch.dtype) -> None:
        self.out = out
        self.dtype = dtype
        if out.exists():
            raise CheckpointError(f"{out} already exists; choose a new --out folder")
        if not out.parent.is_dir():
            raise CheckpointError(f"output parent folder not found: {out.parent}")
        self.tmp = out.parent / f".{out.name}.importing-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self.index: dict[str, Any] = {}

    def write(self, name: str, part: Any) -> None:
        from diffusers.schedulers.scheduling_utils import SchedulerMixin

        library = "diffusers" if name in ("vae", "scheduler") else "emo_stream.models"
        self.index[name] = [library, type(part).__name__]
        if isinstance(part, SchedulerMixin):
            part.save_pretrained(self.tmp / name)
            return
        if name != "speech_encoder" and part.dtype != self.dtype:  # the speech encoder stays float32
            torch.nn.Module.to(part, self.dtype)  # (ModelMixin.to warns about fp32 modules; ours have none)
        part.save_pretrained(self.tmp / name, safe_serialization=True)

    def commit(self, settings: InferenceSettings, report: ImportReport) -> None:
        import diffusers

        index: dict[str, Any] = {"_class_name": "EmoPipeline", "_format_version": FORMAT_VERSION,
                                 "_diffusers_version": diffusers.__version__,
                                 "_imported_from": {"source": report.source, "variant": report.variant}}
        for name in PART_CLASSES:
            index[name] = self.index.get(name)
        index["inference"] = dataclasses.asdict(settings)
        (self.tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        (self.tmp / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        os.replace(self.tmp, self.out)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _build(name: str, config: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    (cls,) = PART_CLASSES[name][0].values()
    torch.manual_seed(seed)  # unfilled (EMO-only) weights: deterministic; the ones that matter start at zero
    try:
        return cls(**config).eval()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"--configs: part '{name}' cannot be built ({exc})") from None


def _load_vae(folder: Path, latent_channels: int, dtype: torch.dtype) -> torch.nn.Module:
    import importlib.util

    from diffusers import AutoencoderKL

    if not folder.is_dir():
        raise CheckpointError(f"--vae: folder not found: {folder}")
    subfolder = "vae" if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file() \
        else None
    try:
        vae = AutoencoderKL.from_pretrained(folder, subfolder=subfolder, local_files_only=True, torch_dtype=dtype,
                                            low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"--vae: cannot load a diffusers AutoencoderKL from {folder} ({first})") from None
    if vae.config.latent_channels != latent_channels:
        raise CheckpointError(f"--vae: {folder} has {vae.config.latent_channels} latent channels, the denoiser "
                              f"takes {latent_channels}")
    return vae.eval()


def _whisper_source(path: Path, encoder_config: dict[str, Any], report: ImportReport) -> Source:
    obj = load_tensor_file(path)
    label = str(path)
    if isinstance(obj, dict) and "model_state_dict" in obj:
        dims = obj.get("dims") or {}
        if not isinstance(dims, dict):
            raise CheckpointError(f"{label}: 'dims' is not a dict")
        from transformers import WhisperConfig

        ours = WhisperConfig(**encoder_config)
        for theirs_name, ours_name in tables.WHISPER_DIMS.items():
            if theirs_name in dims and dims[theirs_name] != getattr(ours, ours_name):
                raise CheckpointError(f"{label}: dims.{theirs_name} = {dims[theirs_name]}, the speech encoder "
                                      f"has {ours_name} = {getattr(ours, ours_name)}")
        obj = obj["model_state_dict"]
    return Source(label, state_dict_of(obj, label), tables.WHISPER, report)


def _wav2vec2_source(folder: Path, encoder_config: dict[str, Any], report: ImportReport) -> Source:
    if not folder.is_dir():
        raise CheckpointError(f"--wav2vec2: folder not found: {folder}")
    config_path = folder / "config.json"
    try:
        theirs = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path}: unreadable ({exc})") from None
    from transformers import Wav2Vec2Config

    ours = Wav2Vec2Config(**encoder_config)
    for name in tables.WAV2VEC2_CONFIG_CHECK:
        if name in theirs:
            a, b = theirs[name], getattr(ours, name)
            if (list(a) if isinstance(a, list | tuple) else a) != (list(b) if isinstance(b, list | tuple) else b):
                raise CheckpointError(f"{config_path}: {name} = {a}, the speech encoder has {b}")
    if (folder / "model.safetensors").is_file():
        path = folder / "model.safetensors"
        tensors = load_safetensors(path)
    elif (folder / "pytorch_model.bin").is_file():
        path = folder / "pytorch_model.bin"
        tensors = state_dict_of(load_tensor_file(path), str(path))
    else:
        raise CheckpointError(f"--wav2vec2: {folder} has neither model.safetensors nor pytorch_model.bin "
                              "(sharded weights are not supported)")
    return Source(str(path), tensors, tables.WAV2VEC2, report)


def import_checkpoint(family: str, src: str | Path, out: str | Path, *, vae: str | Path, speech: str | Path,
                      acc: bool = False, configs: dict[str, dict[str, Any]] | None = None,
                      speed_buckets: int = 0, dtype: torch.dtype = torch.float32,
                      progress: bool = True) -> ImportReport:
    """Import EchoMimic v1 (``family="echomimic"``) or Hallo v1 (``"hallo"``) into the checkpoint ``out``.

    Args:
        src: the folder with the published ``.pth`` files (EchoMimic: ``denoising_unet[_acc].pth``,
            ``motion_module[_acc].pth``, ``reference_unet.pth``, ``face_locator.pth``; Hallo: ``net.pth``, or
            the ``hallo`` folder that holds it, or the file itself).
        vae: a diffusers ``AutoencoderKL`` folder (sd-vae-ft-mse).
        speech: EchoMimic: OpenAI-format ``whisper_tiny.pt``; Hallo: a transformers wav2vec2-base folder.
        acc: EchoMimic's step-distilled ``*_acc.pth`` (6 steps, CFG 1.0).
        configs: part configs (default: the family's full-size ``emo_stream.models.configs``).
        speed_buckets: add EMO's (zero-initialised) head-speed conditioning with this many buckets.
        dtype: dtype of the written UNets/VAE/projections (the speech encoder stays float32).

    Raises:
        CheckpointError: a source that is missing, unsafe, has an unexpected/missing key or a wrong shape.
    """
    if family not in ("echomimic", "hallo"):
        raise CheckpointError(f"unknown source family {family!r} (echomimic or hallo)")
    if acc and family != "echomimic":
        raise CheckpointError("--acc exists for EchoMimic only")
    src, out, vae, speech = Path(src).expanduser(), Path(out).expanduser(), Path(vae).expanduser(), \
        Path(speech).expanduser()
    configs = {k: dict(v) if isinstance(v, dict) else v
               for k, v in (configs or getattr(named_configs, f"{family}_v1")()).items()}
    needed = ["denoiser", "reference_net", "face_locator", "speech_encoder", "vae"] + \
        (["image_projection", "audio_projection"] if family == "hallo" else [])
    absent = [name for name in needed if not isinstance(configs.get(name), dict)]
    if absent:
        raise CheckpointError(f"--configs: no config for part(s) {', '.join(absent)}")
    if speed_buckets:
        configs["denoiser"].update(num_speed_buckets=speed_buckets,
                                   speed_embedding_dim=configs["denoiser"]["block_out_channels"][0])
    denoiser_cfg = configs["denoiser"]
    vae_scale = 2 ** (len(configs["vae"].get("block_out_channels", named_configs.SD_VAE["block_out_channels"])) - 1)
    settings = InferenceSettings(**(ECHOMIMIC_ACC_SETTINGS if acc else ECHOMIMIC_SETTINGS if family == "echomimic"
                                    else HALLO_SETTINGS),
                                 audio_mode=denoiser_cfg.get("audio_mode", "inline"),
                                 sample_size=denoiser_cfg.get("sample_size", 64) * vae_scale)
    report = ImportReport(
        family=family, variant="acc" if acc else "default",
        source="antgroup/echomimic (BadToBest/EchoMimic)" if family == "echomimic"
        else "fudan-generative-vision/hallo (fudan-generative-ai/hallo)",
        settings=dataclasses.asdict(settings),
        not_reproduced=(ECHOMIMIC_ACC_NOT_REPRODUCED if acc else ECHOMIMIC_NOT_REPRODUCED)
        if family == "echomimic" else HALLO_NOT_REPRODUCED)

    if not src.exists():
        raise CheckpointError(f"--src: not found: {src}")
    # Fail before any heavy work on inputs that are plainly absent.
    if not vae.is_dir():
        raise CheckpointError(f"--vae: folder not found: {vae}")
    if family == "echomimic" and not speech.is_file():
        raise CheckpointError(f"--whisper: file not found: {speech}")
    if family == "hallo" and not speech.is_dir():
        raise CheckpointError(f"--wav2vec2: folder not found: {speech}")
    model_parts: list[tuple[str, list[Callable[[], Source]]]]
    if family == "echomimic":
        if not src.is_dir():
            raise CheckpointError(f"--src: {src} is not a folder")

        def file_source(part: str, name: str) -> Callable[[], Source]:
            def get() -> Source:
                path = src / name
                return Source(str(path), state_dict_of(load_tensor_file(path), str(path)),
                              tables.echomimic_table(part), report)
            return get

        suffix = "_acc" if acc else ""
        for names in tables.ECHOMIMIC_FILES.values():  # fail before any work when a file is absent
            for name in names:
                if not (src / name.format(acc=suffix)).is_file():
                    raise CheckpointError(f"--src: {src / name.format(acc=suffix)} not found")
        model_parts = [(part, [file_source(part, n.format(acc=suffix)) for n in names])
                       for part, names in tables.ECHOMIMIC_FILES.items()]
        model_parts.append(("speech_encoder", [lambda: _whisper_source(
            speech, configs["speech_encoder"]["encoder_config"], report)]))
    else:
        net_path = src / "hallo" / "net.pth" if (src / "hallo" / "net.pth").is_file() else \
            src / "net.pth" if src.is_dir() else src
        holder: dict[str, Source] = {}

        def net_source() -> Source:
            if "net" not in holder:
                holder["net"] = Source(str(net_path), state_dict_of(load_tensor_file(net_path), str(net_path)),
                                       tables.HALLO_NET, report)
            return holder["net"]

        model_parts = [(part, [net_source]) for part in ("face_locator", "image_projection", "audio_projection",
                                                          "reference_net", "denoiser")]
        model_parts.append(("speech_encoder", [lambda: _wav2vec2_source(
            speech, configs["speech_encoder"]["encoder_config"], report)]))

    from tqdm.auto import tqdm

    writer = _Writer(out, dtype)
    try:
        bar = tqdm(total=len(model_parts) + 2, desc=f"import {family}", unit="part", file=sys.stderr,
                   disable=not progress)
        with bar:
            for part, sources in model_parts:
                bar.set_postfix_str(part)
                model = _build(part, configs[part])
                fill_part(part, model, sources, report)
                writer.write(part, model)
                del model
                bar.update()
            if family == "hallo":
                leftover = {p: len(v) for p, v in holder["net"].by_part.items() if v}
                if leftover:  # a prefix routed to a part we do not build
                    raise CheckpointError(f"{net_path}: {sum(leftover.values())} keys for unused part(s) "
                                          f"{', '.join(leftover)}")
                holder.clear()
            bar.set_postfix_str("vae")
            writer.write("vae", _load_vae(vae, denoiser_cfg.get("in_channels", 4), dtype))
            bar.update()
            from emo_stream.models.schedulers import make_scheduler

            writer.write("scheduler", make_scheduler("DDIMScheduler"))
            bar.update()
        writer.commit(settings, report)
    except BaseException:
        writer.abort()
        raise
    return report


def import_echomimic(src: str | Path, out: str | Path, *, vae: str | Path, whisper: str | Path, acc: bool = False,
                     **kwargs: Any) -> ImportReport:
    """EchoMimic v1 (``--acc``: the 6-step distilled files) → an EMO checkpoint folder (see ``import_checkpoint``)."""
    return import_checkpoint("echomimic", src, out, vae=vae, speech=whisper, acc=acc, **kwargs)


def import_hallo(src: str | Path, out: str | Path, *, vae: str | Path, wav2vec2: str | Path,
                 **kwargs: Any) -> ImportReport:
    """Hallo v1 ``net.pth`` → an EMO checkpoint folder (see ``import_checkpoint``)."""
    return import_checkpoint("hallo", src, out, vae=vae, speech=wav2vec2, **kwargs)
