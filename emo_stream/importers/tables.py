"""Key tables: which source key goes to which part and key of our checkpoint (docs/importing.md).

Our UNets, face locator and projections are named like upstream, so those routes are a prefix strip with an
identity rename (the manifests in ``importers/manifests`` show no key that differs). The speech encoders are the
only real renames: OpenAI Whisper's own ``.pt`` naming → ``transformers.WhisperEncoder``, and old wav2vec2
weight-norm names → ``torch.nn.utils.parametrizations``.

A route maps ``prefix + rest`` to ``part``'s key ``target_prefix + rename(rest)``. Keys that match a ``drop``
pattern are read and discarded on purpose (Whisper's decoder, wav2vec2's CTC head); any other key that no
route takes is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from emo_stream.errors import CheckpointError


@dataclass(frozen=True)
class Route:
    """Source keys starting with ``prefix`` → ``part`` keys ``target_prefix + rename(rest)``."""

    prefix: str
    part: str
    target_prefix: str = ""
    renames: tuple[tuple[str, str], ...] = ()  # (regex on rest, replacement): the first match is applied


@dataclass(frozen=True)
class KeyTable:
    """The routes and deliberate drops of one source file."""

    routes: tuple[Route, ...]
    drops: tuple[str, ...] = ()  # full-match regexes of keys that are read and discarded
    drop_reason: str = ""
    _drops_re: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_drops_re", tuple(re.compile(p) for p in self.drops))

    def map(self, key: str) -> tuple[str, str] | None:
        """``(part, our_key)`` for ``key``; None when it is dropped on purpose; KeyError when unknown."""
        if any(p.fullmatch(key) for p in self._drops_re):
            return None
        for route in self.routes:
            if key.startswith(route.prefix):
                rest = key[len(route.prefix):]
                for pattern, replacement in route.renames:
                    if re.match(pattern, rest):
                        rest = re.sub(pattern, replacement, rest, count=1)
                        break
                return route.part, route.target_prefix + rest
        raise KeyError(key)


# -- EchoMimic v1: four unprefixed files; identity after the (empty) prefix ---------------------------------
# denoising_unet*.pth holds the non-temporal keys, motion_module*.pth the ``*.motion_modules.*`` keys; both
# fill our one ``denoiser`` (upstream ``from_pretrained_2d`` merges them the same way).
ECHOMIMIC_FILES: dict[str, tuple[str, ...]] = {
    # part -> source files (``{acc}`` is "" or "_acc"), loaded one after the other
    "face_locator": ("face_locator.pth",),
    "reference_net": ("reference_unet.pth",),
    "denoiser": ("denoising_unet{acc}.pth", "motion_module{acc}.pth"),
}


def echomimic_table(part: str) -> KeyTable:
    return KeyTable(routes=(Route("", part),))


# -- Hallo v1: one ``net.pth`` with a prefix per part; identity after the strip -----------------------------
HALLO_PREFIXES: dict[str, str] = {
    "reference_unet.": "reference_net",
    "denoising_unet.": "denoiser",
    "face_locator.": "face_locator",
    "imageproj.": "image_projection",
    "audioproj.": "audio_projection",
}
HALLO_NET = KeyTable(routes=tuple(Route(prefix, part) for prefix, part in HALLO_PREFIXES.items()))

# -- OpenAI Whisper (``whisper_tiny.pt`` = {"dims", "model_state_dict"}) → transformers WhisperEncoder ------
# Our SpeechEncoder holds the WhisperEncoder as ``encoder``; EchoMimic only uses the encoder.
WHISPER_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^positional_embedding$", "embed_positions.weight"),
    (r"^blocks\.(\d+)\.attn\.query\.", r"layers.\1.self_attn.q_proj."),
    (r"^blocks\.(\d+)\.attn\.key\.", r"layers.\1.self_attn.k_proj."),
    (r"^blocks\.(\d+)\.attn\.value\.", r"layers.\1.self_attn.v_proj."),
    (r"^blocks\.(\d+)\.attn\.out\.", r"layers.\1.self_attn.out_proj."),
    (r"^blocks\.(\d+)\.attn_ln\.", r"layers.\1.self_attn_layer_norm."),
    (r"^blocks\.(\d+)\.mlp\.0\.", r"layers.\1.fc1."),
    (r"^blocks\.(\d+)\.mlp\.2\.", r"layers.\1.fc2."),
    (r"^blocks\.(\d+)\.mlp_ln\.", r"layers.\1.final_layer_norm."),
    (r"^ln_post\.", "layer_norm."),
)
WHISPER = KeyTable(routes=(Route("encoder.", "speech_encoder", "encoder.", WHISPER_RENAMES),),
                   drops=(r"decoder\..*",), drop_reason="Whisper's text decoder (EchoMimic uses the encoder only)")

# Whisper ``dims`` → our WhisperConfig values (the head count is not visible in any shape).
WHISPER_DIMS: dict[str, str] = {
    "n_mels": "num_mel_bins", "n_audio_ctx": "max_source_positions", "n_audio_state": "d_model",
    "n_audio_head": "encoder_attention_heads", "n_audio_layer": "encoder_layers",
}

# -- wav2vec2 in transformers format (Wav2Vec2ForCTC ``wav2vec2.*`` or a bare Wav2Vec2Model) ----------------
WAV2VEC2_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^encoder\.pos_conv_embed\.conv\.weight_g$", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"^encoder\.pos_conv_embed\.conv\.weight_v$", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
)
WAV2VEC2 = KeyTable(
    routes=(Route("wav2vec2.", "speech_encoder", "encoder.", WAV2VEC2_RENAMES),
            Route("", "speech_encoder", "encoder.", WAV2VEC2_RENAMES)),
    drops=(r"lm_head\..*", r"(wav2vec2\.)?masked_spec_embed", r"(wav2vec2\.)?adapter\..*"),
    drop_reason="the CTC head and spec-augment embedding (Hallo uses the hidden states only)",
)
# Config values that change the computation without changing any shape (or that the shapes miss).
WAV2VEC2_CONFIG_CHECK = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                         "feat_extract_norm", "do_stable_layer_norm", "conv_dim", "conv_kernel", "conv_stride",
                         "conv_bias", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "hidden_act",
                         "feat_extract_activation")

# -- Our keys that no relative has: EMO's speed conditioning (speed_proj is zero-initialised) ----------------
EMO_ONLY = re.compile(r"^(speed_embedding\.linear_[12]\.(weight|bias)|.*\.motion_modules\.\d+\.speed_proj\.(weight|bias))$")
EMO_ONLY_PARTS = {"denoiser"}


def is_emo_only(part: str, key: str) -> bool:
    return part in EMO_ONLY_PARTS and EMO_ONLY.match(key) is not None


def map_or_fail(table: KeyTable, key: str, label: str) -> tuple[str, str] | None:
    try:
        return table.map(key)
    except KeyError:
        raise CheckpointError(f"{label}: unexpected key {key!r} (no part of the model takes it)") from None
