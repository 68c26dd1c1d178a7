"""Engine value types: typed dataclasses that validate in ``__post_init__``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Media time is counted in 1/90000 s ticks, as RTP video does, so audio and video share one base.
PTS_CLOCK_RATE = 90_000


@dataclass(frozen=True)
class FaceLandmarks:
    """The 478 face-mesh landmarks of one face, in pixels of the image they were found in.

    Attributes:
        points: float32 array (478, 3): x and y in pixels, z in the same pixel scale as x
            (mediapipe's relative depth times the image width).
        image_size: (width, height) of the image the points refer to.
    """

    points: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        if self.points.ndim != 2 or self.points.shape[1] != 3:
            raise ValueError(f"landmarks must be (N, 3), got {self.points.shape}")

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the landmarks."""
        xy = self.points[:, :2]
        x0, y0 = xy.min(axis=0)
        x1, y1 = xy.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    @property
    def face_size_px(self) -> float:
        """The larger side of the landmark box, in pixels."""
        x0, y0, x1, y1 = self.bbox
        return max(x1 - x0, y1 - y0)


@dataclass(frozen=True)
class Avatar:
    """A prepared portrait: the aligned crop, its landmarks and its cache key.

    Attributes:
        image: the aligned, square RGB crop (size × size × 3, uint8) the animators warp.
        landmarks: landmarks of the face in ``image`` coordinates.
        cache_key: content hash of the source bytes and the crop settings.
        source_size: (width, height) of the original photo.
        faces: number of faces found in the original photo (the largest is used).
        warnings: notes for the user (e.g. "2 faces found, using the largest").
    """

    image: np.ndarray
    landmarks: FaceLandmarks
    cache_key: str
    source_size: tuple[int, int]
    faces: int = 1
    warnings: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        if self.image.dtype != np.uint8 or self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(f"avatar image must be H×W×3 uint8, got {self.image.shape} {self.image.dtype}")

    @property
    def size(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True)
class AudioWindow:
    """A short span of mono audio on the session's media clock.

    Attributes:
        samples: float32 mono samples in [-1, 1].
        sample_rate: samples per second (16 kHz in the engine).
        start_pts: media time of the first sample, in ``PTS_CLOCK_RATE`` ticks.
        is_speech: the VAD's verdict for this window.
    """

    samples: np.ndarray
    sample_rate: int
    start_pts: int
    is_speech: bool = True

    def __post_init__(self) -> None:
        if self.samples.ndim != 1:
            raise ValueError(f"audio window must be mono 1-D, got shape {self.samples.shape}")
        if self.samples.dtype != np.float32:
            raise ValueError(f"audio window samples must be float32, got {self.samples.dtype}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def end_pts(self) -> int:
        return self.start_pts + round(len(self.samples) * PTS_CLOCK_RATE / self.sample_rate)


@dataclass
class Frame:
    """One output video frame.

    Attributes:
        rgb: H×W×3 uint8.
        pts: media time in ``PTS_CLOCK_RATE`` ticks.
        matte: optional H×W uint8 alpha of the person, for overlays.
    """

    rgb: np.ndarray
    pts: int
    matte: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        if self.rgb.dtype != np.uint8 or self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise ValueError(f"frame must be H×W×3 uint8, got {self.rgb.shape} {self.rgb.dtype}")
        if self.matte is not None and self.matte.shape != self.rgb.shape[:2]:
            raise ValueError(f"matte {self.matte.shape} does not match frame {self.rgb.shape[:2]}")
