"""Audio in the engine: decoding any file PyAV reads, resampling, speech features."""

from emo_stream.audio.decode import AudioInfo, iter_audio, load_audio, probe_audio

__all__ = ["AudioInfo", "iter_audio", "load_audio", "probe_audio"]
