"""Errors a user can cause, each with a stable ``code`` (docs/api.md's ``error.code``).

Exception tree::

    EmoStreamError
    ├── InputNotFoundError        a path that does not exist
    ├── ConfigError               unknown key or bad value in a config file
    ├── ImageError
    │   ├── NotAnImageError       not a decodable image (text, truncated, ...)
    │   ├── ImageTooLargeError    over the pixel or byte limit, or a decompression bomb
    │   ├── ImageTooSmallError    too few pixels to hold a face
    │   ├── NoFaceFoundError      no face in the portrait
    │   └── FaceTooSmallError     a face, but too few pixels across
    ├── AudioError
    │   ├── NoAudioStreamError    a media file with no audio track
    │   ├── CorruptAudioError     undecodable audio
    │   └── EmptyAudioError       an audio track with no samples
    ├── VideoError
    │   └── CorruptVideoError     a video that cannot be decoded
    ├── UnknownBackendError       a backend name that does not exist
    ├── OutputError               an output file that cannot be written
    ├── CheckpointError           a model checkpoint that is missing or does not fit
    ├── DataError                 training data that is missing, too short or unusable
    │   ├── OutdatedDataError     a folder or shard an older version prepared
    │   └── ClipTooShortError     a video too short to make a training clip
    ├── RequestError              a request the server cannot take
    │   ├── InvalidSdpError       an SDP offer that cannot be parsed or has no audio
    │   ├── RequestTooLargeError  a body or message over its size limit
    │   └── RateLimitedError      control messages faster than a session takes them
    ├── NotFoundError
    │   ├── AvatarNotFoundError   an unknown avatar id
    │   └── SessionNotFoundError  an unknown or closed session
    ├── UnauthorizedError         a missing or wrong token
    ├── OverloadedError           one more session would make the others late (503)
    └── DependencyError           a package the engine needs is missing or the wrong version

The CLI catches the root and prints ``error: <message>`` on one line (exit 2); the
server maps each class to a 4xx status in one table.
"""

from __future__ import annotations


class EmoStreamError(Exception):
    """Root of every error a user can cause; ``code`` is stable, ``str()`` says what to do."""

    code = "emo_stream_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputNotFoundError(EmoStreamError):
    code = "not_found"


class ConfigError(EmoStreamError):
    code = "bad_config"


class ImageError(EmoStreamError):
    code = "bad_image"


class NotAnImageError(ImageError):
    code = "not_an_image"


class ImageTooLargeError(ImageError):
    code = "image_too_large"


class ImageTooSmallError(ImageError):
    code = "image_too_small"


class NoFaceFoundError(ImageError):
    code = "no_face_found"


class FaceTooSmallError(ImageError):
    code = "face_too_small"


class AudioError(EmoStreamError):
    code = "bad_audio"


class NoAudioStreamError(AudioError):
    code = "no_audio_stream"


class CorruptAudioError(AudioError):
    code = "corrupt_audio"


class EmptyAudioError(AudioError):
    code = "empty_audio"


class VideoError(EmoStreamError):
    code = "bad_video"


class CorruptVideoError(VideoError):
    code = "corrupt_video"


class UnknownBackendError(EmoStreamError):
    code = "unknown_backend"


class OutputError(EmoStreamError):
    """The output file cannot be written (missing folder, no permission, bad suffix)."""

    code = "bad_output"


class CheckpointError(EmoStreamError):
    """A model checkpoint folder is missing, incomplete or does not match the model."""

    code = "bad_checkpoint"


class DataError(EmoStreamError):
    """Training data that cannot be used: no manifest, no clips long enough, a clip too short to prepare."""

    code = "bad_data"


class OutdatedDataError(DataError):
    """A folder prepared by an older version of ``data prepare``: its shards lack or differ in what training reads."""

    code = "outdated_data"


class ClipTooShortError(DataError):
    code = "clip_too_short"


class RequestError(EmoStreamError):
    """A request the server cannot take as it is."""

    code = "bad_request"


class InvalidSdpError(RequestError):
    code = "invalid_sdp"


class RequestTooLargeError(RequestError):
    code = "request_too_large"


class RateLimitedError(RequestError):
    code = "rate_limited"


class NotFoundError(EmoStreamError):
    code = "not_found"


class AvatarNotFoundError(NotFoundError):
    code = "avatar_not_found"


class SessionNotFoundError(NotFoundError):
    code = "session_not_found"


class UnauthorizedError(EmoStreamError):
    code = "unauthorized"


class OverloadedError(EmoStreamError):
    """One more session would make the running ones late: try again later."""

    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DependencyError(EmoStreamError):
    """A package the engine needs is missing or at a version it cannot use; the message says what to install."""

    code = "missing_dependency"
