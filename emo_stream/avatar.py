"""Load and validate a portrait, find the face and its landmarks, crop it, key it by content.

Checks run cheapest first: file size, then the header's pixel count (PIL reads only the
header before ``load()``), so a 60 MP photo or a PNG bomb is refused before any pixel is
decoded.
"""

from __future__ import annotations

import hashlib
import io
import time
import warnings as py_warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from emo_stream.errors import (
    FaceTooSmallError,
    ImageTooLargeError,
    ImageTooSmallError,
    InputNotFoundError,
    NoFaceFoundError,
    NotAnImageError,
)
from emo_stream.face import CHIN, FOREHEAD, FaceDetector, FaceMesh
from emo_stream.types import Avatar, FaceLandmarks

ACCEPTED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WebP", "BMP": "BMP"}
MIN_IMAGE_SIDE_PX = 32
# Face detection runs on a copy no larger than this; mediapipe scales its input down anyway.
DETECT_MAX_SIDE_PX = 1280
# Forehead-to-chin height of the face as a fraction of the output side, and where its centre
# sits: leaves room above and around the head for motion, and shows the neck and shoulders.
FACE_HEIGHT_FRACTION = 0.38
FACE_CENTER = (0.5, 0.47)
CROP_VERSION = "crop-v1"
# A mesh face smaller than this is measured again with the face detector.
SMALL_MESH_FACE_PX = 128
# The tile search for small faces (``_detector_boxes``): 384-px tiles, half overlapping, at most about 150 of
# them (~2 s on one core) and at most 3 s; scaled down no further than keeps a usable face 24 px in a tile.
TILE_PX = 384
TILE_SEARCH_MAX_TILES = 150
TILE_SEARCH_FACE_PX = 24
TILE_SEARCH_BUDGET_S = 3.0


@dataclass(frozen=True)
class AvatarLimits:
    """Input limits (from config ``limits``)."""

    max_pixels: int = 40_000_000
    max_bytes: int = 25 * 1024 * 1024
    min_face_px: int = 48


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} MP"


def read_image_bytes(source: str | Path | bytes, limits: AvatarLimits) -> bytes:
    """The raw bytes of a portrait from a path or bytes, refusing files over the byte limit."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.exists():
            raise InputNotFoundError(f"image not found: {path}")
        if not path.is_file():
            raise InputNotFoundError(f"image path is not a file: {path}")
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise ImageTooLargeError(
                f"image file is {size / 2**20:.1f} MB; the limit is {limits.max_bytes / 2**20:.0f} MB")
        data = path.read_bytes()
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(
            f"image is {len(data) / 2**20:.1f} MB; the limit is {limits.max_bytes / 2**20:.0f} MB")
    if not data:
        raise NotAnImageError("the image file is empty")
    return data


def decode_image(data: bytes, limits: AvatarLimits) -> np.ndarray:
    """Decode JPEG/PNG/WebP/BMP bytes to RGB uint8, honouring EXIF orientation.

    Alpha is composited on white; greyscale, palette, CMYK and 16-bit images are converted.

    Raises:
        NotAnImageError: not an image, an unsupported format, or truncated/corrupt data.
        ImageTooLargeError: over the pixel limit (checked from the header, before decoding).
        ImageTooSmallError: too few pixels to hold a face.
    """
    with py_warnings.catch_warnings():
        # Our own pixel check replaces PIL's bomb warning; PIL's hard limit still raises.
        py_warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"image refused as a decompression bomb ({exc})") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise NotAnImageError("not an image: use a JPEG, PNG, WebP or BMP photo") from None
        if image.format not in ACCEPTED_FORMATS:
            raise NotAnImageError(f"unsupported image format {image.format}: use JPEG, PNG, WebP or BMP")
        width, height = image.size
        pixels = width * height
        if pixels > limits.max_pixels:
            raise ImageTooLargeError(
                f"image is {width}×{height} ({_megapixels(pixels)}); the limit is {_megapixels(limits.max_pixels)}")
        if min(width, height) < MIN_IMAGE_SIDE_PX:
            raise ImageTooSmallError(
                f"image is {width}×{height}; a portrait needs at least {MIN_IMAGE_SIDE_PX} pixels on each side")
        try:
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"image refused as a decompression bomb ({exc})") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise NotAnImageError(f"the image is truncated or corrupt ({str(exc).splitlines()[0]})") from None


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # PIL clips 16-bit and float data to 255 when converting; scale it instead.
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        grey = np.zeros(arr.shape, np.uint8) if hi <= lo else ((arr - lo) / (hi - lo) * 255).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def content_key(data: bytes, size: int) -> str:
    """A cache key for the prepared avatar: the source bytes and the crop settings."""
    h = hashlib.sha256(data)
    h.update(f"|{size}|{CROP_VERSION}".encode())
    return h.hexdigest()[:32]


def _scaled_for_detection(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    h, w = rgb.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE_PX / max(h, w))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return rgb, scale


def _rescaled(face: FaceLandmarks, scale: float, offset: tuple[float, float], size: tuple[int, int]) -> FaceLandmarks:
    pts = face.points.copy()
    pts[:, 0] = pts[:, 0] / scale + offset[0]
    pts[:, 1] = pts[:, 1] / scale + offset[1]
    pts[:, 2] = pts[:, 2] / scale
    return FaceLandmarks(points=pts, image_size=size)


def _detect_any_style(mesh: FaceMesh, rgb: np.ndarray) -> list[FaceLandmarks]:
    """Detect on the image, then on a softened copy: line drawings and sketches have edges but
    no shading, and the mesh's detector finds their faces once the lines are blurred into tone."""
    faces = mesh.detect(rgb)
    if faces:
        return faces
    k = max(3, (max(rgb.shape[:2]) // 100) | 1)
    return mesh.detect(cv2.GaussianBlur(rgb, (k, k), 0))


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _tile_origins(h: int, w: int, tile: int) -> list[tuple[int, int]]:
    step = tile // 2
    return [(y, x) for y in range(0, max(1, h - step), step) for x in range(0, max(1, w - step), step)]


def _detector_boxes(rgb: np.ndarray, detector: FaceDetector, min_face_px: int = 48,
                    budget_s: float = TILE_SEARCH_BUDGET_S,
                    clock: Callable[[], float] = time.monotonic) -> list[tuple[float, float, float, float, float]]:
    """Face boxes over the whole image, then over overlapping tiles (the detector works at 192²,
    so a small face in a large photo is only seen in a tile). Duplicates are merged.

    The tile search is bounded, so one photo cannot take a server's CPU for long: a photo that would need more
    than ``TILE_SEARCH_MAX_TILES`` tiles is searched scaled down (never so far that a face of ``min_face_px``
    falls under ``TILE_SEARCH_FACE_PX``), and the search stops after ``budget_s``.
    """
    h, w = rgb.shape[:2]
    boxes = list(detector.detect(rgb))
    tile = TILE_PX
    if not boxes and max(h, w) > tile:
        scale = 1.0
        needed = len(_tile_origins(h, w, tile))
        if needed > TILE_SEARCH_MAX_TILES:
            scale = max(TILE_SEARCH_FACE_PX / min_face_px, (TILE_SEARCH_MAX_TILES / needed) ** 0.5)
        searched = rgb if scale >= 1.0 else cv2.resize(rgb, (round(w * scale), round(h * scale)),
                                                       interpolation=cv2.INTER_AREA)
        deadline = clock() + budget_s
        for y, x in _tile_origins(searched.shape[0], searched.shape[1], tile):
            if clock() > deadline:
                break
            for x0, y0, x1, y1, score in detector.detect(searched[y:y + tile, x:x + tile]):
                boxes.append(((x0 + x) / scale, (y0 + y) / scale, (x1 + x) / scale, (y1 + y) / scale, score))
    merged: list[tuple[float, float, float, float, float]] = []
    for box in sorted(boxes, key=lambda b: b[4], reverse=True):
        if all(_iou(box, kept) < 0.3 for kept in merged):
            merged.append(box)
    return merged


def find_faces(rgb: np.ndarray, mesh: FaceMesh | None = None,
               min_face_px: int = 48) -> tuple[list[FaceLandmarks], list[float]]:
    """Faces in a photo (landmarks in its pixels, largest first) and the sizes of faces too small to use.

    The mesh looks at the whole photo first. When it finds nothing, a full-range face detector
    (whole photo, then tiles) locates smaller faces: those under ``min_face_px`` are returned as
    sizes only; larger ones are cropped, enlarged and meshed.
    """
    mesh = mesh or FaceMesh(static=True, max_faces=4)
    h, w = rgb.shape[:2]
    small, scale = _scaled_for_detection(rgb)
    faces = [_rescaled(f, scale, (0, 0), (w, h)) for f in _detect_any_style(mesh, small)]
    if faces and faces[0].face_size_px >= SMALL_MESH_FACE_PX:
        return faces, []
    detector = FaceDetector()
    try:
        boxes = _detector_boxes(rgb, detector, min_face_px)
    finally:
        detector.close()
    if faces:
        # The mesh spreads its landmarks over a tiny face's surroundings; trust the detector's size.
        mesh_box = faces[0].bbox
        for box in boxes:
            side = max(box[2] - box[0], box[3] - box[1])
            if _iou(box, mesh_box) > 0 and side < min_face_px:
                return [], [side]
        return faces, []
    too_small: list[float] = []
    for x0, y0, x1, y1, _ in boxes:
        side = max(x1 - x0, y1 - y0)
        if side < min_face_px:
            too_small.append(side)
            continue
        # A square crop 2.5× the face box, enlarged to 384 px for the mesh.
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 1.25 * side
        cx0, cy0 = int(max(0, cx - half)), int(max(0, cy - half))
        crop = rgb[cy0:int(min(h, cy + half)), cx0:int(min(w, cx + half))]
        up = 384 / max(crop.shape[:2])
        crop = cv2.resize(crop, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC if up > 1 else cv2.INTER_AREA)
        faces.extend(_rescaled(f, up, (cx0, cy0), (w, h)) for f in _detect_any_style(mesh, crop)[:1])
    faces.sort(key=lambda f: f.face_size_px, reverse=True)
    return faces, sorted(too_small, reverse=True)


def crop_transform(face: FaceLandmarks, size: int) -> np.ndarray:
    """The 2×3 affine (scale + translation) that frames ``face`` in a size×size square."""
    pts = face.points
    top, chin = pts[FOREHEAD, :2], pts[CHIN, :2]
    face_height = float(np.linalg.norm(chin - top))
    scale = FACE_HEIGHT_FRACTION * size / max(face_height, 1.0)
    center = (top + chin) / 2
    tx = FACE_CENTER[0] * size - scale * center[0]
    ty = FACE_CENTER[1] * size - scale * center[1]
    return np.array([[scale, 0, tx], [0, scale, ty]], dtype=np.float64)


def apply_transform(face: FaceLandmarks, matrix: np.ndarray, size: int) -> FaceLandmarks:
    pts = face.points.astype(np.float64).copy()
    scale = matrix[0, 0]
    pts[:, :2] = pts[:, :2] @ matrix[:, :2].T + matrix[:, 2]
    pts[:, 2] *= scale
    return FaceLandmarks(points=pts.astype(np.float32), image_size=(size, size))


def prepare_avatar(source: str | Path | bytes, size: int = 512, limits: AvatarLimits | None = None,
                   name: str = "", mesh: FaceMesh | None = None) -> Avatar:
    """Load a portrait, find its largest face and crop it to a size×size Avatar.

    Args:
        source: a path or the file's bytes (JPEG, PNG, WebP or BMP).
        size: output side in pixels.
        limits: byte, pixel and face-size limits.
        name: a display name.
        mesh: a FaceMesh to reuse (static mode).

    Raises:
        InputNotFoundError, NotAnImageError, ImageTooLargeError, ImageTooSmallError,
        NoFaceFoundError, FaceTooSmallError.
    """
    limits = limits or AvatarLimits()
    data = read_image_bytes(source, limits)
    rgb = decode_image(data, limits)
    h, w = rgb.shape[:2]
    faces, too_small = find_faces(rgb, mesh, limits.min_face_px)
    if not faces and too_small:
        raise FaceTooSmallError(
            f"the face is {too_small[0]:.0f} px across in a {w}×{h} image; at least "
            f"{limits.min_face_px} px are needed: use a closer or larger photo")
    if not faces:
        raise NoFaceFoundError(f"no face found in the {w}×{h} image: use a photo with a clear, front-facing face")
    face = faces[0]
    if face.face_size_px < limits.min_face_px:
        raise FaceTooSmallError(
            f"the face is {face.face_size_px:.0f} px across in a {w}×{h} image; at least "
            f"{limits.min_face_px} px are needed: use a closer or larger photo")
    notes: list[str] = []
    if len(faces) > 1:
        notes.append(f"{len(faces)} faces found; using the largest")
    matrix = crop_transform(face, size)
    corners = np.array([[0, 0, 1], [size, size, 1]], dtype=np.float64)
    inverse = cv2.invertAffineTransform(matrix)
    src_corners = corners @ inverse.T
    if src_corners[0].min() < 0 or src_corners[1, 0] > w or src_corners[1, 1] > h:
        notes.append("the photo was extended at its edges to frame the head; a wider photo looks better")
    if matrix[0, 0] > 2.5:
        notes.append(f"the face is small ({face.face_size_px:.0f} px) and was enlarged {matrix[0, 0]:.1f}×; "
                     "a larger photo looks sharper")
    crop = cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_CUBIC if matrix[0, 0] > 1 else cv2.INTER_AREA,
                          borderMode=cv2.BORDER_REFLECT_101)
    return Avatar(image=crop, landmarks=apply_transform(face, matrix, size), cache_key=content_key(data, size),
                  source_size=(w, h), faces=len(faces), warnings=tuple(notes), name=name)
