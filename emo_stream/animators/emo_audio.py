"""Streaming speech features for the emo backend: how far a frame's audio tokens reach, and a per-session
audio track that cuts the segment one clip's tokens need.

A frame's audio tokens are the speech encoder's states around the frame's time (``window_before`` states
before, ``window_after`` after), and each state reads the audio its front end and layers see. ``audio_reach``
works out, for a speech encoder and a frame rate, how many samples before a frame's start and after its end
its tokens read:

- ``logmel`` (Whisper log-mel with a fixed floor, a stride-2 conv stem and k=3 convs, per-frame norms) has a
  bounded receptive field, so the reach is exact: a streaming segment that covers it gives the tokens the
  offline pipeline computes from the whole audio (to float rounding);
- ``whisper`` (global self-attention over a 30 s block, a relative log-mel floor) and ``wav2vec2`` (whole-input
  normalisation, global attention, states interpolated over the input) read all of their input: the stream
  gives them ``context_s`` of past audio and the stem's/window's future audio, an approximation of the
  offline features that EchoMimic/Hallo-style real-time ports make too. Whisper's segment is placed where the
  utterance puts it in its 30 s block, so its states keep their offline positions (``SpeechEncoder``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import cast

import numpy as np
from torch import nn

from emo_stream.models.speech_encoder import MEL_FFT, MEL_HOP, SAMPLE_RATE, SpeechEncoder, frame_centres


@dataclass(frozen=True)
class AudioReach:
    """How much audio around a frame its tokens read, in samples at 16 kHz.

    Attributes:
        left_samples: before the frame's first sample.
        right_samples: after the frame's last sample (0 if the tokens read nothing past the frame).
        exact: the encoder's receptive field is bounded and covered: streamed tokens equal offline ones.
        align_frames: segment starts are kept on multiples of this many frames (from the stream's start) so
            the encoder's state grid lines up with the offline one.
    """

    left_samples: int
    right_samples: int
    exact: bool
    align_frames: int = 1

    def lookahead_frames(self, samples_per_frame: int) -> int:
        """Whole frames of audio past a frame's own window that its tokens need."""
        return max(0, math.ceil(self.right_samples / samples_per_frame))

    def context_frames(self, samples_per_frame: int) -> int:
        """Whole frames of audio before a frame's window that its tokens need."""
        return max(0, math.ceil(self.left_samples / samples_per_frame))


def audio_reach(encoder: SpeechEncoder, fps: int, context_s: float = 2.0) -> AudioReach:
    """The reach of ``encoder``'s per-frame tokens at ``fps`` (see the module docstring).

    Args:
        encoder: the checkpoint's speech encoder.
        fps: video frames per second (16 kHz must divide into it).
        context_s: past audio given to encoders with an unbounded receptive field (whisper, wav2vec2).
    """
    cfg = encoder.config
    spf = SAMPLE_RATE // fps
    before, after = int(cfg.window_before), int(cfg.window_after)
    if cfg.kind == "wav2vec2":
        # States at the video rate, interpolated from 20 ms CNN features (400-sample receptive field).
        left = before * spf + spf + MEL_FFT
        right = after * spf + MEL_FFT
        return AudioReach(left + round(context_s * SAMPLE_RATE), right, exact=False)
    state_hop = 2 * MEL_HOP  # both mel encoders have a stride-2 stem: 50 Hz states
    half = MEL_FFT // 2
    if cfg.kind == "logmel":
        layers = len(cast(nn.ModuleList, encoder.encoder.layers))
        stem = MEL_HOP * (1 + 2 * layers) + half  # conv_in k3/s2 then `layers` k3 convs on the states
    else:  # whisper: conv1 k3, conv2 k3/s2
        stem = 2 * MEL_HOP + half
    hz = float(cfg.states_hz)
    left = right = 0
    centres = frame_centres(2 * fps, fps, hz).tolist()
    for i, centre in enumerate(centres):  # the centre pattern repeats within a second
        first = state_hop * (centre - before) - stem
        last = state_hop * (centre + after) + stem
        left = max(left, i * spf - first)
        right = max(right, last - (i + 1) * spf)
    align = 1
    while (align * spf) % state_hop or (align * hz) % fps:
        align += 1
    exact = cfg.kind == "logmel"
    if not exact:
        left += round(context_s * SAMPLE_RATE)
    return AudioReach(int(left), int(max(0, right)), exact=exact, align_frames=align)


class AudioTrack:
    """One session's recent audio, one window per frame index (phantom windows are silence).

    Frame indices are the stream's own (see ``EmoAnimator``); the track keeps the windows from
    ``first`` on and forgets older ones when asked (``trim``), so it stays bounded however long the stream.
    """

    def __init__(self, samples_per_frame: int) -> None:
        self.spf = samples_per_frame
        self._windows: deque[np.ndarray] = deque()
        self.first = 0
        self.segment_start = 0

    @property
    def end(self) -> int:
        """One past the last frame index held."""
        return self.first + len(self._windows)

    def start(self, index: int) -> None:
        """Begin a new segment at frame ``index``: earlier audio is not continuous with what follows."""
        self._windows.clear()
        self.first = self.segment_start = index

    def append(self, samples: np.ndarray | None) -> None:
        """The next frame's window (None: a silent phantom window)."""
        if samples is None:
            samples = np.zeros(self.spf, np.float32)
        self._windows.append(np.asarray(samples, np.float32))

    def trim(self, keep_from: int) -> None:
        while self._windows and self.first < keep_from:
            self._windows.popleft()
            self.first += 1

    def segment(self, start: int, end: int) -> np.ndarray:
        """Samples of frames ``[start, end)`` (both within the track)."""
        if start < self.first or end > self.end or start > end:
            raise ValueError(f"frames [{start}, {end}) are not all held (track has [{self.first}, {self.end}))")
        windows = [self._windows[i - self.first] for i in range(start, end)]
        return np.concatenate(windows) if windows else np.zeros(0, np.float32)

    def clear(self) -> None:
        self._windows.clear()
