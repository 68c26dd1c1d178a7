"""EMO checkpoints: a folder of parts named by ``model_index.json``, like a diffusers pipeline folder.

Layout::

    model_index.json          parts (``[library, class]`` or null) + "inference" settings
    reference_net/            config.json + diffusion_pytorch_model.safetensors
    denoiser/  face_locator/  speech_encoder/  vae/  [audio_projection/  image_projection/  small_decoder/]
    scheduler/                scheduler_config.json

Only the classes in ``PART_CLASSES`` are accepted (a checkpoint never makes us import arbitrary code), and
every failure — a missing folder, a misnamed class, absent or mismatched weights, parts that do not fit each
other — is a ``CheckpointError`` that names the part.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from emo_stream.errors import CheckpointError
from emo_stream.models.audio_projection import AudioProjection
from emo_stream.models.denoiser import EmoDenoiser
from emo_stream.models.face_locator import FaceLocator
from emo_stream.models.image_projection import ImageProjection
from emo_stream.models.reference_net import ReferenceNet
from emo_stream.models.schedulers import SCHEDULERS, STEP_RULES
from emo_stream.models.small_decoder import SmallDecoder
from emo_stream.models.speech_encoder import SpeechEncoder

logger = logging.getLogger(__name__)

INDEX_FILE = "model_index.json"
FORMAT_VERSION = 1

# part -> (allowed [library, class] pairs, required)
PART_CLASSES: dict[str, tuple[dict[tuple[str, str], type[Any]], bool]] = {
    "reference_net": ({("emo_stream.models", "ReferenceNet"): ReferenceNet}, True),
    "denoiser": ({("emo_stream.models", "EmoDenoiser"): EmoDenoiser}, True),
    "face_locator": ({("emo_stream.models", "FaceLocator"): FaceLocator}, True),
    "audio_projection": ({("emo_stream.models", "AudioProjection"): AudioProjection}, False),
    "image_projection": ({("emo_stream.models", "ImageProjection"): ImageProjection}, False),
    "speech_encoder": ({("emo_stream.models", "SpeechEncoder"): SpeechEncoder}, True),
    "vae": ({("diffusers", "AutoencoderKL"): AutoencoderKL}, True),
    "small_decoder": ({("emo_stream.models", "SmallDecoder"): SmallDecoder}, False),
    "scheduler": ({("diffusers", name): cls for name, cls in SCHEDULERS.items()}, True),
}


GENERATE_REGIONS = ("frame", "face", "lower_face")


@dataclass
class InferenceSettings:
    """How a checkpoint is meant to be sampled (the ``inference`` entry of ``model_index.json``).

    Attributes:
        num_inference_steps: sampler steps (EchoMimic 30, acc 6; Hallo 40).
        guidance_scale: classifier-free guidance on reference + audio (EchoMimic 2.5, Hallo 3.5, distilled 1.0).
        fps: video frame rate the audio windows are cut for (EchoMimic 24, Hallo 25).
        audio_mode: the denoiser's audio slot (``inline`` / ``separate``), repeated here for readers.
        sample_size: output height = width in pixels.
        clip_frames: frames generated per denoiser call.
        motion_frames: frames of the previous clip carried into the next (0: none).
        noise_correlation: AR(1) correlation of the initial noise across consecutive frames, carried across
            clips (0: independent noise, what the relatives were trained with).
        step_rule: how the denoiser output reaches ``scheduler.step`` (``scheduler``: as is; ``echomimic_acc``:
            v → x0 → pseudo-velocity towards t = -1, EchoMimic acc's pipeline; see ``schedulers.STEP_RULES``).
        initial_noise_clamp: clamp the initial noise to ±this (EchoMimic: 1.5); 0 = no clamp.
        context_overlap: offline only, for checkpoints without motion frames: denoise the whole video at once in
            ``clip_frames`` context windows overlapping by this many frames, averaged per step and shifted by
            2 frames each step (EchoMimic: 12 frames, overlap 3); 0 = clip by clip.
        reference_strength: where sampling starts: 1 = pure noise (EMO and its relatives); below 1 every frame
            starts from the portrait's latents noised to this fraction of the schedule (img2img), so the model
            only has to add the motion; small models trained here need it to keep the portrait's look.
        decode_residual: decode each frame as the portrait's own pixels plus the decoded *change* from the
            portrait's latents (``decode(z) - decode(z_portrait)``): what does not move stays exactly the photo,
            and a small autoencoder's blur and colour loss cancel out where nothing changed (the paste-back of
            MuseTalk and LivePortrait, over the whole frame). Off for EMO and its relatives.
        generate_region: what the model generates: ``frame`` (everything: EMO); ``lower_face`` (the lower half
            of the face box and a little below it; the rest is the portrait's own latents, noised to each step's
            level and put back after every step, as inpainting does: Wav2Lip and MuseTalk generate only that
            region); ``face`` (the face box).
    """

    num_inference_steps: int = 30
    guidance_scale: float = 2.5
    fps: int = 25
    audio_mode: str = "inline"
    sample_size: int = 512
    clip_frames: int = 12
    motion_frames: int = 2
    noise_correlation: float = 0.0
    step_rule: str = "scheduler"
    initial_noise_clamp: float = 0.0
    context_overlap: int = 0
    reference_strength: float = 1.0
    decode_residual: bool = False
    generate_region: str = "frame"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InferenceSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CheckpointError(f"model_index.json: unknown inference setting(s) {', '.join(unknown)}")
        settings = cls(**data)
        if settings.step_rule not in STEP_RULES:
            raise CheckpointError(f"model_index.json: inference.step_rule {settings.step_rule!r} is not one of "
                                  f"{', '.join(STEP_RULES)}")
        if settings.initial_noise_clamp < 0 or not 0 <= settings.context_overlap < settings.clip_frames:
            raise CheckpointError("model_index.json: inference.initial_noise_clamp must be >= 0 and "
                                  "inference.context_overlap in [0, clip_frames)")
        if settings.generate_region not in GENERATE_REGIONS:
            raise CheckpointError(f"model_index.json: inference.generate_region must be one of "
                                  f"{', '.join(GENERATE_REGIONS)}")
        if not 0.0 < settings.reference_strength <= 1.0:
            raise CheckpointError("model_index.json: inference.reference_strength must be in (0, 1]")
        return settings


@dataclass
class EmoComponents:
    """The loaded parts of one EMO checkpoint."""

    reference_net: ReferenceNet
    denoiser: EmoDenoiser
    face_locator: FaceLocator
    speech_encoder: SpeechEncoder
    vae: AutoencoderKL
    scheduler: SchedulerMixin
    audio_projection: AudioProjection | None = None
    image_projection: ImageProjection | None = None
    small_decoder: SmallDecoder | None = None
    settings: InferenceSettings = field(default_factory=InferenceSettings)

    def parts(self) -> dict[str, Any]:
        """Part name → object (None for absent optional parts), in ``PART_CLASSES`` order."""
        return {name: getattr(self, name) for name in PART_CLASSES}

    def num_parameters(self) -> dict[str, int]:
        """Parameters per model part (schedulers and absent parts excluded)."""
        return {name: sum(p.numel() for p in part.parameters())
                for name, part in self.parts().items() if isinstance(part, torch.nn.Module)}


def save_checkpoint(components: EmoComponents, folder: str | Path, safe_serialization: bool = True) -> Path:
    """Write ``components`` as a checkpoint folder (safetensors weights + ``model_index.json``)."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    import diffusers

    index: dict[str, Any] = {"_class_name": "EmoPipeline", "_format_version": FORMAT_VERSION,
                             "_diffusers_version": diffusers.__version__}
    for name, part in components.parts().items():
        if part is None:
            index[name] = None
            continue
        library = "diffusers" if type(part).__module__.startswith("diffusers") else "emo_stream.models"
        index[name] = [library, type(part).__name__]
        if isinstance(part, SchedulerMixin):
            part.save_pretrained(root / name)
        else:
            part.save_pretrained(root / name, safe_serialization=safe_serialization)
    index["inference"] = dataclasses.asdict(components.settings)
    (root / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return root


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> EmoComponents:
    """Load an EMO checkpoint folder.

    Args:
        folder: the checkpoint folder (holding ``model_index.json``).
        device: where to put the models.
        dtype: model dtype (the speech encoder and the schedulers keep float32 where it matters).

    Raises:
        CheckpointError: the folder, its index or a part is missing, misnamed, unreadable or does not fit.
    """
    root = Path(folder).expanduser()
    index = _read_index(root)
    unknown = sorted(k for k in index if not k.startswith("_") and k not in PART_CLASSES and k != "inference")
    if unknown:
        raise CheckpointError(f"{root / INDEX_FILE}: unknown part(s) {', '.join(unknown)} "
                              f"(known: {', '.join(PART_CLASSES)})")
    settings = InferenceSettings.from_dict(index.get("inference") or {})

    loaded: dict[str, Any] = {}
    for name, (classes, required) in PART_CLASSES.items():
        entry = index.get(name)
        if entry is None:
            if required:
                raise CheckpointError(f"{root}: part '{name}' is missing from {INDEX_FILE}")
            loaded[name] = None
            continue
        loaded[name] = _load_part(root, name, entry, classes, device, dtype)

    components = EmoComponents(**loaded, settings=settings)
    _check_fit(components)
    return components


def load_part(folder: str | Path, name: str, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> Any:
    """One part of a checkpoint folder (e.g. ``vae``), of the class its index names, without the others."""
    root = Path(folder).expanduser()
    index = _read_index(root)
    if name not in PART_CLASSES or index.get(name) is None:
        raise CheckpointError(f"{root}: no part '{name}' in {INDEX_FILE}")
    return _load_part(root, name, index[name], PART_CLASSES[name][0], device, dtype)


def _read_index(root: Path) -> dict[str, Any]:
    """The checkpoint folder's ``model_index.json`` as a dict (CheckpointError for anything else)."""
    if not root.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {root}")
    index_path = root / INDEX_FILE
    if not index_path.is_file():
        raise CheckpointError(f"{root}: not an EMO checkpoint (no {INDEX_FILE})")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{index_path}: unreadable ({exc})") from None
    if not isinstance(index, dict):
        raise CheckpointError(f"{index_path}: expected a JSON object")
    return index


def _load_part(root: Path, name: str, entry: Any, classes: dict[tuple[str, str], type[Any]],
               device: str | torch.device, dtype: torch.dtype) -> Any:
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
        raise CheckpointError(f"part '{name}': expected [library, class] in {INDEX_FILE}, got {entry!r}")
    cls = classes.get((entry[0], entry[1]))
    if cls is None:
        allowed = ", ".join(f"{lib}.{c}" for lib, c in classes)
        raise CheckpointError(f"part '{name}': class {entry[0]}.{entry[1]} is not allowed here (expected {allowed})")
    path = root / name
    if not path.is_dir():
        raise CheckpointError(f"part '{name}': folder {path} not found")
    try:
        if issubclass(cls, SchedulerMixin):
            return cls.from_pretrained(path)
        # The speech front end (mel filters, wav2vec2 group norm) is kept in float32: it is cheap and
        # half precision costs accuracy there.
        part_dtype = torch.float32 if name == "speech_encoder" else dtype
        # Without accelerate diffusers cannot build on the meta device; say so once, not per part.
        low_mem = importlib.util.find_spec("accelerate") is not None
        # use_safetensors: never fall back to pickled .bin weights from a checkpoint folder.
        model = cls.from_pretrained(path, torch_dtype=part_dtype, local_files_only=True, low_cpu_mem_usage=low_mem,
                                    use_safetensors=True)
    except CheckpointError:
        raise
    except Exception as exc:  # diffusers raises OSError/ValueError/EnvironmentError/RuntimeError here
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        cause = " ".join(lines[:2])[:300] if lines else type(exc).__name__
        raise CheckpointError(f"part '{name}': cannot load {path} ({cause})") from None
    return model.to(device).eval()


def _check_fit(c: EmoComponents) -> None:
    """Parts built for each other: same UNet layout, audio tokens and latent sizes that line up."""
    d, r = c.denoiser.config, c.reference_net.config
    for key in ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "in_channels"):
        if list(_as_list(d[key])) != list(_as_list(r[key])):
            raise CheckpointError(f"part 'reference_net': {key} {r[key]} does not match the denoiser's {d[key]}")
    if c.face_locator.config.embedding_channels != d.block_out_channels[0]:
        raise CheckpointError(f"part 'face_locator': embedding_channels {c.face_locator.config.embedding_channels}"
                              f" != the denoiser's first width {d.block_out_channels[0]}")
    if c.vae.config.latent_channels != d.in_channels:
        raise CheckpointError(f"part 'vae': {c.vae.config.latent_channels} latent channels, the denoiser "
                              f"takes {d.in_channels}")
    enc = c.speech_encoder
    if d.audio_mode != "none":
        if c.audio_projection is not None:
            p = c.audio_projection.config
            if (p.window, p.num_layers, p.channels) != (enc.window, enc.num_states, enc.hidden_size):
                raise CheckpointError(f"part 'audio_projection': takes [{p.window}, {p.num_layers}, {p.channels}]"
                                      f" states, the speech encoder gives [{enc.window}, {enc.num_states}, "
                                      f"{enc.hidden_size}]")
            tokens = (p.context_tokens, p.output_dim)
        else:
            tokens = (enc.window * enc.num_states, enc.hidden_size)
        if tokens != (d.audio_tokens, d.audio_dim):
            raise CheckpointError(f"part 'denoiser': expects {d.audio_tokens} × {d.audio_dim} audio tokens, the "
                                  f"speech encoder{' + projection' if c.audio_projection else ''} gives "
                                  f"{tokens[0]} × {tokens[1]}")
    if c.settings.audio_mode != d.audio_mode:
        raise CheckpointError(f"model_index.json: inference.audio_mode {c.settings.audio_mode!r} != the "
                              f"denoiser's {d.audio_mode!r}")
    if d.cross_attention_dim is not None and d.audio_mode != "inline" and c.image_projection is None:
        raise CheckpointError("part 'image_projection': the denoiser's attn2 needs face tokens, but the "
                              "checkpoint has no image_projection")
    frames = c.settings.clip_frames + c.settings.motion_frames
    if d.use_motion_module and frames > d.motion_max_positions:
        raise CheckpointError(f"model_index.json: clip_frames + motion_frames = {frames} exceeds the temporal "
                              f"layers' {d.motion_max_positions} positions")


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]
