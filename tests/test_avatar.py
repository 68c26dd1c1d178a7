"""Portrait loading: formats, styles, cropping, cache keys and every bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from emo_stream import errors
from emo_stream.avatar import AvatarLimits, decode_image, prepare_avatar
from emo_stream.face import CHIN, NOSE_TIP, eye_span
from tests import bad_inputs, media


def _encode(rgb_or_image, fmt: str, **kw) -> bytes:
    image = rgb_or_image if isinstance(rgb_or_image, Image.Image) else Image.fromarray(rgb_or_image)
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_astronaut_is_cropped_around_the_face(astronaut_png):
    avatar = prepare_avatar(astronaut_png, size=256)
    assert avatar.image.shape == (256, 256, 3)
    pts = avatar.landmarks.points
    # The face sits in the middle of the crop with room around it for head motion.
    assert 0.35 * 256 < pts[NOSE_TIP, 0] < 0.65 * 256
    assert 0.3 * 256 < pts[NOSE_TIP, 1] < 0.6 * 256
    assert pts[CHIN, 1] < 0.8 * 256
    assert 0.2 * 256 < eye_span(pts) < 0.5 * 256
    assert avatar.faces == 1 and avatar.source_size == (512, 512)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
def test_formats_load_and_find_the_face(fmt, hopper_rgb):
    avatar = prepare_avatar(_encode(hopper_rgb, fmt), size=192)
    assert avatar.image.shape == (192, 192, 3)


def test_cache_key_follows_content_and_size(astronaut_rgb):
    a = _encode(astronaut_rgb, "PNG")
    assert prepare_avatar(a, size=128).cache_key == prepare_avatar(a, size=128).cache_key
    assert prepare_avatar(a, size=128).cache_key != prepare_avatar(a, size=192).cache_key
    b = _encode(np.ascontiguousarray(astronaut_rgb[:, ::-1]), "PNG")
    assert prepare_avatar(b, size=128).cache_key != prepare_avatar(a, size=128).cache_key


def test_exif_orientation_is_applied(hopper_rgb):
    # Store the photo rotated on its side with an EXIF tag saying "rotate 90° to view".
    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(hopper_rgb, k=1)))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    data = _encode(sideways, "JPEG", exif=exif.tobytes())
    rgb = decode_image(data, AvatarLimits())
    assert rgb.shape[:2] == hopper_rgb.shape[:2]
    avatar = prepare_avatar(data, size=128)
    pts = avatar.landmarks.points
    assert pts[CHIN, 1] > pts[NOSE_TIP, 1]  # upright: chin below the nose


def test_alpha_greyscale_cmyk_and_16_bit(astronaut_rgb):
    rgba = np.dstack([astronaut_rgb, np.full(astronaut_rgb.shape[:2], 255, np.uint8)])
    rgba[:40, :40, 3] = 0
    decoded = decode_image(_encode(rgba, "PNG"), AvatarLimits())
    assert decoded.shape[2] == 3 and (decoded[:40, :40] == 255).all()  # transparent → white

    grey = Image.fromarray(astronaut_rgb).convert("L")
    assert decode_image(_encode(grey, "PNG"), AvatarLimits()).shape == astronaut_rgb.shape

    cmyk = Image.fromarray(astronaut_rgb).convert("CMYK")
    assert decode_image(_encode(cmyk, "JPEG"), AvatarLimits()).shape == astronaut_rgb.shape

    grey16 = (np.asarray(grey, dtype=np.uint16) * 257).astype(np.uint16)
    decoded16 = decode_image(_encode(Image.fromarray(grey16), "PNG"), AvatarLimits())
    # Scaled, not clipped: mid-greys stay mid-grey.
    assert 60 < decoded16.mean() < 200
    prepare_avatar(_encode(Image.fromarray(grey16), "PNG"), size=128)


def test_stylised_portraits_find_a_face(stylised_portrait, tmp_path):
    style, rgb = stylised_portrait
    avatar = prepare_avatar(_encode(rgb, "PNG"), size=128)
    assert avatar.image.shape == (128, 128, 3), style


def test_hopper_styles_find_a_face(hopper_rgb):
    for style in media.STYLES:
        prepare_avatar(_encode(media.stylise(hopper_rgb, style), "PNG"), size=128)


@pytest.mark.parametrize(
    ("builder", "error", "words"),
    [
        (bad_inputs.text_file, errors.NotAnImageError, "not an image"),
        (bad_inputs.truncated_jpeg, errors.NotAnImageError, "truncated"),
        (bad_inputs.one_pixel_png, errors.ImageTooSmallError, "1×1"),
        (bad_inputs.huge_jpeg, errors.ImageTooLargeError, "60.0 MP"),
        (bad_inputs.png_bomb, errors.ImageTooLargeError, ""),
        (bad_inputs.no_face_png, errors.NoFaceFoundError, "no face"),
        (bad_inputs.tiny_face_png, errors.FaceTooSmallError, "px across"),
    ],
)
def test_bad_images_raise_typed_errors(builder, error, words, tmp_path):
    path = builder(tmp_path)
    with pytest.raises(error) as info:
        prepare_avatar(path, size=128)
    assert words in str(info.value)
    assert isinstance(info.value, errors.EmoStreamError) and info.value.code


def test_missing_path_and_byte_limit(tmp_path, astronaut_png):
    with pytest.raises(errors.InputNotFoundError):
        prepare_avatar(tmp_path / "nope.jpg")
    with pytest.raises(errors.ImageTooLargeError, match="MB"):
        prepare_avatar(astronaut_png, limits=AvatarLimits(max_bytes=10_000))
