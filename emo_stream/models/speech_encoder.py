"""Speech encoder: 16 kHz audio → per-video-frame windows of all hidden states, [B, F, W, L, C].

Three encoders, chosen by ``kind``; all are built from configs (never downloaded) and saved/loaded with the
rest of the checkpoint:

- ``whisper``: the encoder of OpenAI Whisper (``transformers.WhisperEncoder``; whisper-tiny for EchoMimic).
  Log-mel input, states at 50 Hz: the conv stem + every block (5 × 384 for tiny), before the final norm,
  as EchoMimic's ``audio2feature`` uses them. As there (and as Whisper was trained), the log-mel of the whole
  input is cut into 30 s blocks (3,000 mel frames), each block is zero-padded to 30 s before the encoder, and
  a block of ``n`` mel frames keeps its first ``n // 2`` states. A streamed segment is placed at its own
  offset in its block (``start_frame``), so its states take the positions the whole clip gives them.
- ``wav2vec2``: ``transformers.Wav2Vec2Model`` (wav2vec2-base-960h for Hallo). The CNN features are linearly
  resampled to the video frame rate *before* the transformer (Hallo), and all transformer layers' outputs are
  kept (12 × 768).
- ``logmel``: a small 1-D conv encoder of log-mel frames (50 Hz, fixed log floor, per-frame norms: each
  state depends only on ±40 ms of audio), for small models trained without pretrained speech weights.

Each video frame i takes the states around its centre ``floor(i × states_hz / fps)`` (EchoMimic truncates:
``int(i * 50 / fps)``), ``window_before`` before to ``window_after`` after (edges repeat the first/last
state): W = before + 1 + after (EchoMimic 4/5 → 10, Hallo 2/2 → 5).
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


def frame_centres(num_frames: int, fps: float, states_hz: float) -> torch.Tensor:
    """The state each video frame is centred on: ``floor(i × states_hz / fps)``, EchoMimic's ``int(i * 50 / fps)``
    (float64: the product is exact and the quotient correctly rounded, so whole values stay whole)."""
    return torch.floor(torch.arange(num_frames, dtype=torch.float64) * states_hz / fps).long()


def window_states(states: torch.Tensor, num_frames: int, fps: float, states_hz: float, before: int, after: int
                  ) -> torch.Tensor:
    """[B, T, L, C] states at ``states_hz`` → [B, F, W, L, C] windows centred on each video frame."""
    total = states.shape[1]
    centers = frame_centres(num_frames, fps, states_hz)
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

    def forward(self, audio: torch.Tensor, num_frames: int, fps: float, return_dict: bool = True,
                start_frame: int = 0, trailing_zeros: int = 0) -> SpeechEncoderOutput | tuple[torch.Tensor]:
        """Encode ``audio`` [B, S] (16 kHz, float in [-1, 1]) for ``num_frames`` video frames at ``fps``.

        Args:
            start_frame: where ``audio`` starts in the utterance it was cut from, in video frames (streaming);
                whisper places it at that offset in its 30 s block. 0 for a whole clip.
            trailing_zeros: wav2vec2: zero samples appended after the input's normalisation (Hallo pads a clip
                to a whole number of its clips this way).
        """
        cfg = self.config
        if audio.dim() == 1:
            audio = audio[None]
        param = next(self.parameters())
        audio = audio.to(param.device)
        if cfg.kind == "wav2vec2":
            states = self._wav2vec2_states(audio, num_frames, trailing_zeros).to(param.dtype)
            rate = fps
        else:
            mel = log_mel_spectrogram(audio, self.mel_filters, relative_floor=cfg.kind == "whisper").to(param.dtype)
            if cfg.kind == "whisper":
                states = self._whisper_states(mel, self.mel_offset(start_frame, fps))
            else:
                states = self.encoder(mel)
            rate = cfg.states_hz
        windows = window_states(states, num_frames, fps, rate, cfg.window_before, cfg.window_after)
        if not return_dict:
            return (windows,)
        return SpeechEncoderOutput(states=windows)

    def states_for(self, audio: torch.Tensor, num_frames: int, fps: float, start_frame: int = 0,
                   trailing_zeros: int | None = None) -> torch.Tensor:
        """``forward``'s states [B, F, W, L, C] for audio that may be short of its ``num_frames``.

        Audio short of its frames: log-mel is padded with silence. whisper is not: frames past the end take the
        last state, as EchoMimic's do (silence would add states, and move the log-mel floor). wav2vec2 gets
        zeros after its normalisation (``trailing_zeros``, default: up to the frames), as Hallo pads a file
        (silence before it would change the statistics).
        """
        needed = self.num_samples(num_frames, fps)
        kind = self.config.kind
        if audio.shape[-1] < needed and kind == "logmel":
            audio = F.pad(audio, (0, needed - audio.shape[-1]))
        if kind == "wav2vec2" and trailing_zeros is None:
            trailing_zeros = max(0, needed - audio.shape[-1])
        out = self(audio, num_frames, fps, start_frame=start_frame, trailing_zeros=trailing_zeros or 0)
        return cast(SpeechEncoderOutput, out).states

    @staticmethod
    def tokens(states: torch.Tensor) -> torch.Tensor:
        """[B, F, W, L, C] → [B, F, W·L, C] tokens (time-major), the inline slot's input (EchoMimic's 50 × 384)."""
        batch, frames, window, layers, channels = states.shape
        return states.reshape(batch, frames, window * layers, channels)

    @property
    def block_mel_frames(self) -> int:
        """Mel frames in one whisper input block (3,000: 30 s); 0 for the other kinds."""
        if self.config.kind != "whisper":
            return 0
        return 2 * int(self._whisper().config.max_source_positions)

    def mel_offset(self, start_frame: int, fps: float) -> int:
        """Mel frames before video frame ``start_frame``; streamed segments start on a state (even) boundary."""
        offset = start_frame * SAMPLE_RATE / fps / MEL_HOP
        if start_frame and (offset != int(offset) or int(offset) % 2):
            raise ValueError(f"frame {start_frame} at {fps} fps does not start on a 20 ms state boundary")
        return int(offset)

    def _whisper_states(self, mel: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Whisper encoder states [B, T50, L, C] of ``mel`` [B, n_mels, n] lying at mel frames [offset, offset + n)
        of its utterance: conv stem + positions, then each block (no final norm).

        EchoMimic's rule (its copy of Whisper's ``transcribe``): the utterance's mel is cut into blocks of
        ``block_mel_frames``, each zero-padded to a whole block, so every state sees 30 s of input and its own
        position; a block of ``n`` frames keeps its first ``n // 2`` states. ``mel`` is placed at its offset in
        its block(s); the parts of a block it does not cover are zeros (the padding's value), as the end of a
        clip is.
        """
        block = self.block_mel_frames
        total = mel.shape[-1]
        outputs = []
        start = offset
        while start < offset + total:
            first = (start // block) * block
            end = min(first + block, offset + total)
            keep = slice((start - first) // 2, (end - first) // 2)
            if keep.stop > keep.start:  # a block's odd last mel frame has no state of its own
                outputs.append(self._whisper_block(mel[..., start - offset:end - offset], start - first)[:, keep])
            start = end
        if not outputs:  # under two mel frames: the one state the frames can take
            return self._whisper_block(mel[..., :total], offset % block)[:, offset % block // 2:][:, :1]
        return torch.cat(outputs, dim=1)

    def _whisper_block(self, mel: torch.Tensor, at: int) -> torch.Tensor:
        """Every state [B, block // 2, L, C] of one block whose mel frames from ``at`` on are ``mel``, zeros else."""
        enc = self._whisper()
        padded = mel.new_zeros(*mel.shape[:-1], self.block_mel_frames)
        padded[..., at:at + mel.shape[-1]] = mel
        x = F.gelu(enc.conv1(padded))
        x = F.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        states = [x]
        for layer in enc.layers:
            x = _first(layer(x, None))
            states.append(x)
        return torch.stack(states, dim=2)

    def _wav2vec2_states(self, audio: torch.Tensor, num_frames: int, trailing_zeros: int = 0) -> torch.Tensor:
        """wav2vec2 states at the video rate [B, F, L, C] (Hallo: CNN features resampled before the transformer)."""
        model = self._wav2vec2()
        # Zero-mean, unit-variance input, as Wav2Vec2FeatureExtractor(do_normalize=True) gives the model
        # (variance over N).
        audio = (audio - audio.mean(-1, keepdim=True)) / torch.sqrt(audio.var(-1, keepdim=True, correction=0) + 1e-7)
        if trailing_zeros:
            audio = F.pad(audio, (0, trailing_zeros))
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

    def frames_for(self, num_samples: int, fps: float) -> int:
        """Video frames a whole clip of ``num_samples`` renders as.

        whisper (EchoMimic): as many frames as its ``feature2chunks`` makes, which runs until a frame's centre is
        past the last state: ``ceil((states + 1) × fps / 50) + 1`` with ``states = mel frames // 2``, up to two
        frames past the audio's end, their windows clamped to the last state. It matters beyond the tail: the
        whole-video context windows wrap around the frame count. Otherwise the audio's length in frames.
        """
        if self.config.kind == "whisper":
            states = (num_samples // MEL_HOP) // 2
            return math.ceil((states + 1) * fps / self.config.states_hz) + 1
        return max(1, round(num_samples * fps / SAMPLE_RATE))


def _first(out: Any) -> torch.Tensor:
    """Layer outputs are a tensor in transformers 5 and a tuple in 4.x."""
    return out[0] if isinstance(out, tuple) else out
