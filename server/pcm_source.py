"""An agent's voice as PCM: s16le sent over the WebSocket, played into the session one tick at a time.

An agent (a TTS) may send its audio much faster than real time. It is resampled to the voice rate on arrival
and queued; the session pulls one tick's worth on each clock tick, so a burst plays at real time and its
windows map to the ticks they are pulled on. At the end of an utterance (``flush``) the last tick is padded with
silence, and once it has played the session asks the worker for the frames the animator's lookahead still
holds.
"""

from __future__ import annotations

from collections import deque

import av
import numpy as np

from emo_stream.errors import RequestError

MAX_BUFFERED_S = 120  # more queued than this: the agent is sending far ahead of real time
# One message's bytes: 1 MiB is 5.5 s of 48 kHz stereo. A larger one would cost its session process a
# resampled copy many times its size (16 MiB at 8 kHz became ~200 MB of float32 at the voice rate).
MAX_MESSAGE_BYTES = 1024 * 1024
# An underrun: the queue ran dry inside an utterance (no flush), so the voice now plays that much later than the
# agent sent it. That delay is won back at the voice's next pauses: while it lasts, a silent tick is skipped. A
# dry spell longer than MAX_UNDERRUN_S is the agent pausing (a new utterance follows), not an underrun.
MAX_UNDERRUN_S = 1.0
SILENT_RMS = 10 ** (-45 / 20)  # -45 dBFS


class PcmSource:
    """Queued PCM → one tick of mono float32 audio at the voice rate per pull.

    Args:
        voice_rate: the sample rate of the audio handed on (the session's voice).
        fps: ticks per second (one pull per tick).
    """

    def __init__(self, voice_rate: int, fps: int) -> None:
        self.voice_rate = voice_rate
        self.samples_per_tick = voice_rate // fps
        self._queue: deque[np.ndarray] = deque()
        self._samples = 0
        self._resampler: av.AudioResampler | None = None
        self._format: tuple[int, int] | None = None  # (sample rate, channels) of what is pushed
        self._flushing = False
        self._generation = 0  # bumped by clear(): audio resampled before it is not queued
        self._speaking = False  # audio queued since the last flush, clear or long pause
        self._dry_ticks = 0  # ticks of the current dry spell
        self.debt_ticks = 0  # ticks the voice runs behind the agent's schedule after underruns
        self.skipped_ticks = 0  # silent ticks skipped to win the delay back
        self.owed = False  # the last tick found too little audio inside an utterance: pull when it comes
        self.owed_pulls = 0  # pulls served on arrival, after their tick

    def start(self, sample_rate: int, channels: int) -> None:
        """Begin (or re-begin) PCM input: s16le at ``sample_rate`` with ``channels`` interleaved."""
        self._format = (sample_rate, channels)
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.voice_rate)
        self._flushing = False

    def check(self, data: bytes) -> None:
        """Refuse a message before any of it is buffered: no ``start`` yet, not whole sample frames, over
        ``MAX_MESSAGE_BYTES``, or more than ``MAX_BUFFERED_S`` queued with it.

        Raises:
            RequestError: the message is refused; nothing of it is kept.
        """
        if self._format is None or self._resampler is None:
            raise RequestError("send a start message before audio")
        rate, channels = self._format
        if len(data) > MAX_MESSAGE_BYTES:
            raise RequestError(f"a PCM message carries at most {MAX_MESSAGE_BYTES // 1024} KiB; this one has "
                               f"{len(data) // 1024} KiB: send the audio in smaller pieces")
        if len(data) % (2 * channels):
            raise RequestError(f"a PCM message carries whole s16le sample frames ({2 * channels} bytes each "
                               f"with {channels} channel{'s' if channels > 1 else ''}); this one has {len(data)} "
                               "bytes")
        incoming_s = len(data) / (2 * channels) / rate
        if self.buffered_s + incoming_s > MAX_BUFFERED_S:
            raise RequestError(f"this message would queue {self.buffered_s + incoming_s:.0f} s of audio, over "
                               f"{MAX_BUFFERED_S} s: send at most a little ahead of real time")

    def resample(self, data: bytes) -> tuple[int, np.ndarray]:
        """The message (already ``check``ed) as mono float32 at the voice rate, with the generation it belongs
        to: CPU work that may run off the event loop (one message at a time per session)."""
        if self._format is None or self._resampler is None:
            raise RequestError("send a start message before audio")
        generation = self._generation
        rate, channels = self._format
        pcm = np.frombuffer(data, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono" if channels == 1 else "stereo")
        frame.sample_rate = rate
        parts = [out.to_ndarray().reshape(-1).astype(np.float32) for out in self._resampler.resample(frame)]
        return generation, np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def enqueue(self, generation: int, samples: np.ndarray) -> bool:
        """Queue resampled audio; it plays at real time from the next tick. Audio resampled before a ``clear``
        (a barge-in) is dropped. Returns whether any was queued."""
        if generation != self._generation or not len(samples):
            return False
        self._queue.append(samples)
        self._samples += len(samples)
        self._flushing = False
        self._speaking = True
        return True

    def push(self, data: bytes) -> bool:
        """``check``, ``resample`` and ``enqueue`` in one call (on the caller's thread)."""
        self.check(data)
        return self.enqueue(*self.resample(data))

    def flush(self) -> None:
        """End of an utterance: what is buffered plays out, the last tick padded with silence."""
        self._flushing = True

    @property
    def buffered_s(self) -> float:
        """Seconds of audio queued and not yet pulled."""
        return self._samples / self.voice_rate

    def clear(self) -> None:
        """Barge-in: drop what is queued (an agent's PCM stops on its own: nothing more is cut)."""
        self._queue.clear()
        self._samples = 0
        self._flushing = False
        self._generation += 1
        self._speaking = False
        self.owed = False
        self.debt_ticks = self._dry_ticks = 0

    @property
    def debt_s(self) -> float:
        """How much later than the agent sent it the voice plays now, after underruns not yet won back."""
        return self.debt_ticks * self.samples_per_tick / self.voice_rate

    def utterance_played_out(self) -> bool:
        """Whether a flushed utterance has just played into the pipeline (once per flush): then the frames the
        animator's lookahead still holds are to be released, or the last syllables would show a held picture."""
        if self._flushing and not self._samples:
            self._flushing = False
            self._speaking = False
            self.debt_ticks = 0
            return True
        return False

    def pull(self) -> av.AudioFrame | None:
        """This tick's audio, or None where less than a tick is queued and no flush asks for the rest."""
        need = self.samples_per_tick
        if self._samples < need and not (self._flushing and self._samples):
            self._note_dry_tick()
            self.owed = self._speaking and not self._flushing
            return None
        self.owed = False
        self._dry_ticks = 0
        chunk = self._take(need)
        # After an underrun, win the delay back at the voice's pauses, never inside a word.
        while self.debt_ticks > 0 and self._samples >= need and _rms(chunk) < SILENT_RMS:
            self.debt_ticks -= 1
            self.skipped_ticks += 1
            chunk = self._take(need)
        frame = av.AudioFrame.from_ndarray(chunk[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = self.voice_rate
        return frame

    def pull_owed(self) -> av.AudioFrame | None:
        """The pull the last tick missed, as soon as its audio is queued (before the next tick; else None).

        An agent that streams at real time sends each tick's audio about when the tick comes, sometimes just
        after it. Waiting for the next tick would put the voice (and every window after it) a tick later than it
        came; pulled on arrival, it is only as late as it came, and the dry tick is no debt.
        """
        if not self.owed or self._samples < self.samples_per_tick:
            return None
        self.debt_ticks = max(0, self.debt_ticks - 1)
        self.owed_pulls += 1
        return self.pull()

    def _note_dry_tick(self) -> None:
        if not self._speaking or self._flushing:
            return
        self._dry_ticks += 1
        self.debt_ticks += 1
        if self._dry_ticks * self.samples_per_tick > MAX_UNDERRUN_S * self.voice_rate:
            # The agent paused: what follows is a new utterance, on its own schedule.
            self._speaking = False
            self.debt_ticks = self._dry_ticks = 0

    def _take(self, need: int) -> np.ndarray:
        """The next ``need`` samples of the queue (padded with silence where fewer are queued)."""
        parts, got = [], 0
        while self._queue and got < need:
            head = self._queue.popleft()
            take = head[: need - got]
            if len(take) < len(head):
                self._queue.appendleft(head[len(take):])
            parts.append(take)
            got += len(take)
        self._samples -= got
        chunk = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return np.pad(chunk, (0, need - len(chunk))) if len(chunk) < need else chunk


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0
