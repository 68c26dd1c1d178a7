"""Speech encoder: 16 kHz audio → per-video-frame windows of all hidden states, [B, F, W, L, C].

Three encoders, chosen by ``kind``; all are built from configs (never downloaded) and saved/loaded with the
rest of the checkpoint:

- ``whisper``: the encoder of OpenAI Whisper (``transformers.WhisperEncoder``; whisper-tiny for EchoMimic).
  Log-mel input, states at 50 Hz: the conv stem + every block (5 × 384 for tiny), before the final norm,
  as EchoMimic's ``audio2feature`` uses them. Inputs longer than 30 s run in 30 s chunks.
- ``wav2vec2``: ``transformers.Wav2Vec2Model`` (wav2vec2-base-960h for Hallo). The CNN features are linearly
  resampled to the video frame rate *before* the transformer (Hallo), and all transformer layers' outputs are
  kept (12 × 768).
- ``logmel``: a small 1-D conv encoder of log-mel frames (50 Hz, fixed log floor, per-frame norms: each
  state depends only on ±40 ms of audio), for small models trained without pretrained speech weights.

Each video frame i takes the states around its time, ``window_before`` before to ``window_after`` after
(edges repeat the first/last state): W = before + 1 + after (EchoMimic 4/5 → 10, Hallo 2/2 → 5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

if TYPE_CHECKING:  # transformers is imported only when an encoder of its kind is built
    from transformers import Wav2Vec2Model
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

KINDS = ("whisper", "wav2vec2", "logmel")
SAMPLE_RATE = 16_000
MEL_HOP = 160  # 10 ms: 100 mel frames per second; the stride-2 stems give 50 Hz states.
MEL_FFT = 400


@dataclass
class SpeechEncoderOutput(BaseOutput):
    """Output of ``SpeechEncoder``.

    Attributes:
        states: [B, F, W, L, C] for each video frame, W neighbouring audio states × L hidden layers.
    """

    states: torch.Tensor


def log_mel_spectrogram(audio: torch.Tensor, filters: torch.Tensor, relative_floor: bool = True) -> torch.Tensor:
    """Whisper's log-mel spectrogram: [B, S] at 16 kHz → [B, n_mels, S // 160].

    Same recipe as ``WhisperFeatureExtractor`` (Hann 400/160 STFT, Slaney mel filters, log10, 8-decade
    floor below the maximum, (x + 4) / 4), in torch so it runs on the model's device. With
    ``relative_floor=False`` the floor is fixed (1e-8) instead of relative to the loudest bin, so each frame
    depends only on its own audio (what a streaming encoder needs).
    """
    window = torch.hann_window(MEL_FFT, device=audio.device, dtype=torch.float32)
    stft = torch.stft(audio.float(), MEL_FFT, MEL_HOP, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2
    mel = filters.to(power.device) @ power
    log = torch.clamp(mel, min=1e-10).log10()
    if relative_floor:
        log = torch.maximum(log, log.amax(dim=(-2, -1), keepdim=True) - 8.0)
    else:
        log = torch.clamp(log, min=-8.0)
    return (log + 4.0) / 4.0


def mel_filters(n_mels: int) -> torch.Tensor:
    """[n_mels, 201] Slaney mel filters for 16 kHz / 400-point FFT (Whisper's)."""
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(num_frequency_bins=1 + MEL_FFT // 2, num_mel_filters=n_mels, min_frequency=0.0,
                           max_frequency=8000.0, sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")
    return torch.from_numpy(bank).float().T.contiguous()


def window_states(states: torch.Tensor, num_frames: int, fps: float, states_hz: float, before: int, after: int
                  ) -> torch.Tensor:
    """[B, T, L, C] states at ``states_hz`` → [B, F, W, L, C] windows centred on each video frame."""
    total = states.shape[1]
    centers = torch.round(torch.arange(num_frames, dtype=torch.float64) * states_hz / fps).long()
    offsets = torch.arange(-before, after + 1)
    index = (centers[:, None] + offsets[None, :]).clamp(0, total - 1).to(states.device)  # [F, W]
    return states[:, index]


class LogMelConvEncoder(nn.Module):
    """Log-mel → 50 Hz states: a stride-2 conv stem and residual GELU convs; every stage's output is a state."""

    def __init__(self, n_mels: int = 80, hidden_size: int = 384, num_layers: int = 4) -> None:
        super().__init__()
        self.conv_in = nn.Conv1d(n_mels, hidden_size, kernel_size=3, stride=2, padding=1)
        self.layers = nn.ModuleList(
            [nn.Conv1d(hidden_size, hidden_size, kernel_size=3, padding=1) for _ in range(num_layers)]
        )
        # Per-frame norms (over channels only): a state depends on nearby audio, never on the whole clip.
        self.norms = nn.ModuleList([nn.LayerNorm(hidden_size) for _ in range(num_layers)])

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, n_mels, T100] → [B, T50, L, C] with L = num_layers + 1."""
        x = F.gelu(self.conv_in(mel))
        states = [x]
        for conv, norm in zip(self.layers, self.norms, strict=True):
            x = x + F.gelu(conv(norm(x.transpose(1, 2)).transpose(1, 2)))
            states.append(x)
        return torch.stack(states, dim=1).permute(0, 3, 1, 2)


class SpeechEncoder(ModelMixin, ConfigMixin):
    """Audio [B, S] at 16 kHz → per-frame windows of hidden states [B, F, W, L, C].

    Args:
        kind: ``"whisper"``, ``"wav2vec2"`` or ``"logmel"``.
        encoder_config: the ``transformers`` config values of the encoder (``WhisperConfig`` /
            ``Wav2Vec2Config``) or, for ``logmel``, ``n_mels``/``hidden_size``/``num_layers``.
        window_before / window_after: states taken before/after each frame's centre.
        states_hz: rate of the states (50 for whisper/logmel); ignored by wav2vec2 (states at the video fps).
    """

    @register_to_config
    def __init__(
        self,
        kind: str = "whisper",
        encoder_config: dict[str, Any] | None = None,
        window_before: int = 4,
        window_after: int = 5,
        states_hz: float = 50.0,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        encoder_config = dict(encoder_config or {})
        self.encoder: nn.Module  # of ``kind``: read it through _whisper, _wav2vec2 or _logmel
        if kind == "whisper":
            from transformers import WhisperConfig
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            whisper = WhisperEncoder(WhisperConfig(**encoder_config))
            n_mels = whisper.config.num_mel_bins
            self.encoder = whisper
        elif kind == "wav2vec2":
            from transformers import Wav2Vec2Config, Wav2Vec2Model

            # No spec-augment at inference: keeps ``masked_spec_embed`` out of the state dict.
            encoder_config.setdefault("mask_time_prob", 0.0)
            encoder_config.setdefault("apply_spec_augment", False)
            self.encoder = Wav2Vec2Model(Wav2Vec2Config(**encoder_config))
            n_mels = 0
        else:
            logmel = LogMelConvEncoder(**encoder_config)
            n_mels = logmel.conv_in.in_channels
            self.encoder = logmel
        if n_mels:
            self.register_buffer("mel_filters", mel_filters(n_mels), persistent=False)

    def _whisper(self) -> WhisperEncoder:
        return cast("WhisperEncoder", self.encoder)

    def _wav2vec2(self) -> Wav2Vec2Model:
        return cast("Wav2Vec2Model", self.encoder)

    def _logmel(self) -> LogMelConvEncoder:
        return cast(LogMelConvEncoder, self.encoder)

    @property
    def window(self) -> int:
        return self.config.window_before + 1 + self.config.window_after

    @property
    def num_states(self) -> int:
        """L, hidden states per audio frame."""
        if self.config.kind == "whisper":
            return self._whisper().config.encoder_layers + 1
        if self.config.kind == "wav2vec2":
            return self._wav2vec2().config.num_hidden_layers
        return len(self._logmel().layers) + 1

    @property
    def hidden_size(self) -> int:
        if self.config.kind == "whisper":
            return self._whisper().config.d_model
        if self.config.kind == "wav2vec2":
            return self._wav2vec2().config.hidden_size
        return self._logmel().conv_in.out_channels

    def forward(self, audio: torch.Tensor, num_frames: int, fps: float, return_dict: bool = True
                ) -> SpeechEncoderOutput | tuple[torch.Tensor]:
        """Encode ``audio`` [B, S] (16 kHz, float in [-1, 1]) for ``num_frames`` video frames at ``fps``."""
        cfg = self.config
        if audio.dim() == 1:
            audio = audio[None]
        param = next(self.parameters())
        audio = audio.to(param.device)
        if cfg.kind == "wav2vec2":
            states = self._wav2vec2_states(audio, num_frames).to(param.dtype)
            rate = fps
        else:
            mel = log_mel_spectrogram(audio, self.mel_filters, relative_floor=cfg.kind == "whisper").to(param.dtype)
            states = self._whisper_states(mel) if cfg.kind == "whisper" else self.encoder(mel)
            rate = cfg.states_hz
        windows = window_states(states, num_frames, fps, rate, cfg.window_before, cfg.window_after)
        if not return_dict:
            return (windows,)
        return SpeechEncoderOutput(states=windows)

    @staticmethod
    def tokens(states: torch.Tensor) -> torch.Tensor:
        """[B, F, W, L, C] → [B, F, W·L, C] tokens (time-major), the inline slot's input (EchoMimic's 50 × 384)."""
        batch, frames, window, layers, channels = states.shape
        return states.reshape(batch, frames, window * layers, channels)

    def _whisper_states(self, mel: torch.Tensor) -> torch.Tensor:
        """Whisper encoder states [B, T50, L, C]: conv stem + positions, then each block (no final norm)."""
        enc = self._whisper()
        chunk = 2 * enc.config.max_source_positions  # mel frames per 30 s window
        outputs = []
        for start in range(0, max(mel.shape[-1], 1), chunk):
            x = F.gelu(enc.conv1(mel[..., start:start + chunk]))
            x = F.gelu(enc.conv2(x)).permute(0, 2, 1)
            x = x + enc.embed_positions.weight[: x.shape[1]]
            states = [x]
            for layer in enc.layers:
                x = _first(layer(x, None))
                states.append(x)
            outputs.append(torch.stack(states, dim=2))
        return torch.cat(outputs, dim=1)

    def _wav2vec2_states(self, audio: torch.Tensor, num_frames: int) -> torch.Tensor:
        """wav2vec2 states at the video rate [B, F, L, C] (Hallo: CNN features resampled before the transformer)."""
        model = self._wav2vec2()
        # Zero-mean, unit-variance input, as Wav2Vec2FeatureExtractor(do_normalize=True) gives the model.
        audio = (audio - audio.mean(-1, keepdim=True)) / torch.sqrt(audio.var(-1, keepdim=True) + 1e-7)
        features = model.feature_extractor(audio.to(next(model.parameters()).dtype)).transpose(1, 2)
        features = F.interpolate(features.transpose(1, 2), size=num_frames, mode="linear",
                                 align_corners=True).transpose(1, 2)
        hidden, _ = model.feature_projection(features)
        encoder = model.encoder
        hidden = hidden + encoder.pos_conv_embed(hidden)
        hidden = encoder.dropout(encoder.layer_norm(hidden))
        states = []
        for layer in encoder.layers:
            hidden = _first(layer(hidden, attention_mask=None))
            states.append(hidden)
        return torch.stack(states, dim=2)

    def num_samples(self, num_frames: int, fps: float) -> int:
        """Audio samples covering ``num_frames`` video frames."""
        return math.ceil(num_frames * SAMPLE_RATE / fps)


def _first(out: Any) -> torch.Tensor:
    """Layer outputs are a tensor in transformers 5 and a tuple in 4.x."""
    return out[0] if isinstance(out, tuple) else out
