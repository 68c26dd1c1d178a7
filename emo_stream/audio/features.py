"""Per-video-frame speech features for the lite animator: loudness, spectrum, formants, pitch, closures.

The lite animator turns these into mouth shapes (jaw from loudness and F1, lip spread/rounding from F2,
lips pressed shut before a b/p/m burst), brows and nods (stress, pitch above the speaker's usual pitch)
and a more rhythmic head when someone sings. Everything is numpy: the lite path imports no torch.

Frame ``n`` describes the audio centred on ``n / fps`` seconds. To compute it the extractor reads
audio up to ``LOOKAHEAD_S`` past that centre (one 40 ms frame at 25 fps): enough to see whether a
quiet frame is followed by a burst, which is when the lips must already be closed. Offline
(`frame_features`) and streaming (`FeatureExtractor`) share one code path, so feeding audio in any
chunk sizes gives the same numbers.

Per frame the work is three small FFTs (512, 512 and 2048 points), a 10th-order LPC and its roots:
a few hundred microseconds on one core.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, fields

import numpy as np

ENGINE_SAMPLE_RATE = 16_000
DEFAULT_FPS = 25.0

# How far past a frame's centre the extractor reads. One frame at 25 fps: the closure cue needs to see
# the burst that follows a silent gap, and the pitch window (±25 ms) fits inside it.
LOOKAHEAD_S = 0.040
LOOKAHEAD_SAMPLES = round(LOOKAHEAD_S * ENGINE_SAMPLE_RATE)  # 640 at the engine's 16 kHz

# Analysis windows, in seconds. The spectral window is the usual 32 ms speech frame; the pitch window
# holds three periods of the lowest pitch we look for, which Boersma's method needs.
_SPECTRUM_WINDOW_S = 0.032
_PITCH_WINDOW_S = 0.050
_BLOCK_S = 0.005  # energy blocks that time a burst inside the lookahead
_CENTRE_HALF_S = 0.010  # the "now" of the closure cue: ±10 ms around the centre

F0_MIN_HZ = 70.0
F0_MAX_HZ = 600.0
_VOICING_THRESHOLD = 0.45  # Praat's default: periodicity above this counts as voiced
_OCTAVE_COST = 0.04  # per octave of lag: prefers the fundamental over its subharmonics
_OCTAVE_JUMP_COST = 0.2  # per octave away from the pitch of the last 120 ms: keeps the track continuous
_PITCH_MEMORY_FRAMES = 3

BANDS_HZ = ((100.0, 900.0), (900.0, 2500.0), (2500.0, 8000.0))

# Loudness: decibels relative to full scale, normalised against an adaptive speech level.
_FLOOR_DB = -100.0
_GATE_DB = (-65.0, -55.0)  # below the first, silence; full weight above the second
_INITIAL_LEVEL_DB = -40.0  # low, so a quiet speaker is heard at once; loud ones are tracked up fast
_LOUDNESS_RANGE_DB = 30.0  # loudness 0 at this far below the speech level, 1 at the level
_NOISE_WINDOW_S = 3.0

# LPC formants on the 0-4 kHz band (the first three formants live there).
_LPC_BAND_HZ = 4000.0
_LPC_ORDER = 10
_PRE_EMPHASIS = 0.97

# Log-mel bands for the learned lite motion: 40 bands from 60 Hz to 7.6 kHz of the 32 ms spectrum.
MEL_BANDS = 40
MEL_RANGE_DB = 60.0
_MEL_FMIN_HZ, _MEL_FMAX_HZ = 60.0, 7600.0

_PITCH_REF_TAU_S = 2.0
_LEVEL_MEAN_TAU_S = 1.5
_SINGING_WINDOW_S = 0.8


@dataclass(frozen=True, slots=True)
class FrameFeatures:
    """Speech features of one video frame (the audio centred on ``time_s``).

    Attributes:
        index: frame number ``n``; the frame shows the audio centred on ``n / fps`` seconds.
        time_s: centre of the frame, in seconds from the first sample.
        rms: root-mean-square amplitude of the frame's span, ``time_s`` ± half a frame (full scale = 1).
        level_db: ``rms`` in dBFS, floored at -100.
        loudness: 0..1 against an adaptive speech level, so quiet and loud speakers both reach 1 on
            vowels; ~0 in silence and in background noise.
        band_low: share of the 100-8000 Hz energy in 100-900 Hz (F1 region, nasal murmur).
        band_mid: share in 900-2500 Hz (F2 of open and front vowels).
        band_high: share in 2500-8000 Hz (fricatives, bursts, the F3 of "ee").
        f1_hz: first formant from LPC, 0 when the frame is not voiced.
        f2_hz: second formant from LPC, 0 when the frame is not voiced.
        jaw: 0..1 mouth-opening cue: loudness, raised for a high F1 ("aa"), lowered for a low F1.
        spread: -1..1 lip cue: +1 wide ("ee", high F2), -1 round ("oo", low F2), 0 neutral or unvoiced.
        flux: mean rise of the level-normalised log spectrum since the previous frame, in dB per bin.
        onset: 0..1 from ``flux``: a syllable start or a plosive burst.
        voicing: 0..1 periodicity (peak of the normalised autocorrelation).
        f0_hz: fundamental frequency, 0 when unvoiced.
        pitch_st: semitones above (+) or below (-) the speaker's running pitch, 0 when unvoiced.
        stress: 0..1 stressed-syllable cue: louder (up to +6 dB) and higher (up to +3 semitones) than the
            speaker's running average syllable; 0 for an average one and when unvoiced.
        closure: 0..1 lips-closed cue: a quiet gap right before a burst (b, p, m before a vowel) or a
            voiced nasal murmur (quiet, low-band only).
        singing: 0..1: sustained voicing with stable pitch over the last ~0.8 s.
        mel: ``MEL_BANDS`` log-mel energies of the 32 ms window around the centre, in dB against the adaptive
            speech level (so the same for a quiet and a loud speaker), floored at ``-MEL_RANGE_DB`` and divided
            by 20; not one of ``FEATURE_NAMES`` (the learned lite motion reads it).
    """

    index: int
    time_s: float
    rms: float
    level_db: float
    loudness: float
    band_low: float
    band_mid: float
    band_high: float
    f1_hz: float
    f2_hz: float
    jaw: float
    spread: float
    flux: float
    onset: float
    voicing: float
    f0_hz: float
    pitch_st: float
    stress: float
    closure: float
    singing: float
    mel: np.ndarray = field(default_factory=lambda: np.zeros(MEL_BANDS, np.float32), compare=False, repr=False)


FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in fields(FrameFeatures) if f.name != "mel")


def lookahead_frames(fps: float = DEFAULT_FPS) -> int:
    """Whole video frames of audio the extractor reads past a frame's centre (1 at 25 fps)."""
    return max(1, math.ceil(LOOKAHEAD_S * fps - 1e-9))


def features_to_arrays(frames: list[FrameFeatures]) -> dict[str, np.ndarray]:
    """Struct of arrays: one float64 array per field (``index`` as int64), in frame order."""
    table = np.array([[getattr(f, name) for name in FEATURE_NAMES] for f in frames],
                     dtype=np.float64).reshape(len(frames), len(FEATURE_NAMES))
    out = {name: table[:, i] for i, name in enumerate(FEATURE_NAMES)}
    out["index"] = out["index"].astype(np.int64)
    return out


def mel_filterbank(n_fft: int, sample_rate: int, bands: int = MEL_BANDS) -> np.ndarray:
    """(bands, n_fft // 2 + 1) triangular filters on the HTK mel scale, ``_MEL_FMIN_HZ`` to ``_MEL_FMAX_HZ``."""
    def mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    top = min(_MEL_FMAX_HZ, sample_rate / 2.0)
    edges_mel = np.linspace(mel(np.array(_MEL_FMIN_HZ)), mel(np.array(top)), bands + 2)
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    bank = np.zeros((bands, len(freqs)))
    for b in range(bands):
        lo, mid, hi = edges[b], edges[b + 1], edges[b + 2]
        bank[b] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0.0, None)
        if bank[b].sum() == 0:  # narrower than a bin at low rates: take the nearest bin
            bank[b, int(np.argmin(np.abs(freqs - mid)))] = 1.0
    return bank


def _db(power: float) -> float:
    return max(_FLOOR_DB, 10.0 * math.log10(power)) if power > 0 else _FLOOR_DB


def _clip01(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


def _levinson(r: np.ndarray, order: int) -> np.ndarray:
    """LPC polynomial ``[1, a1, ..., ap]`` from autocorrelation ``r`` (Levinson-Durbin)."""
    a = np.zeros(order + 1)
    a[0] = 1.0
    err = r[0]
    for i in range(1, order + 1):
        if err <= 0:
            break
        k = -(r[i] + np.dot(a[1:i], r[i - 1:0:-1])) / err
        a[1:i] = a[1:i] + k * a[i - 1:0:-1]
        a[i] = k
        err *= 1.0 - k * k
    return a


class FeatureExtractor:
    """Streaming per-frame speech features: push audio in any chunk sizes, get frames as they complete.

    Frame ``n`` comes out once the audio reaches ``n / fps`` seconds plus ``LOOKAHEAD_S``; `flush`
    pads the end with silence and returns the frames still held. The adaptive levels (speech level,
    noise floor, running pitch) are state, so one extractor serves one stream; `reset` starts over.

    Args:
        sample_rate: rate of the pushed samples (16 kHz in the engine; 8 kHz and up work).
        fps: video frames per second.
    """

    def __init__(self, sample_rate: int = ENGINE_SAMPLE_RATE, fps: float = DEFAULT_FPS) -> None:
        if sample_rate < 8000:
            raise ValueError(f"sample_rate must be at least 8000 Hz, got {sample_rate}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.sample_rate = int(sample_rate)
        self.fps = float(fps)
        sr = self.sample_rate
        self.lookahead_samples = round(LOOKAHEAD_S * sr)
        self._hop = sr / self.fps
        # rms covers the frame's own span, so frames tile the audio (capped by the lookahead at low fps).
        self._span_half = max(1, min(round(self._hop / 2), self.lookahead_samples))
        self._spec_n = round(_SPECTRUM_WINDOW_S * sr)
        self._pitch_n = round(_PITCH_WINDOW_S * sr)
        self._block = max(1, round(_BLOCK_S * sr))
        self._centre_half = round(_CENTRE_HALF_S * sr)
        # Samples needed each side of a centre. The right side is the declared lookahead and nothing more.
        self._left = max(self._span_half, self._spec_n // 2 + 1, self._pitch_n // 2, self._centre_half)
        self._right = self.lookahead_samples
        if self._pitch_n - self._pitch_n // 2 > self._right or self._spec_n - self._spec_n // 2 > self._right:
            raise ValueError("analysis windows exceed the lookahead")

        # Spectral analysis: Hann window, band masks, the bins the flux looks at.
        self._spec_win = np.hanning(self._spec_n + 2)[1:-1]
        freqs = np.fft.rfftfreq(self._spec_n, 1.0 / sr)
        self._band_masks = [(freqs >= lo) & (freqs < min(hi, sr / 2 + 1)) for lo, hi in BANDS_HZ]
        self._flux_mask = (freqs >= BANDS_HZ[0][0]) & (freqs < min(BANDS_HZ[-1][1], sr / 2 + 1))
        self._nasal_lo = (freqs >= 100.0) & (freqs < 400.0)
        self._nasal_all = (freqs >= 100.0) & (freqs < 8000.0)
        # Scale that maps a full-scale sine's FFT peak to its RMS: makes the log spectrum comparable to dBFS.
        self._spec_scale = 1.0 / (np.sum(self._spec_win) / (2.0 * math.sqrt(2.0)))
        # Sparse: each bin feeds at most two bands. A dense (40 × 257) product would go to BLAS, whose threads
        # then spin between frames (OpenBLAS splits products over ~9k elements): a whole core per session.
        bank = mel_filterbank(self._spec_n, sr) * self._spec_scale ** 2
        self._mel_band, self._mel_bin = np.nonzero(bank)
        self._mel_weight = bank[self._mel_band, self._mel_bin]

        # Pitch (Boersma 1993): autocorrelation of the windowed frame divided by the window's own.
        self._pitch_win = np.hanning(self._pitch_n + 2)[1:-1]
        self._pitch_nfft = 1 << (2 * self._pitch_n - 1).bit_length()
        self._min_lag = max(2, int(sr / F0_MAX_HZ))
        self._max_lag = min(self._pitch_n // 2, int(math.ceil(sr / F0_MIN_HZ)) + 1)
        rw = np.fft.irfft(np.abs(np.fft.rfft(self._pitch_win, self._pitch_nfft)) ** 2)[: self._max_lag + 2]
        self._pitch_win_ac = rw / rw[0]

        # LPC on the 0-4 kHz band, taken from the spectral window's FFT: a band-limited resample for free.
        self._lpc_bins = int(round(self._spec_n * _LPC_BAND_HZ / sr))
        self._lpc_n = 2 * self._lpc_bins
        self._lpc_rate = self._lpc_n * sr / self._spec_n
        self._lpc_win = np.hamming(self._lpc_n)

        # The burst's spectrum: the lookahead past the centre's ±10 ms.
        self._ahead_n = self._right - self._centre_half
        self._ahead_win = np.hanning(self._ahead_n + 2)[1:-1]
        ahead_freqs = np.fft.rfftfreq(self._ahead_n, 1.0 / sr)
        self._ahead_all = (ahead_freqs >= 100.0) & (ahead_freqs < 8000.0)
        self._ahead_high = (ahead_freqs >= 3000.0) & (ahead_freqs < 8000.0)
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget all audio and adaptive state (a new stream, or barge-in)."""
        # The buffer starts with `_left` samples of silence so frame 0 (centred on sample 0) has its past.
        self._buf = np.zeros(self._left, dtype=np.float64)
        self._buf_start = -self._left  # absolute sample index of _buf[0]
        self._received = 0
        self._next = 0
        self._flushed = False
        self._level_db = _INITIAL_LEVEL_DB
        self._mean_db: float | None = None
        self._noise: deque[float] = deque(maxlen=max(1, round(_NOISE_WINDOW_S * self.fps)))
        self._since_loud = 1 << 30  # frames since the last clearly loud one
        self._prev_logspec: np.ndarray | None = None
        self._pitch_ref_st: float | None = None
        self._history: deque[tuple[bool, float]] = deque(maxlen=max(2, round(_SINGING_WINDOW_S * self.fps)))
        self._voiced_run = 0
        self._singing = 0.0
        self._last_f0 = 0.0
        self._last_f0_age = 1 << 30

    def _centre(self, n: int) -> int:
        return round(n * self._hop)

    # ------------------------------------------------------------------ streaming

    def push(self, samples: np.ndarray) -> list[FrameFeatures]:
        """Add mono samples; return the frames whose audio (centre plus lookahead) is now complete.

        Raises:
            ValueError: ``samples`` is not 1-D float, or the stream was already flushed.
        """
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise ValueError(f"samples must be mono 1-D, got shape {samples.shape}")
        if samples.size and not np.issubdtype(samples.dtype, np.floating):
            raise ValueError(f"samples must be float in [-1, 1], got {samples.dtype}")
        if self._flushed:
            raise ValueError("push after flush: call reset() to start a new stream")
        if len(samples):
            self._buf = np.concatenate([self._buf, samples.astype(np.float64)])
            self._received += len(samples)
        return self._drain(self._received)

    def flush(self) -> list[FrameFeatures]:
        """End of stream: pad with silence and return every frame whose centre lies in the audio."""
        if self._flushed:
            return []
        self._flushed = True
        total_frames = math.ceil(self._received / self._hop - 1e-9) if self._received else 0
        if total_frames <= self._next:
            return []
        need = self._centre(total_frames - 1) + self._right
        have = self._buf_start + len(self._buf)
        if need > have:
            self._buf = np.concatenate([self._buf, np.zeros(need - have)])
        return self._drain(need, limit=total_frames)

    def _drain(self, available: int, limit: int | None = None) -> list[FrameFeatures]:
        out: list[FrameFeatures] = []
        while limit is None or self._next < limit:
            c = self._centre(self._next)
            if c + self._right > available:
                break
            lo = c - self._left - self._buf_start
            seg = self._buf[lo: lo + self._left + self._right].copy()
            out.append(self._analyse(self._next, seg))
            self._next += 1
        # Drop what no later frame needs; the copy keeps the buffer small for long streams.
        keep_from = self._centre(self._next) - self._left
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:].copy()
            self._buf_start = keep_from
        return out

    # ------------------------------------------------------------------ analysis

    def _analyse(self, n: int, seg: np.ndarray) -> FrameFeatures:
        """Features of frame ``n`` from ``seg`` = samples [centre - left, centre + lookahead)."""
        c = self._left  # the centre's index in seg

        # 1. Level: RMS of the frame's own span.
        span = seg[c - self._span_half: c + self._span_half]
        power = float(np.dot(span, span) / len(span))
        rms = math.sqrt(power)
        level_db = _db(power)

        # 2. Pitch and voicing (against the speech level so far); then the level itself, which only
        #    voiced or clearly-above-noise frames may move.
        voicing, f0_hz = self._pitch(seg, c, level_db)
        loudness = self._update_level(level_db, f0_hz > 0)

        # 3. Spectrum of the 32 ms window around the centre: bands, nasal balance, flux.
        h = self._spec_n // 2
        win = seg[c - h: c - h + self._spec_n]
        spec = np.fft.rfft(win * self._spec_win)
        pspec = spec.real ** 2 + spec.imag ** 2
        band_e = [float(np.sum(pspec[m])) for m in self._band_masks]
        band_total = sum(band_e)
        bands = [e / band_total for e in band_e] if band_total > 1e-20 else [0.0, 0.0, 0.0]
        flux = self._flux(np.sqrt(pspec) * self._spec_scale)
        onset = _clip01((flux - 2.0) / 8.0)

        # 4. Formants, only where there is a voice to have them.
        f1_hz = f2_hz = 0.0
        if f0_hz > 0:
            pre = seg[c - h: c - h + self._spec_n] - _PRE_EMPHASIS * seg[c - h - 1: c - h - 1 + self._spec_n]
            f1_hz, f2_hz = self._formants(pre)

        # 5. Pitch relative to the speaker, stress, singing.
        pitch_st = self._pitch_relative(f0_hz)
        stress = self._stress(level_db, loudness, pitch_st, f0_hz > 0)
        singing = self._update_singing(f0_hz)

        # 6. Mouth-shape cues.
        jaw = loudness
        spread = 0.0
        if f1_hz > 0:
            # F1 ~300 Hz for "ee"/"oo" (small jaw) to ~750 Hz for "aa" (wide open).
            jaw = loudness * (0.4 + 0.6 * _clip01((f1_hz - 300.0) / 450.0))
        if f2_hz > 0:
            spread = max(-1.0, min(1.0, (f2_hz - 1500.0) / 600.0)) * _clip01(voicing / 0.7)
            if spread < 0:
                # A low F2 means rounded lips only in close vowels ("oo"); "aa" has a low F2 too, unrounded.
                spread *= 1.0 - _clip01((f1_hz - 350.0) / 300.0)

        # 7. Lips closed: a quiet gap right before a burst, or a nasal murmur.
        closure = self._closure(seg, c, level_db, loudness, voicing, pspec)

        # 8. Log-mel against the speech level (after this frame's update, as loudness is).
        mel_power = np.bincount(self._mel_band, weights=self._mel_weight * pspec[self._mel_bin], minlength=MEL_BANDS)
        mel_db = 10.0 * np.log10(np.maximum(mel_power, 1e-20)) - self._level_db
        mel = (np.maximum(mel_db, -MEL_RANGE_DB) / 20.0).astype(np.float32)

        return FrameFeatures(
            index=n, time_s=self._centre(n) / self.sample_rate, rms=rms, level_db=level_db,
            loudness=loudness, band_low=bands[0], band_mid=bands[1], band_high=bands[2],
            f1_hz=f1_hz, f2_hz=f2_hz, jaw=jaw, spread=spread, flux=flux, onset=onset,
            voicing=voicing, f0_hz=f0_hz, pitch_st=pitch_st, stress=stress, closure=closure, singing=singing,
            mel=mel,
        )

    def _update_level(self, level_db: float, voiced: bool) -> float:
        """Track the speech level (fast up, slow down) and the noise floor; return loudness 0..1.

        The noise floor is the quietest unvoiced frame of the last 3 s (voiced frames are the voice, not
        the room). Only speech-like frames (voiced, or well above that floor) move the speech level, and
        the level is never taken below floor + 15 dB, so a steady hum or hiss stays at loudness ~0.
        """
        if not voiced:
            self._noise.append(level_db)
        noise_db = min(self._noise) if self._noise else _FLOOR_DB
        gate = _clip01((level_db - _GATE_DB[0]) / (_GATE_DB[1] - _GATE_DB[0]))
        if gate > 0 and (voiced or level_db > noise_db + 10.0):
            if level_db > self._level_db:
                self._level_db += 0.5 * (level_db - self._level_db)
            elif level_db > self._level_db - 12.0:
                # Loud-ish frames pull the level towards the vowels' level, not the consonants'.
                self._level_db += 0.05 * (level_db - self._level_db)
            else:
                # Someone got quieter for good (or moved off the mic): let the level fall 3 dB/s.
                self._level_db -= 3.0 / self.fps
            self._level_db = max(self._level_db, _GATE_DB[1])
        ref_db = max(self._level_db, noise_db + 15.0)
        # Loudness 0 sits R dB under the speech level, or just over the noise floor when that is higher.
        lo = max(ref_db - _LOUDNESS_RANGE_DB, min(noise_db + 6.0, ref_db - 12.0))
        return gate * _clip01((level_db - lo) / (ref_db - lo))

    def _flux(self, mag: np.ndarray) -> float:
        """Mean positive change of the log spectrum (dB re the speech level, floored 50 dB below it)."""
        floor = 10.0 ** ((self._level_db - 50.0) / 20.0)
        logspec = 20.0 * np.log10(np.maximum(mag[self._flux_mask], floor))
        prev = self._prev_logspec
        self._prev_logspec = logspec
        if prev is None:
            prev = np.full_like(logspec, 20.0 * math.log10(floor))
        return float(np.mean(np.maximum(logspec - prev, 0.0)))

    def _pitch(self, seg: np.ndarray, c: int, level_db: float) -> tuple[float, float]:
        """Voicing 0..1 and F0 in Hz (0 when unvoiced), by Boersma's normalised autocorrelation.

        Candidates are the autocorrelation peaks; each is scored as Praat does (a small cost per octave
        of lag, so a perfectly periodic signal picks F0 over its undertones) plus, causally, a cost per
        octave away from the last voiced pitch, which stands in for Praat's Viterbi path.
        """
        last_f0 = self._last_f0 if self._last_f0_age <= _PITCH_MEMORY_FRAMES else 0.0
        self._last_f0_age += 1
        if level_db < _GATE_DB[0] or level_db < self._level_db - 40.0:
            return 0.0, 0.0
        h = self._pitch_n // 2
        x = seg[c - h: c - h + self._pitch_n]
        x = (x - x.mean()) * self._pitch_win
        spec = np.fft.rfft(x, self._pitch_nfft)
        ra = np.fft.irfft(spec.real ** 2 + spec.imag ** 2)[: self._max_lag + 2]
        if ra[0] <= 0:
            return 0.0, 0.0
        r = (ra / ra[0]) / self._pitch_win_ac
        lo, hi = self._min_lag, self._max_lag
        seg_r = r[lo - 1: hi + 2]
        # Local maxima inside [min_lag, max_lag].
        peaks = np.flatnonzero((seg_r[1:-1] > seg_r[:-2]) & (seg_r[1:-1] >= seg_r[2:])) + lo
        best_strength, best_r, best_lag, best_jump = -np.inf, 0.0, 0.0, 0.0
        for lag in peaks:
            a, b, g = r[lag - 1], r[lag], r[lag + 1]
            denom = a - 2.0 * b + g
            shift = 0.5 * (a - g) / denom if denom < 0 else 0.0
            peak_r = b - 0.25 * (a - g) * shift
            true_lag = lag + shift
            jump = 0.0
            if last_f0 > 0:
                jump = _OCTAVE_JUMP_COST * abs(math.log2(self.sample_rate / true_lag / last_f0))
            strength = peak_r - _OCTAVE_COST * math.log2(F0_MIN_HZ * true_lag / self.sample_rate) - jump
            if strength > best_strength:
                best_strength, best_r, best_lag, best_jump = strength, peak_r, true_lag, jump
        voicing = _clip01(best_r)
        # Quiet frames (closures, breath) need clearer periodicity: their weak peaks are often formant
        # ringing, not the voice.
        threshold = _VOICING_THRESHOLD + 0.15 * _clip01((self._level_db - 20.0 - level_db) / 10.0)
        # A weak peak far from the running pitch is an outlier (a burst, a formant), not a new note.
        if voicing - best_jump < threshold or best_lag <= 0:
            return voicing, 0.0
        f0_hz = self.sample_rate / best_lag
        self._last_f0, self._last_f0_age = f0_hz, 0
        return voicing, f0_hz

    def _formants(self, pre: np.ndarray) -> tuple[float, float]:
        """F1 and F2 in Hz from a 10th-order LPC of the 0-4 kHz band (0 where none is found)."""
        spec = np.fft.rfft(pre)[: self._lpc_bins + 1].copy()
        spec[-1] = 0.0  # the new Nyquist bin would alias
        x = np.fft.irfft(spec, self._lpc_n) * self._lpc_win
        full = np.correlate(x, x, mode="full")
        r = full[self._lpc_n - 1: self._lpc_n + _LPC_ORDER]
        if r[0] <= 0:
            return 0.0, 0.0
        r = r.copy()
        r[0] *= 1.0 + 1e-6  # a whisker of white noise keeps the recursion stable on pure tones
        roots = np.roots(_levinson(r, _LPC_ORDER))
        roots = roots[roots.imag > 1e-6]
        if roots.size == 0:
            return 0.0, 0.0
        freqs = np.angle(roots) * self._lpc_rate / (2.0 * math.pi)
        bws = -np.log(np.maximum(np.abs(roots), 1e-9)) * self._lpc_rate / math.pi
        ok = (freqs > 150.0) & (freqs < self._lpc_rate / 2.0 - 100.0) & (bws < 600.0)
        cands = np.sort(freqs[ok])
        f1 = float(cands[0]) if cands.size > 0 and cands[0] < 1200.0 else 0.0
        f2 = 0.0
        if f1 > 0:
            rest = cands[cands > f1 + 150.0]
            f2 = float(rest[0]) if rest.size else 0.0
        return f1, f2

    def _pitch_relative(self, f0_hz: float) -> float:
        """Semitones against a running average of the speaker's pitch; updates it."""
        if f0_hz <= 0:
            return 0.0
        st = 12.0 * math.log2(f0_hz / 100.0)
        if self._pitch_ref_st is None:
            self._pitch_ref_st = st
        rel = st - self._pitch_ref_st
        self._pitch_ref_st += (st - self._pitch_ref_st) / (_PITCH_REF_TAU_S * self.fps)
        return rel

    def _stress(self, level_db: float, loudness: float, pitch_st: float, voiced: bool) -> float:
        """Louder and higher than the speaker's usual syllable: 0..1 (0 for an average one, or unvoiced).

        The running mean level is taken over voiced frames only, so it is the level of a typical
        syllable nucleus, not pulled down by consonants.
        """
        if not voiced or loudness < 0.2:
            return 0.0
        if self._mean_db is None:
            self._mean_db = level_db
        louder = (level_db - self._mean_db) / 6.0
        self._mean_db += (level_db - self._mean_db) / (_LEVEL_MEAN_TAU_S * self.fps)
        higher = pitch_st / 3.0
        return _clip01(0.5 * max(-1.0, min(1.0, louder)) + 0.5 * max(-1.0, min(1.0, higher)))

    def _update_singing(self, f0_hz: float) -> float:
        """Singing 0..1: mostly voiced, long voiced runs and steady pitch over the last ~0.8 s."""
        voiced = f0_hz > 0
        st = 12.0 * math.log2(f0_hz / 100.0) if voiced else 0.0
        self._history.append((voiced, st))
        self._voiced_run = self._voiced_run + 1 if voiced else 0
        hist = self._history
        voiced_share = sum(v for v, _ in hist) / (hist.maxlen or 1)  # maxlen is always set (see __init__)
        steps = [abs(b[1] - a[1]) for a, b in zip(hist, list(hist)[1:], strict=False) if a[0] and b[0]]
        # Speech glides ~1 st per 40 ms frame; a held sung note (vibrato included) moves far less.
        steadiness = _clip01(1.0 - float(np.median(steps)) / 1.2) if steps else 0.0
        sustained = _clip01((self._voiced_run / self.fps - 0.1) / 0.4)
        raw = voiced_share * steadiness * (0.5 + 0.5 * sustained)
        # Smooth over ~0.5 s: the animator switches style on this, so it should not flicker.
        self._singing += (raw - self._singing) / (0.5 * self.fps)
        return self._singing

    def _closure(self, seg: np.ndarray, c: int, level_db: float, loudness: float, voicing: float,
                 pspec: np.ndarray) -> float:
        """Lips-closed cue 0..1: a short quiet gap before a burst in the lookahead, or a nasal murmur."""
        # Stop closures last 50-120 ms: a gap that began longer ago is a pause, where the mouth rests anyway.
        recent_speech = _clip01((3.5 - self._since_loud) / 1.5)
        self._since_loud = 0 if loudness > 0.5 else self._since_loud + 1
        level = self._level_db
        stop = 0.0
        if recent_speech > 0:
            b, ch = self._block, self._centre_half
            now = seg[c - ch: c + ch]
            now_db = _db(float(np.dot(now, now) / len(now)))
            ahead = seg[c + ch: c + self._right]
            blocks = ahead[: (len(ahead) // b) * b].reshape(-1, b)
            ahead_db = _db(float(np.max(np.einsum("ij,ij->i", blocks, blocks)) / b))
            # A stop closure: now well under the speech level, and within the next ~30 ms a burst or vowel
            # that is both much louder than now and loud as speech goes ...
            gap = _clip01((level - 15.0 - now_db) / 10.0)
            rise = _clip01((ahead_db - now_db - 8.0) / 8.0)
            loud_ahead = _clip01((ahead_db - (level - 25.0)) / 10.0)
            stop = recent_speech * gap * rise * loud_ahead
            if stop > 0:
                # ... and not hissing: t/k/ch release into high-frequency aspiration, while a b/p burst is
                # diffuse and runs straight into the vowel's low-frequency energy.
                spec = np.fft.rfft(ahead[: self._ahead_n] * self._ahead_win)
                p_ahead = spec.real ** 2 + spec.imag ** 2
                total = float(np.sum(p_ahead[self._ahead_all]))
                high = float(np.sum(p_ahead[self._ahead_high])) / total if total > 0 else 0.0
                stop *= 1.0 - _clip01((high - 0.3) / 0.3)
        # A nasal murmur ("m"): voiced, quieter than the vowels, nearly all energy under 400 Hz (a voiced
        # fricative such as "z" has the same voice bar but also hiss up high, which this share counts).
        total = float(np.sum(pspec[self._nasal_all]))
        low_share = float(np.sum(pspec[self._nasal_lo])) / total if total > 0 else 0.0
        dip = _clip01((level - 3.0 - level_db) / 5.0) * _clip01((level_db - (level - 35.0)) / 6.0)
        nasal = _clip01(voicing / 0.6) * _clip01((low_share - 0.7) / 0.15) * dip
        return max(stop, nasal)


def frame_features(samples: np.ndarray, sample_rate: int = ENGINE_SAMPLE_RATE,
                   fps: float = DEFAULT_FPS) -> list[FrameFeatures]:
    """Features for every video frame of a whole clip: ``ceil(len(samples) * fps / sample_rate)`` frames.

    Args:
        samples: mono audio, float in [-1, 1].
        sample_rate: rate of ``samples`` (16 kHz in the engine).
        fps: video frames per second; frame ``n`` is centred on ``n / fps`` seconds.

    Returns:
        One `FrameFeatures` per frame, equal to what `FeatureExtractor` streams for the same audio.
    """
    extractor = FeatureExtractor(sample_rate=sample_rate, fps=fps)
    frames: list[FrameFeatures] = []
    # Fed in 10 s pieces so a long clip is never copied whole into the extractor's buffer.
    step = 10 * int(sample_rate)
    for start in range(0, len(samples), step):
        frames += extractor.push(samples[start: start + step])
    return frames + extractor.flush()
