"""The emo backend: the EMO diffusion model behind the Animator contract, streaming clip by clip.

Per portrait (``prepare``): one VAE encode, one ReferenceNet pass and one face-locator pass, cached on the
device by ``Avatar.cache_key`` in a byte-bounded LRU (``emo_cache``). Every window after that pays only for
the speech encoder on a short audio segment and the denoiser.

Streaming. Windows (one 40 ms window per frame at 25 fps) are gathered into clips of ``clip_frames`` frames
(2–4 for streaming). A clip is sampled once its own windows *and* the audio lookahead its tokens need have
arrived: ``A`` more windows (``emo_audio.audio_reach``; 2 for the tiny checkpoint's log-mel encoder). Each clip
continues the previous one through its motion frames (the previous clip's last ``motion_frames`` latents,
through the ReferenceNet into the temporal layers: EMO's clip continuation) and its continued initial noise.
The frames of a clip come out together, in one burst, on the feed that completes the clip's lookahead.

Latency (constant, declared): ``latency_frames = clip_frames - 1 + max(A, lite latency)``. The first frame of
a clip (window ``n``) is the one that waits longest: its clip needs windows up to ``n + clip_frames - 1``, and
its tokens ``A`` windows more, so it comes out on the feed of window ``n + latency_frames``; the clip's later
frames come out on the same feed, i.e. earlier than their bound. The lite fall-back's own lookahead (1 frame)
is covered too, so a clip's lite frames are ready on the same feed. Tiny checkpoint, ``clip_frames=4``:
``4 - 1 + 2 = 5`` frames (200 ms) before compute. ``flush`` emits everything held (the last clip padded with
silence); a gap in the window pts up to ``max_gap_frames`` is filled with silence (no frames for the missing
windows); a longer gap (or pts going back) closes the clip in progress as ``flush`` does and starts anew.

Sampling: few steps (default ``min(checkpoint steps, 4)``) with the checkpoint's LCM/TCD scheduler, or an
LCM scheduler made from its config if it names DDIM. A checkpoint whose ``inference.guidance_scale`` is <= 1
is distilled with guidance folded in: one batch row per session; > 1 doubles the rows (classifier-free
guidance, EchoMimic/Hallo's unconditional recipe). ``feed_batch`` samples the clips of all sessions that
complete one in a single batched call (``emo_sampler``), each with its own reference bank, motion carry and
seeded generator.

Idle (``idle_mode``): ``"denoise"`` (default) samples a clip of ``clip_frames`` frames with silent audio tokens,
continuing the motion carry, and serves it one frame per ``idle`` call (consecutive pts), so the face keeps
the model's own idle motion and look and speech picks up from it seamlessly; ``"hold"`` repeats the last
frame; ``"lite"`` uses the lite rig's idle motion (breathing, blinks, sway).

Fall-back: each session has a lite state fed every window (``emo_fallback.LiteShadow``). When a batched clip
call fails (an exception in the model: the device) or, with ``realtime``, takes longer than ``budget_s``
(default ``clip_frames / fps``: a session needs a clip per ``clip_frames`` frame periods, or it falls behind
real time), the sessions in that call get lite frames for their next clip(s) — 1, 2, 4, … up to
``MAX_BACKOFF_CLIPS`` while it keeps failing — then the emo path is tried again. A failed call's clip is
rendered by lite at once; a late call's frames are still used (they are computed). Counted in
``stats.fallback_frames``; frame count and pts are the same whichever path made a clip.

Frames carry a matte: the person matte of the avatar from its lite rig (the portrait's, not re-segmented per
frame), so backgrounds and overlays work.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emo_stream.animators.base import Animator, check_avatar_size
from emo_stream.animators.emo_audio import AudioReach, AudioTrack, audio_reach
from emo_stream.animators.emo_cache import ByteLRU, CacheStats
from emo_stream.animators.emo_fallback import LITE_MIN_SIZE, LiteShadow, resize_square, scaled_avatar
from emo_stream.animators.emo_sampler import BATCH_BUCKETS, ClipRequest, decode_batch, denoise_batch
from emo_stream.animators.lite import LiteAnimator
from emo_stream.errors import CheckpointError, ConfigError
from emo_stream.models.schedulers import SCHEDULERS
from emo_stream.pipelines.pipeline_emo import EmoPipeline, MotionCarry, PortraitState
from emo_stream.streaming import frame_pts, iter_windows, samples_per_frame
from emo_stream.types import PTS_CLOCK_RATE, AudioWindow, Avatar, Frame

logger = logging.getLogger(__name__)

ENGINE_RATE = 16_000
STREAM_CLIP_FRAMES = 4  # live clips: 160 ms at 25 fps
FEW_STEP_SCHEDULERS = ("LCMScheduler", "TCDScheduler")
IDLE_MODES = ("denoise", "hold", "lite")
MAX_BACKOFF_CLIPS = 16
FACE_MASK_MARGIN = 0.15  # the face-locator mask: the landmarks' box grown by this much each side


@dataclass
class EmoStats:
    """Counters of one EmoAnimator (all sessions).

    Attributes:
        batches: batched emo clip calls (denoise + decode), for talking and idle clips.
        clips: session clips sampled by the model.
        emo_frames / fallback_frames: frames emitted by the model / by the lite fall-back.
        idle_frames: frames returned by ``idle`` (any path).
        late_batches: calls slower than the real-time budget.
        device_errors: calls (or portrait encodings) that raised.
        batch_seconds: recent (batch size, seconds) of the emo calls.
    """

    batches: int = 0
    clips: int = 0
    emo_frames: int = 0
    fallback_frames: int = 0
    idle_frames: int = 0
    late_batches: int = 0
    device_errors: int = 0
    batch_seconds: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=4096))
    cache: CacheStats = field(default_factory=CacheStats)

    def to_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "clips": self.clips, "emo_frames": self.emo_frames,
                "fallback_frames": self.fallback_frames, "idle_frames": self.idle_frames,
                "late_batches": self.late_batches, "device_errors": self.device_errors,
                "cache": vars(self.cache).copy()}


@dataclass
class _Slot:
    """One window of the stream: its index, and its pts (None: a phantom window of silence, no frame)."""

    index: int
    pts: int | None


@dataclass
class EmoState:
    """One session: its avatar, cached portrait features, generator, audio, motion carry and lite shadow."""

    avatar: Avatar
    seed: int
    generator: torch.Generator
    portrait: PortraitState | None  # None: the portrait could not be encoded (lite only)
    lite: LiteShadow
    audio: AudioTrack
    slots: list[_Slot] = field(default_factory=list)  # windows from clip_start on
    clip_start: int | None = None  # index of the clip in progress; None: no segment open
    next_index: int = 0
    last_pts: int | None = None
    carry: MotionCarry | None = None
    lite_clips: int = 0  # clips left on the lite path (back-off after a late/failed call)
    idle_frames: dict[int, Frame] = field(default_factory=dict)
    last_frame: Frame | None = None
    emo_frames: int = 0
    fallback_frames: int = 0
    # Offline (``whole_video``): the stream index of the file's first frame and the whole file's audio tokens
    # [1, F, N, C], encoded once, that clips take instead of encoding their bounded segments.
    file_tokens: tuple[int, torch.Tensor] | None = None


@dataclass(eq=False)
class _Clip:
    state: EmoState
    slots: list[_Slot]
    wave: np.ndarray | None  # the audio segment for the tokens; None: silence (idle)
    offset: int = 0  # frames of ``wave`` before the clip's first frame
    wave_start: int = 0  # frames between the utterance's start (``AudioTrack.segment_start``) and ``wave``'s
    idle: bool = False


class EmoAnimator(Animator[EmoState]):
    """The Animator contract over an EMO checkpoint. One instance serves many sessions (one worker thread).

    Args:
        pipeline: the loaded models (``EmoPipeline.from_checkpoint`` / ``from_components``).
        size: output side in pixels (frames are resized from the checkpoint's ``sample_size``); avatars must be
            prepared at this size.
        fps: frames per second (one 16 kHz window per frame).
        clip_frames: frames per clip (default: 4 live, 2–4 keeps latency low; offline the checkpoint's own).
        steps: sampler steps (default: the checkpoint's; live at most 4 unless the checkpoint has its own step
            rule, EchoMimic acc's 6).
        guidance_scale: default the checkpoint's; <= 1 runs one row per session.
        scheduler: ``LCMScheduler`` / ``TCDScheduler`` / ``DDIMScheduler``; default the checkpoint's if few-step,
            offline, or with its own step rule, else LCM from its config.
        decoder: ``"small"`` (streaming default when the checkpoint has one) or ``"vae"`` (offline quality).
        idle_mode: ``"denoise"``, ``"hold"`` or ``"lite"`` (module docstring).
        cache_bytes: bound of the portrait cache (default 1 GiB on CUDA, 256 MiB elsewhere).
        cache_reference: False re-encodes the portrait (VAE + ReferenceNet) for every clip (a baseline).
        realtime: fall back to lite when a call is slower than ``budget_s`` (False for offline renders).
        budget_s: real-time budget of one batched clip call (default ``clip_frames / fps``).
        audio_context_s: past audio for speech encoders with a global receptive field.
        max_gap_frames: pts gaps filled with silence up to this many windows (default ``latency_frames``).
        motion: the lite fall-back's motion strength.
        lite_motion: the lite fall-back's motion, ``learned`` or ``rules``.
        compile: ``torch.compile`` the decoder and the denoiser's resnet/temporal blocks (GPU).
        batch_buckets: run batches of sessions padded up to these sizes (static shapes); default
            ``BATCH_BUCKETS`` (1, 2, 4, 8) when compiled, else none (padding only costs when nothing is compiled).
        warmup: run one clip at start so the first real clip is not slowed by lazy initialisation.
    """

    name = "emo"

    def __init__(self, pipeline: EmoPipeline, *, size: int | None = None, fps: int = 25, clip_frames: int | None = None,
                 steps: int | None = None, guidance_scale: float | None = None, scheduler: str | None = None,
                 decoder: str | None = None, idle_mode: str = "denoise", cache_bytes: int | None = None,
                 cache_reference: bool = True, realtime: bool = True, budget_s: float | None = None,
                 audio_context_s: float = 2.0, max_gap_frames: int | None = None, motion: float = 1.0,
                 lite_motion: str = "learned", compile: bool = False, warmup: bool = False,
                 batch_buckets: tuple[int, ...] | None = None) -> None:
        settings = pipeline.settings
        self.pipe = pipeline
        self.settings = settings
        self.sample_size = int(settings.sample_size)
        self.size = int(size or self.sample_size)
        self.fps = int(fps)
        self.spf = samples_per_frame(ENGINE_RATE, self.fps)
        if settings.fps != self.fps:
            logger.warning("checkpoint was made for %s fps, streaming at %s fps", settings.fps, self.fps)
        # Live: short clips keep latency low. Offline: the checkpoint's own clip length (EchoMimic's 12-frame
        # context windows, Hallo's 16-frame clips), as its source renders a file.
        if clip_frames is None:
            clip_frames = STREAM_CLIP_FRAMES if realtime else settings.clip_frames
        self.clip_frames = int(clip_frames)
        self.motion_frames = int(settings.motion_frames)
        if self.clip_frames < 1:
            raise ConfigError(f"clip_frames must be >= 1, got {clip_frames}")
        limit = pipeline.denoiser.max_frames
        if self.clip_frames + self.motion_frames > limit:
            raise CheckpointError(f"a clip of {self.clip_frames} frames + {self.motion_frames} motion frames "
                                  f"exceeds the denoiser's temporal positions ({limit})")
        # Offline renders and step-distilled sources (EchoMimic acc: 6) run the checkpoint's own steps and
        # scheduler; live, other checkpoints run at most 4 steps with a few-step scheduler.
        self.own_sampler = not realtime or settings.step_rule != "scheduler"
        self.steps = int(steps or (settings.num_inference_steps if self.own_sampler
                                   else min(settings.num_inference_steps, 4)))
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}")
        self.guidance_scale = float(settings.guidance_scale if guidance_scale is None else guidance_scale)
        self.noise_correlation = float(settings.noise_correlation)
        self._set_scheduler(scheduler)
        if decoder is None:
            decoder = "small" if pipeline.small_decoder is not None else "vae"
        if decoder not in ("small", "vae"):
            raise ConfigError(f"decoder must be 'small' or 'vae', got {decoder!r}")
        if decoder == "small" and pipeline.small_decoder is None:
            raise CheckpointError("decoder 'small' asked for, but the checkpoint has no small_decoder")
        self.decoder = decoder
        if idle_mode not in IDLE_MODES:
            raise ConfigError(f"idle_mode must be one of {IDLE_MODES}, got {idle_mode!r}")
        self.idle_mode = idle_mode
        self.cache_reference = cache_reference
        self.realtime = realtime
        self.budget_s = float(budget_s if budget_s is not None else self.clip_frames / self.fps)

        self.reach: AudioReach = audio_reach(pipeline.speech_encoder, self.fps, audio_context_s)
        self.lookahead_frames = self.reach.lookahead_frames(self.spf)
        self.context_frames = self.reach.context_frames(self.spf)
        self._lite = LiteAnimator(size=max(self.size, LITE_MIN_SIZE), fps=self.fps, motion=motion,
                                  lite_motion=lite_motion)
        # The protocol's bound: the first frame of a clip waits for the rest of its clip and the lookahead.
        self.latency_frames = self.clip_frames - 1 + max(self.lookahead_frames, self._lite.latency_frames)
        self.max_gap_frames = self.latency_frames if max_gap_frames is None else int(max_gap_frames)

        device = pipeline._model_device
        self.device = device
        if cache_bytes is None:
            cache_bytes = (1 << 30) if device.type == "cuda" else (256 << 20)
        self._portraits: ByteLRU[PortraitState] = ByteLRU(cache_bytes)
        self.stats = EmoStats(cache=self._portraits.stats)
        self._backoff = 0
        self._silent: torch.Tensor | None = None
        if device.type == "cuda":
            # TF32 for any float32 matmul/conv left (attention is SDPA: flash / memory-efficient kernels in
            # half precision). No cudnn.benchmark: a new batch size would re-tune and read as a late clip.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.batch_buckets = batch_buckets if batch_buckets is not None else (BATCH_BUCKETS if compile else None)
        if compile:
            self._compile()
        if warmup:
            self.warmup()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, folder: str | Path, size: int | None = None, fps: int = 25, device: str = "cpu",
                        dtype: str | torch.dtype | None = None, **options: Any) -> EmoAnimator:
        """Load a checkpoint folder (``emo_stream.models.load_checkpoint``) and make the animator.

        Args:
            dtype: None = float16 on CUDA, float32 elsewhere; or "float16" / "bfloat16" / "float32".
            options: ``EmoAnimator`` keyword arguments (``warmup`` defaults to True here).

        Raises:
            CheckpointError: a missing, incomplete or mismatched checkpoint (the message names the part).
            ConfigError: a device or option that cannot be used.
        """
        from emo_stream.models.checkpoint import load_checkpoint

        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            raise ConfigError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU")
        torch_dtype = _resolve_dtype(dtype, dev)
        components = load_checkpoint(folder, dev, torch_dtype)
        pipe = EmoPipeline.from_components(components)
        pipe.set_progress_bar_config(disable=True)
        options.setdefault("warmup", True)
        return cls(pipe, size=size, fps=fps, **options)

    def _set_scheduler(self, name: str | None) -> None:
        current = type(self.pipe.scheduler).__name__
        if name is None:
            keep = current in FEW_STEP_SCHEDULERS or self.own_sampler
            name = current if keep else "LCMScheduler"
        if name not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler {name!r} (known: {', '.join(SCHEDULERS)})")
        if name != current:
            self.pipe.scheduler = SCHEDULERS[name].from_config(self.pipe.scheduler.config)
        self.scheduler_name = name

    def _compile(self) -> None:
        from diffusers.models.resnet import ResnetBlock2D

        from emo_stream.models.temporal import MotionModule

        # Frames are only decoded per tick: compile the VAE's decoder, not its encoder.
        decoder = self.pipe.small_decoder if self.decoder == "small" else self.pipe.vae.decoder
        if decoder is not None:
            decoder.compile()
        for module in self.pipe.denoiser.modules():
            if isinstance(module, ResnetBlock2D | MotionModule):
                module.compile()

    def warmup(self) -> None:
        """A silent clip on a blank portrait, once per batch bucket (first clips and continuing ones): lazy
        kernels, allocations and compiles happen here, not in a session."""
        blank = np.full((self.sample_size, self.sample_size, 3), 128, np.uint8)
        portrait = self.pipe.prepare_portrait(blank)
        for size in self.batch_buckets or (1,):
            requests = [ClipRequest(portrait, self._silent_tokens(), None, torch.Generator().manual_seed(k))
                        for k in range(size)]
            with torch.no_grad():
                for _ in range(2 if self.motion_frames else 1):  # without a carry, then with one
                    latents, carries = denoise_batch(self.pipe, requests, self.steps, self.guidance_scale,
                                                     self.motion_frames, self.noise_correlation, self.batch_buckets)
                    requests = [dataclasses.replace(r, carry=c) for r, c in zip(requests, carries, strict=True)]
                decode_batch(self.pipe, latents, self.decoder, buckets=self.batch_buckets)

    # ------------------------------------------------------------------ portraits
    def face_mask(self, avatar: Avatar) -> np.ndarray:
        """The face-locator mask of ``avatar``: its landmarks' box, grown by ``FACE_MASK_MARGIN``, in [0, 1]."""
        x0, y0, x1, y1 = avatar.landmarks.bbox
        mx, my = (x1 - x0) * FACE_MASK_MARGIN, (y1 - y0) * FACE_MASK_MARGIN
        size = avatar.size
        mask = np.zeros((size, size), np.float32)
        top, bottom = max(0, int(np.floor(y0 - my))), min(size, int(np.ceil(y1 + my)))
        left, right = max(0, int(np.floor(x0 - mx))), min(size, int(np.ceil(x1 + mx)))
        mask[top:bottom, left:right] = 1.0
        return mask

    def encode_portrait(self, avatar: Avatar) -> PortraitState:
        """VAE latents, reference bank, face features of ``avatar`` (not cached: see ``prepare``)."""
        state = self.pipe.prepare_portrait(avatar.image, face_mask=self.face_mask(avatar))
        # Decoded now, not on first use: the portrait cache counts a state's bytes when it enters.
        self.pipe.residual_base(state, self.decoder)
        return state

    @property
    def cache(self) -> ByteLRU[PortraitState]:
        return self._portraits

    def warm(self, avatar: Avatar) -> None:
        """The lite shadow's rig, off the feeding thread (``LiteAnimator.warm``). The portrait's reference
        features stay with ``prepare``: device work belongs to the thread that owns the device."""
        check_avatar_size(avatar, self.size)
        self._lite.warm(scaled_avatar(avatar, self._lite.size))

    def prepare(self, avatar: Avatar, seed: int = 0) -> EmoState:
        check_avatar_size(avatar, self.size)
        portrait: PortraitState | None
        try:
            portrait = self._portraits.get_or_create(avatar.cache_key, lambda: self.encode_portrait(avatar))
        except Exception:  # the device failed: this session runs on lite
            logger.exception("emo: encoding the portrait failed; the session falls back to lite")
            self.stats.device_errors += 1
            portrait = None
        return EmoState(avatar=avatar, seed=seed, generator=torch.Generator().manual_seed(seed), portrait=portrait,
                        lite=LiteShadow(self._lite, avatar, self.size, seed), audio=AudioTrack(self.spf))

    # ------------------------------------------------------------------ windows -> clips
    def _check(self, window: AudioWindow) -> None:
        if window.sample_rate != ENGINE_RATE:
            raise ValueError(f"the emo animator takes 16 kHz windows, got {window.sample_rate} Hz")
        if len(window.samples) != self.spf:
            raise ValueError(f"windows must hold {self.spf} samples (one frame), got {len(window.samples)}")

    def _append(self, state: EmoState, samples: np.ndarray | None, pts: int | None, lite: bool = True) -> None:
        index = state.next_index
        state.next_index += 1
        state.slots.append(_Slot(index, pts))
        state.audio.append(samples)
        if lite:
            state.lite.push(samples if samples is not None else np.zeros(self.spf, np.float32),
                            index if pts is not None else None)

    def _align_down(self, state: EmoState, index: int) -> int:
        start = state.audio.segment_start
        if index <= start:
            return start
        step = self.reach.align_frames
        return start + ((index - start) // step) * step

    def _take_clips(self, state: EmoState, final: bool = False) -> list[_Clip]:
        """Clips whose windows and lookahead are all in (``final``: the segment ends, no more audio comes)."""
        clips = []
        F = self.clip_frames
        while state.clip_start is not None and state.slots:
            start = state.clip_start
            if not final and state.audio.end < start + F + self.lookahead_frames:
                break
            first = self._align_down(state, start - self.context_frames)
            end = min(start + F + self.lookahead_frames, state.audio.end)
            clips.append(_Clip(state, state.slots[:F], state.audio.segment(first, end), offset=start - first,
                               wave_start=first - state.audio.segment_start))
            del state.slots[:F]
            state.clip_start = start + F
            state.audio.trim(self._align_down(state, state.clip_start - self.context_frames))
        return clips

    def _close(self, state: EmoState) -> list[_Clip]:
        """End the segment: pad the clip in progress with silence and take every clip left."""
        if state.clip_start is None:
            return []
        while len(state.slots) % self.clip_frames:
            self._append(state, None, None, lite=False)
        state.lite.drain(self.spf)
        clips = self._take_clips(state, final=True)
        state.clip_start = None
        state.slots.clear()
        state.audio.clear()
        return clips

    def _ingest(self, state: EmoState, window: AudioWindow) -> list[_Clip]:
        clips: list[_Clip] = []
        state.idle_frames.clear()
        if state.clip_start is not None and state.last_pts is not None:
            step = (window.start_pts - state.last_pts) * self.fps / PTS_CLOCK_RATE
            delta = round(step)
            if 1 < delta <= 1 + self.max_gap_frames:
                for _ in range(delta - 1):
                    self._append(state, None, None)
            elif delta != 1:
                clips.extend(self._close(state))
        if state.clip_start is None:
            state.clip_start = state.next_index
            state.audio.start(state.next_index)
        self._append(state, window.samples, window.start_pts)
        state.last_pts = window.start_pts
        clips.extend(self._take_clips(state))
        return clips

    # ------------------------------------------------------------------ clips -> frames
    def _silent_tokens(self) -> torch.Tensor:
        if self._silent is None:
            frames = self.context_frames + self.clip_frames + self.lookahead_frames
            tokens = self.pipe.encode_audio(np.zeros(frames * self.spf, np.float32), frames, self.fps)
            self._silent = tokens[:, self.context_frames:self.context_frames + self.clip_frames]
        return self._silent

    def _tokens(self, clip: _Clip) -> torch.Tensor:
        if clip.wave is None:
            return self._silent_tokens()
        if clip.state.file_tokens is not None:
            start, whole = clip.state.file_tokens
            first = clip.slots[0].index - start
            if 0 <= first and first + self.clip_frames <= whole.shape[1]:
                return whole[:, first:first + self.clip_frames]
        # Every frame of the segment, lookahead included: wav2vec2 interpolates its states over the frames asked
        # for, so asking for fewer would stretch the clip's frames over the lookahead's audio.
        tokens = self.pipe.encode_audio(clip.wave, len(clip.wave) // self.spf, self.fps, clip.wave_start)
        return tokens[:, clip.offset:clip.offset + self.clip_frames]

    def _sample(self, clips: list[_Clip]) -> np.ndarray:
        """One batched model call for ``clips`` (distinct sessions) → [B, F, S, S, 3] uint8."""
        requests = []
        for clip in clips:
            state = clip.state
            portrait = state.portrait if self.cache_reference else self.encode_portrait(state.avatar)
            if portrait is None:
                raise RuntimeError("a session without an encoded portrait is rendered by lite, not sampled")
            requests.append(ClipRequest(portrait, self._tokens(clip), state.carry, state.generator))
        latents, carries = denoise_batch(self.pipe, requests, self.steps, self.guidance_scale, self.motion_frames,
                                         self.noise_correlation, self.batch_buckets)
        pixels = decode_batch(self.pipe, latents, self.decoder, [r.portrait for r in requests], self.batch_buckets)
        for clip, carry in zip(clips, carries, strict=True):
            clip.state.carry = carry
        return pixels

    def _back_off(self, clips: list[_Clip]) -> None:
        self._backoff = min(max(1, 2 * self._backoff), MAX_BACKOFF_CLIPS)
        for clip in clips:
            clip.state.lite_clips = max(clip.state.lite_clips, self._backoff)

    def _emo_frames(self, clip: _Clip, pixels: np.ndarray) -> list[Frame]:
        state = clip.state
        frames = []
        for slot, rgb in zip(clip.slots, pixels, strict=True):
            if slot.pts is None:
                continue
            frames.append(Frame(rgb=resize_square(rgb, self.size), pts=slot.pts, matte=state.lite.matte))
        state.emo_frames += len(frames)
        self.stats.emo_frames += len(frames)
        return frames

    def _lite_frames(self, clip: _Clip) -> list[Frame]:
        state = clip.state
        if clip.idle:
            frames = [state.lite.idle(slot.pts) for slot in clip.slots[:1] if slot.pts is not None]
        else:
            frames = [state.lite.frame(slot.index, slot.pts) for slot in clip.slots if slot.pts is not None]
        state.fallback_frames += len(frames)
        self.stats.fallback_frames += len(frames)
        return frames

    def _render(self, clips: list[_Clip]) -> list[list[Frame]]:
        """Frames of ``clips`` (at most one per session): one batched model call, lite where it must."""
        emo: list[_Clip] = []
        lite: list[_Clip] = []
        for clip in clips:
            state = clip.state
            if state.portrait is None and self.cache_reference:
                lite.append(clip)
            elif state.lite_clips > 0:
                state.lite_clips -= 1
                lite.append(clip)
            else:
                emo.append(clip)
        out: dict[_Clip, list[Frame]] = {}
        if emo:
            started = time.perf_counter()
            try:
                pixels = self._sample(emo)
            except Exception:  # the device failed: these clips come from lite, and lite takes over a while
                logger.exception("emo: clip sampling failed; %d session(s) fall back to lite", len(emo))
                self.stats.device_errors += 1
                self._back_off(emo)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                lite.extend(emo)
            else:
                elapsed = time.perf_counter() - started
                self.stats.batches += 1
                self.stats.clips += len(emo)
                self.stats.batch_seconds.append((len(emo), elapsed))
                if self.realtime and elapsed > self.budget_s:
                    self.stats.late_batches += 1
                    self._back_off(emo)
                else:
                    self._backoff = 0
                for clip, clip_pixels in zip(emo, pixels, strict=True):
                    out[clip] = self._emo_frames(clip, clip_pixels)
        for clip in lite:
            out[clip] = self._lite_frames(clip)
        results = []
        for clip in clips:
            frames = out[clip]
            if frames:
                clip.state.last_frame = frames[-1]
            if not clip.idle:
                clip.state.lite.forget_before(clip.slots[-1].index + 1)
            results.append(frames)
        return results

    def _run(self, per_item: list[list[_Clip]]) -> list[list[Frame]]:
        """Render every item's clips in order: round r batches the r-th pending clip of every session."""
        outputs: list[list[Frame]] = [[] for _ in per_item]
        queues: dict[int, deque[tuple[int, _Clip]]] = {}
        for item, clips in enumerate(per_item):
            for clip in clips:
                queues.setdefault(id(clip.state), deque()).append((item, clip))
        while queues:
            round_ = [q.popleft() for q in queues.values()]
            for (item, _), frames in zip(round_, self._render([c for _, c in round_]), strict=True):
                outputs[item].extend(frames)
            queues = {k: q for k, q in queues.items() if q}
        return outputs

    # ------------------------------------------------------------------ protocol
    @property
    def renders_whole_video(self) -> bool:
        """Offline, the whole audio is known before the first frame, and the sources use it (``whole_video``)."""
        return not self.realtime

    @property
    def _context_windows(self) -> bool:
        """A checkpoint without motion frames that asks for context windows (EchoMimic): denoised whole."""
        return self.motion_frames == 0 and self.settings.context_overlap > 0

    def whole_video(self, state: EmoState, wave: np.ndarray) -> Iterator[Frame]:
        """Frames for all of ``wave`` (16 kHz), as the checkpoint's source renders a file.

        Context-window checkpoints (EchoMimic): one ``denoise_video`` pass in overlapping context windows, then
        decoded ``clip_frames`` at a time; latents of the whole video are held (16 KiB per frame at 512²).
        Motion-frame checkpoints (Hallo, ours): clip by clip as live, but every clip's audio tokens come from
        one pass of the speech encoder over the whole file (``EmoPipeline.encode_whole``), not from its bounded segment.
        """
        if not self._context_windows:
            yield from self._clip_by_clip(state, wave)
            return
        if state.portrait is None:
            raise CheckpointError("the portrait could not be encoded on this device")
        total = self.pipe.speech_encoder.frames_for(wave.size, self.fps)
        tokens = self.pipe.encode_audio(wave, total, self.fps)
        latents = self.pipe.denoise_video(state.portrait, tokens, self.steps, self.guidance_scale, self.clip_frames,
                                          generator=state.generator)
        ticks = PTS_CLOCK_RATE // self.fps
        for start in range(0, total, self.clip_frames):
            pixels = decode_batch(self.pipe, latents[:, :, start:start + self.clip_frames], self.decoder,
                                  [state.portrait])[0]
            for k, rgb in enumerate(pixels):
                self.stats.emo_frames += 1
                yield Frame(rgb=resize_square(rgb, self.size), pts=(start + k) * ticks, matte=state.lite.matte)

    def _clip_by_clip(self, state: EmoState, wave: np.ndarray) -> Iterator[Frame]:
        """Clip by clip as live, the tokens from one pass over the whole file (``EmoPipeline.encode_whole``:
        up to whole clips, as Hallo pads a file)."""
        if state.portrait is not None:
            frames = math.ceil(wave.size / self.spf)
            state.file_tokens = (state.next_index, self.pipe.encode_whole(wave, frames, self.clip_frames, self.fps))
        try:
            for window in iter_windows([wave], ENGINE_RATE, self.fps):
                yield from self.feed(window, state)
            yield from self.flush(state)
        finally:
            state.file_tokens = None

    def feed(self, window: AudioWindow, state: EmoState) -> list[Frame]:
        return self.feed_batch([(window, state)])[0]

    def feed_batch(self, items: list[tuple[AudioWindow, EmoState]]) -> list[list[Frame]]:
        for window, _ in items:
            self._check(window)
        return self._run([self._ingest(state, window) for window, state in items])

    def flush(self, state: EmoState) -> list[Frame]:
        state.idle_frames.clear()
        return self._run([self._close(state)])[0]

    def reset(self, state: EmoState) -> None:
        state.slots.clear()
        state.clip_start = None
        state.last_pts = None
        state.audio.clear()
        state.carry = None
        state.idle_frames.clear()
        state.lite.reset()

    def idle(self, state: EmoState, pts: int) -> Frame:
        return self.idle_batch([(state, pts)])[0]

    def idle_batch(self, items: list[tuple[EmoState, int]]) -> list[Frame]:
        """``idle`` for many sessions: the sessions that need a new silent clip share one model call."""
        out: list[Frame | None] = [None] * len(items)
        wanted: list[tuple[int, _Clip]] = []
        for k, (state, pts) in enumerate(items):
            self.stats.idle_frames += 1
            frame = state.idle_frames.pop(pts, None)
            if frame is None:
                state.idle_frames.clear()
                if self.idle_mode == "hold":
                    held = state.last_frame
                    frame = (Frame(rgb=held.rgb, pts=pts, matte=held.matte) if held is not None
                             else Frame(rgb=state.avatar.image, pts=pts, matte=state.lite.matte))
                elif self.idle_mode == "lite":
                    frame = state.lite.idle(pts)
            if frame is not None:
                out[k] = frame
                continue
            slots = [_Slot(-1, pts + frame_pts(j, self.fps)) for j in range(self.clip_frames)]
            wanted.append((k, _Clip(state, slots, None, idle=True)))
        for (k, clip), frames in zip(wanted, self._run([[clip] for _, clip in wanted]), strict=True):
            out[k] = frames[0]
            for frame in frames[1:]:
                clip.state.idle_frames[frame.pts] = frame
        return [frame for frame in out if frame is not None]

    @property
    def margin_ticks(self) -> int:
        """Ticks a live session must allow for one clip call: its real-time budget, rounded up
        (a call within budget is never late; the server delays by at least this much)."""
        return math.ceil(self.budget_s * self.fps - 1e-9)

    def stats_dict(self) -> dict[str, Any]:
        return {**self.stats.to_dict(), "latency_frames": self.latency_frames, "clip_frames": self.clip_frames,
                "steps": self.steps, "scheduler": self.scheduler_name, "guidance_scale": self.guidance_scale,
                "decoder": self.decoder, "budget_s": self.budget_s}


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}
    if dtype not in table:
        raise ConfigError(f"dtype must be one of {', '.join(table)}, got {dtype!r}")
    return table[dtype]
