"""Offline EMO pipeline: portrait + 16 kHz audio → talking-portrait frames of any duration.

Clip by clip (``clip_frames`` per denoiser call), each clip continuing the previous one through its motion
frames: the last ``motion_frames`` latents go through the ReferenceNet and their features are prepended in
the temporal layers (EMO; Hallo's first clip uses the portrait itself), and the initial noise of the new clip
continues the previous clip's (AR(1) with ``noise_correlation``; 0 = independent). Classifier-free guidance
drops the reference (plain self-attention), the audio (zero tokens), the face-locator features and the face
tokens together (EchoMimic/Hallo's unconditional recipe).

Checkpoints without motion frames whose settings ask for it (``context_overlap``, EchoMimic) are denoised
offline as a whole video in overlapping context windows instead (``denoise_video``). A checkpoint's
``step_rule`` and ``initial_noise_clamp`` (EchoMimic acc's v → x0 → pseudo-velocity step, EchoMimic's ±1.5
noise clamp) apply on every path.

Both ``denoise_clip`` and ``denoise_video`` run the one sampling loop, ``sampling.sample_clips``, with a batch of
one; the streaming backend runs it with the clips of many sessions (``animators.emo_sampler``). The pieces a
streaming animator needs are public: ``prepare_portrait`` (once per avatar, holds the cached reference bank),
``encode_audio``, ``denoise_clip`` (one window, returns the carry for the next) and ``decode_latents``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from emo_stream.models.checkpoint import EmoComponents, InferenceSettings, load_checkpoint
from emo_stream.models.schedulers import set_sampling_timesteps
from emo_stream.models.speech_encoder import SAMPLE_RATE
from emo_stream.pipelines.context import ContextSchedule
from emo_stream.pipelines.regions import face_region
from emo_stream.pipelines.sampling import ClipRequest, sample_clips
from emo_stream.pipelines.state import MotionCarry, PortraitState

__all__ = ["EmoPipeline", "EmoPipelineOutput", "MotionCarry", "PortraitState"]


@dataclass
class EmoPipelineOutput(BaseOutput):
    """Output of ``EmoPipeline``.

    Attributes:
        frames: [T, H, W, 3] uint8 frames (``output_type="np"``) or [T, 3, H, W] float in [0, 1] (``"pt"``).
        fps: frame rate of ``frames``; T = round(audio seconds × fps).
    """

    frames: np.ndarray | torch.Tensor
    fps: float


class EmoPipeline(DiffusionPipeline):
    """Talking-portrait generation with an EMO checkpoint (see ``emo_stream.models.checkpoint``)."""

    model_cpu_offload_seq = "speech_encoder->reference_net->face_locator->denoiser->vae"
    _optional_components = ["audio_projection", "image_projection", "small_decoder"]

    def __init__(self, reference_net, denoiser, face_locator, speech_encoder, vae, scheduler,
                 audio_projection=None, image_projection=None, small_decoder=None) -> None:
        super().__init__()
        self.register_modules(reference_net=reference_net, denoiser=denoiser, face_locator=face_locator,
                              speech_encoder=speech_encoder, vae=vae, scheduler=scheduler,
                              audio_projection=audio_projection, image_projection=image_projection,
                              small_decoder=small_decoder)
        self.settings = InferenceSettings(audio_mode=denoiser.config.audio_mode)

    @classmethod
    def from_components(cls, components: EmoComponents) -> EmoPipeline:
        parts = {k: v for k, v in components.parts().items()}
        pipe = cls(**parts)
        pipe.settings = components.settings
        return pipe

    @classmethod
    def from_checkpoint(cls, folder: str, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> EmoPipeline:
        """Load a checkpoint folder (raises ``CheckpointError`` naming a bad part)."""
        return cls.from_components(load_checkpoint(folder, device, dtype))

    # -- inputs -------------------------------------------------------------------------------------------

    @property
    def _model_device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def _model_dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    def check_inputs(self, portrait: np.ndarray, audio: np.ndarray, face_mask: np.ndarray | None,
                     clip_frames: int, motion_frames: int, noise_correlation: float) -> None:
        """Fail early, with ``ValueError``, on inputs the models cannot take."""
        if not isinstance(portrait, np.ndarray) or portrait.ndim != 3 or portrait.shape[2] != 3:
            raise ValueError(f"portrait must be an H×W×3 RGB array, got {getattr(portrait, 'shape', portrait)}")
        if not isinstance(audio, np.ndarray) or audio.ndim != 1 or audio.size == 0:
            raise ValueError("audio must be a non-empty 1-D float array at 16 kHz")
        if face_mask is not None and face_mask.shape[:2] != portrait.shape[:2]:
            raise ValueError(f"face_mask {face_mask.shape[:2]} must match the portrait {portrait.shape[:2]}")
        if clip_frames < 1 or motion_frames < 0:
            raise ValueError("clip_frames must be >= 1 and motion_frames >= 0")
        limit = self.denoiser.max_frames
        if clip_frames + motion_frames > limit:
            raise ValueError(f"clip_frames + motion_frames = {clip_frames + motion_frames} exceeds the temporal "
                             f"layers' {limit} positions")
        if not 0.0 <= noise_correlation < 1.0:
            raise ValueError(f"noise_correlation must be in [0, 1), got {noise_correlation}")

    def _image_tensor(self, image: np.ndarray, size: int) -> torch.Tensor:
        """H×W×C array → [1, C, size, size] float, centre-cropped to a square then resized."""
        h, w = image.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = torch.from_numpy(np.ascontiguousarray(image[top:top + side, left:left + side])).float()
        x = x.reshape(side, side, -1).permute(2, 0, 1)[None]
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)

    @torch.no_grad()
    def prepare_portrait(self, portrait: np.ndarray, face_mask: np.ndarray | None = None,
                         face_embedding: torch.Tensor | None = None, size: int | None = None) -> PortraitState:
        """Encode a portrait once: VAE latents, the cached reference bank, face-locator features, face tokens.

        Args:
            portrait: H×W×3 uint8 RGB.
            face_mask: H×W (or H×W×C) face-region mask in [0, 1]; None = the whole frame.
            face_embedding: [1, D] identity embedding for the image projection (Hallo), None = zeros.
            size: output side in pixels (default: the checkpoint's ``sample_size``).
        """
        size = size or self.settings.sample_size
        device, dtype = self._model_device, self._model_dtype
        # 1. Portrait → latents (the distribution's mean, as EchoMimic/Hallo use).
        pixels = self._image_tensor(portrait, size) / 127.5 - 1.0
        latents = self.vae.encode(pixels.to(device, dtype)).latent_dist.mean * self.vae.config.scaling_factor
        # 2. Face tokens for attn2 (Hallo's imageproj), needed by the ReferenceNet too.
        face_tokens = None
        if self.image_projection is not None:
            if face_embedding is None:
                face_embedding = torch.zeros(1, self.image_projection.config.embedding_dim)
            face_tokens = self.image_projection(face_embedding.to(device, dtype)).tokens
        # 3. The reference bank: the only ReferenceNet pass this portrait ever needs.
        ref_tokens = face_tokens if self.reference_net.config.cross_attention_dim is not None else None
        bank = self.reference_net.encode_portrait(latents, ref_tokens)
        # 4. Face locator on the mask; region masks for the separate audio slot.
        channels = self.face_locator.config.conditioning_channels
        if face_mask is None:
            mask = torch.ones(1, 1, size, size)
        else:
            mask = self._image_tensor(face_mask.astype(np.float32), size)[:, :1].clamp(0, 1)
        face_features = self.face_locator(mask.expand(1, channels, size, size).to(device, dtype)).features
        latent_mask = F.interpolate(mask, size=latents.shape[-2:], mode="area")
        # Without landmarks the lip region is approximated by the face region.
        region_masks = torch.cat([torch.ones_like(latent_mask), latent_mask, latent_mask], 1).to(device, dtype)
        generate = self._generate_mask(mask, latents.shape[-2:])
        kept = pixels.to(device) if self.settings.decode_residual else None  # 3 MB at 512²: only when used
        return PortraitState(latents, bank, face_features, region_masks, face_tokens, pixels=kept,
                             generate_mask=None if generate is None else generate.to(device, dtype))

    def _generate_mask(self, face: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor | None:
        """The ``generate_region`` at latent size, soft-edged, from the [1, 1, S, S] face mask (None: everywhere)."""
        region = self.settings.generate_region
        mask = None if region == "frame" else face_region(face, region)
        if mask is None:  # the whole frame, or no face box: everything is generated
            return None
        mask = F.interpolate(mask, size=latent_size, mode="area")
        # One latent of feathering: the seam is blended by the model rather than cut.
        return F.avg_pool2d(F.pad(mask, (1, 1, 1, 1), mode="replicate"), 3, stride=1).clamp(0, 1)

    def keep_outside(self, latents: torch.Tensor, portrait_latents: torch.Tensor, masks: torch.Tensor | None,
                     noise: torch.Tensor, timestep: torch.Tensor | None) -> torch.Tensor:
        """Inpainting: outside each row's ``masks`` [B, 1, h, w] (``generate_region``), ``latents`` [B, C, F, h, w]
        become the portrait's latents [B, C, h, w] noised with ``noise`` to ``timestep`` (None: clean)."""
        if masks is None:
            return latents
        known = portrait_latents.float()[:, :, None].expand_as(noise)
        if timestep is not None:
            known = self.scheduler.add_noise(known, noise, timestep.reshape(1))
        m = masks.float()[:, :, None]
        return (m * latents.float() + (1 - m) * known).to(latents.dtype)

    @torch.no_grad()
    def encode_audio(self, audio: np.ndarray | torch.Tensor, num_frames: int, fps: float, start_frame: int = 0,
                     trailing_zeros: int | None = None) -> torch.Tensor:
        """Audio (16 kHz) → per-frame audio tokens [1, F, N, C] for the denoiser.

        Args:
            start_frame: where ``audio`` starts in its utterance, in frames (a streamed segment; 0 for a clip).
            trailing_zeros: wav2vec2 only: zero samples after the normalised audio (default: up to the frames').
        """
        wave = torch.as_tensor(np.asarray(audio, dtype=np.float32))
        states = self.speech_encoder.states_for(wave[None], num_frames, fps, start_frame, trailing_zeros)
        if self.audio_projection is not None:
            tokens = self.audio_projection(states.to(self._model_dtype)).tokens
        else:
            tokens = self.speech_encoder.tokens(states)
        return tokens.to(self._model_device, self._model_dtype)

    def encode_whole(self, audio: np.ndarray | torch.Tensor, num_frames: int, clip_frames: int, fps: float
                     ) -> torch.Tensor:
        """A whole file's tokens [1, F, N, C] in one encoder pass, F = ``num_frames`` up to whole clips of
        ``clip_frames``. The frames past the audio: wav2vec2 gets zeros after its normalisation (Hallo pads a
        file to whole clips this way, and not at all when it fits); see ``encode_audio`` for the others."""
        extra = (-num_frames) % clip_frames
        if self.speech_encoder.config.kind == "wav2vec2":
            return self.encode_audio(audio, num_frames + extra, fps,
                                     trailing_zeros=self.speech_encoder.num_samples(extra, fps) if extra else 0)
        return self.encode_audio(audio, num_frames + extra, fps)

    # -- sampling -----------------------------------------------------------------------------------------

    def clamp_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """The checkpoint's initial-noise clamp (EchoMimic: ±1.5); unchanged when it has none."""
        limit = self.settings.initial_noise_clamp
        return noise.clamp(-limit, limit) if limit > 0 else noise

    def start_latents(self, noise: torch.Tensor, portrait_latents: torch.Tensor, steps: int) -> torch.Tensor:
        """Set the sampler's timesteps and return the first denoiser input for ``noise`` [B, C, F, h, w].

        With the checkpoint's ``reference_strength`` below 1 every frame starts from its row's portrait latents
        ``portrait_latents`` [B, C, h, w] noised to the first timestep (img2img); otherwise from the noise.
        """
        strength = self.settings.reference_strength
        timesteps = set_sampling_timesteps(self.scheduler, steps, strength, noise.device)
        if strength >= 1.0:
            return (noise * self.scheduler.init_noise_sigma).to(self._model_dtype)
        anchor = portrait_latents.float()[:, :, None].expand_as(noise)
        return self.scheduler.add_noise(anchor, noise, timesteps[:1]).to(self._model_dtype)

    def next_timestep(self, index: int) -> torch.Tensor | None:
        """The noise level of the sample after step ``index`` of the current timesteps (None: clean)."""
        timesteps = self.scheduler.timesteps
        return timesteps[index + 1] if index + 1 < len(timesteps) else None

    @torch.no_grad()
    def denoise_clip(
        self,
        state: PortraitState,
        audio_tokens: torch.Tensor,
        carry: MotionCarry | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        motion_frames: int | None = None,
        noise_correlation: float | None = None,
        speed_buckets: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        progress_bar: Any = None,
    ) -> tuple[torch.Tensor, MotionCarry | None]:
        """Sample one clip of F = ``audio_tokens.shape[1]`` frames.

        Args:
            state: from ``prepare_portrait``.
            audio_tokens: [1, F, N, C] from ``encode_audio``.
            carry: the previous clip's ``MotionCarry``; None for the first clip (motion frames = the portrait).
            speed_buckets: [1, F, K] head-speed buckets, if the denoiser takes them.
            progress_bar: a tqdm-like object advanced once per step (``__call__``'s bar), or None.

        Returns:
            latents [1, C, F, h, w] and the carry for the next clip (None when ``motion_frames`` is 0).
        """
        s = self.settings
        request = ClipRequest(state, audio_tokens, carry, generator, speed_buckets)
        latents, carries = sample_clips(
            self, [request], num_inference_steps or s.num_inference_steps,
            s.guidance_scale if guidance_scale is None else guidance_scale,
            s.motion_frames if motion_frames is None else motion_frames,
            s.noise_correlation if noise_correlation is None else noise_correlation, progress_bar=progress_bar)
        return latents, carries[0]

    @torch.no_grad()
    def denoise_video(
        self,
        state: PortraitState,
        audio_tokens: torch.Tensor,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        clip_frames: int | None = None,
        context_overlap: int | None = None,
        speed_buckets: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        progress_bar: Any = None,
    ) -> torch.Tensor:
        """Sample all T = ``audio_tokens.shape[1]`` frames at once in overlapping context windows (no motion frames).

        Each step runs the denoiser on every window (``context.context_windows``: ``clip_frames`` long,
        overlapping by ``context_overlap``, wrapping around, shifted 2 frames per step), averages the predictions of
        frames that several windows cover, and takes one sampler step on the whole video (EchoMimic's offline path).

        Returns:
            latents [1, C, T, h, w].
        """
        s = self.settings
        context = ContextSchedule(clip_frames or s.clip_frames,
                                  s.context_overlap if context_overlap is None else context_overlap)
        request = ClipRequest(state, audio_tokens, None, generator, speed_buckets)
        # No motion frames and independent noise: the whole video is one clip (EchoMimic).
        latents, _ = sample_clips(self, [request], num_inference_steps or s.num_inference_steps,
                                  s.guidance_scale if guidance_scale is None else guidance_scale,
                                  motion_frames=0, noise_correlation=0.0, context=context,
                                  progress_bar=progress_bar)
        return latents

    def decode_frames(self, frames: torch.Tensor, decoder: str = "vae") -> torch.Tensor:
        """[N, C, h, w] latents → [N, 3, H, W] in about [-1, 1] (unclamped) with the VAE or the small decoder."""
        if decoder == "small":
            if self.small_decoder is None:
                raise ValueError("this checkpoint has no small_decoder")
            return self.small_decoder(frames).sample
        if decoder == "vae":
            return self.vae.decode(frames / self.vae.config.scaling_factor).sample
        raise ValueError(f"decoder must be 'vae' or 'small', got {decoder!r}")

    def residual_base(self, state: PortraitState | None, decoder: str) -> torch.Tensor | None:
        """``portrait pixels - decode(portrait latents)`` [1, 3, S, S] to add to every decoded frame when the
        checkpoint decodes residually (``InferenceSettings.decode_residual``), else None. Cached on ``state``."""
        if not self.settings.decode_residual or state is None or state.pixels is None:
            return None
        base = state.residual_bases.get(decoder)
        if base is None:
            base = state.pixels.float() - self.decode_frames(state.latents, decoder).float()
            state.residual_bases[decoder] = base
        return base

    def compose_residual(self, images: torch.Tensor, state: PortraitState | None, decoder: str) -> torch.Tensor:
        """Decoded frames [N, 3, S, S] in [-1, 1] of one portrait → what is shown: with ``decode_residual``, the
        portrait plus the decoded change, and that change only inside the generated region (``generate_mask``,
        upsampled; its one-latent feather blends the seam). The decoder's group norms and attention see the whole
        frame, so a new mouth also moves its output far from the mouth (on a portrait unlike the training ones,
        the whole frame); outside the region the portrait's own pixels are what the sampler kept anyway."""
        base = self.residual_base(state, decoder)
        if base is None or state is None or state.pixels is None:  # residual_base gives a base only with both
            return images
        images = images + base
        if state.generate_mask is None:
            return images
        mask = F.interpolate(state.generate_mask.float(), size=images.shape[-2:], mode="bilinear",
                             align_corners=False).clamp(0.0, 1.0)
        pixels = state.pixels.float()
        return pixels + mask * (images - pixels)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, decoder: str = "vae",
                       portrait: PortraitState | None = None) -> torch.Tensor:
        """[1, C, F, h, w] latents → [F, 3, H, W] RGB in [0, 1] with the VAE or the small decoder (composed on
        the portrait, ``compose_residual``, when the checkpoint decodes residually and ``portrait`` is given)."""
        images = self.decode_frames(latents[0].permute(1, 0, 2, 3), decoder).float()
        images = self.compose_residual(images, portrait, decoder)
        return ((images + 1.0) / 2.0).clamp(0.0, 1.0)

    @torch.no_grad()
    def __call__(
        self,
        portrait: np.ndarray,
        audio: np.ndarray,
        face_mask: np.ndarray | None = None,
        face_embedding: torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        fps: float | None = None,
        clip_frames: int | None = None,
        motion_frames: int | None = None,
        noise_correlation: float | None = None,
        speed_buckets: np.ndarray | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        decoder: str = "vae",
        output_type: str = "np",
        portrait_state: PortraitState | None = None,
        return_dict: bool = True,
    ) -> EmoPipelineOutput | tuple[np.ndarray | torch.Tensor, float]:
        """Render a talking portrait.

        Args:
            portrait: H×W×3 uint8 RGB.
            audio: 1-D float audio at 16 kHz; the video lasts as long.
            face_mask: H×W face-region mask (None = whole frame).
            face_embedding: [1, D] identity embedding (checkpoints with an image projection).
            num_inference_steps / guidance_scale / fps / clip_frames / motion_frames / noise_correlation:
                override the checkpoint's inference settings.
            speed_buckets: [T, K] head-speed bucket weights per output frame (``speed_to_buckets``).
            generator: seeds the noise.
            decoder: ``"vae"`` (full) or ``"small"`` (streaming decoder).
            output_type: ``"np"`` (uint8 frames) or ``"pt"`` (float tensor).
            portrait_state: a cached ``prepare_portrait`` result; skips the portrait encoding.
        """
        # 0. Defaults from the checkpoint.
        s = self.settings
        fps = fps or s.fps
        clip_frames = clip_frames or s.clip_frames
        motion_frames = s.motion_frames if motion_frames is None else motion_frames
        noise_correlation = s.noise_correlation if noise_correlation is None else noise_correlation

        # 1. Check inputs.
        self.check_inputs(portrait, audio, face_mask, clip_frames, motion_frames, noise_correlation)
        if output_type not in ("np", "pt"):
            raise ValueError(f"output_type must be 'np' or 'pt', got {output_type!r}")
        context_windows = motion_frames == 0 and s.context_overlap > 0
        # EchoMimic's frame count (its context windows wrap around it); otherwise the audio's length in frames.
        total = self.speech_encoder.frames_for(audio.size, fps) if context_windows \
            else max(1, round(audio.size * fps / SAMPLE_RATE))
        num_clips = math.ceil(total / clip_frames)

        # 2. Portrait: latents, cached reference bank, face features (reused if given).
        state = portrait_state or self.prepare_portrait(portrait, face_mask, face_embedding)

        # 3. Audio tokens for every frame, from one pass over the whole file, up to whole clips.
        tokens = self.encode_whole(audio, total, clip_frames, fps)
        speed = None
        if speed_buckets is not None:
            speed = torch.as_tensor(np.asarray(speed_buckets, dtype=np.float32))[None]
            if speed.shape[1] < num_clips * clip_frames:
                speed = torch.cat([speed, speed[:, -1:].expand(1, num_clips * clip_frames - speed.shape[1], -1)], 1)

        steps = num_inference_steps or s.num_inference_steps
        clips = []
        if context_windows:
            # 4a. No motion frames: the whole video at once in overlapping context windows (EchoMimic).
            with self.progress_bar(total=steps) as bar:
                latents = self.denoise_video(state, tokens[:, :total], steps, guidance_scale, clip_frames,
                                             speed_buckets=None if speed is None else speed[:, :total],
                                             generator=generator, progress_bar=bar)
            for start in range(0, total, clip_frames):
                clips.append(self.decode_latents(latents[:, :, start:start + clip_frames], decoder, state).cpu())
        else:
            # 4b. Clip by clip, each continuing the previous through its motion frames.
            carry = None
            with self.progress_bar(total=num_clips * steps) as bar:
                for i in range(num_clips):
                    window = slice(i * clip_frames, (i + 1) * clip_frames)
                    latents, carry = self.denoise_clip(
                        state, tokens[:, window], carry, steps, guidance_scale, motion_frames, noise_correlation,
                        None if speed is None else speed[:, window], generator, progress_bar=bar)
                    # 5. Decode this clip now: memory stays flat however long the audio is.
                    clips.append(self.decode_latents(latents, decoder, state).cpu())
        video = torch.cat(clips)[:total]

        # 6. Output.
        frames: np.ndarray | torch.Tensor = video
        if output_type == "np":
            frames = (video.permute(0, 2, 3, 1) * 255.0).round().to(torch.uint8).numpy()
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames, float(fps))
        return EmoPipelineOutput(frames=frames, fps=float(fps))
