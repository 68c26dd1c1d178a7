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

    def start(self, sample_rate: int, channels: int) -> None:
        """Begin (or re-begin) PCM input: s16le at ``sample_rate`` with ``channels`` interleaved."""
        self._format = (sample_rate, channels)
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.voice_rate)
        self._flushing = False

    def push(self, data: bytes) -> bool:
        """Queue PCM; it plays at real time from the next tick, however fast it arrives. Returns whether any was
        queued (a message shorter than one sample frame is ignored).

        Raises:
            RequestError: no ``start`` yet, or more than ``MAX_BUFFERED_S`` queued.
        """
        if self._format is None or self._resampler is None:
            raise RequestError("send a start message before audio")
        rate, channels = self._format
        usable = len(data) - len(data) % (2 * channels)
        if usable <= 0:
            return False
        pcm = np.frombuffer(data[:usable], dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono" if channels == 1 else "stereo")
        frame.sample_rate = rate
        for out in self._resampler.resample(frame):
            samples = out.to_ndarray().reshape(-1).astype(np.float32)
            self._queue.append(samples)
            self._samples += len(samples)
        if self._samples > MAX_BUFFERED_S * self.voice_rate:
            raise RequestError(f"more than {MAX_BUFFERED_S} s of audio buffered: send at most a little "
                               "ahead of real time")
        self._flushing = False
        return True

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

    def utterance_played_out(self) -> bool:
        """Whether a flushed utterance has just played into the pipeline (once per flush): then the frames the
        animator's lookahead still holds are to be released, or the last syllables would show a held picture."""
        if self._flushing and not self._samples:
            self._flushing = False
            return True
        return False

    def pull(self) -> av.AudioFrame | None:
        """This tick's audio, or None where less than a tick is queued and no flush asks for the rest."""
        need = self.samples_per_tick
        if self._samples < need and not (self._flushing and self._samples):
            return None
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
        if len(chunk) < need:
            chunk = np.pad(chunk, (0, need - len(chunk)))
        frame = av.AudioFrame.from_ndarray(chunk[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = self.voice_rate
        return frame
