"""Shared fixtures: portraits and audio made on this machine (cached), tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests import media

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GLOG_minloglevel", "2")


@pytest.fixture(scope="session")
def astronaut_rgb() -> np.ndarray:
    return media.astronaut()


@pytest.fixture(scope="session")
def hopper_rgb() -> np.ndarray:
    return media.grace_hopper()


@pytest.fixture(scope="session")
def astronaut_png(astronaut_rgb) -> Path:
    return media.save_png(astronaut_rgb, "astronaut.png")


@pytest.fixture(scope="session")
def hopper_jpg() -> Path:
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.fixture(scope="session", params=media.STYLES)
def stylised_portrait(request, astronaut_rgb) -> tuple[str, np.ndarray]:
    return request.param, media.stylise(astronaut_rgb, request.param)


@pytest.fixture(scope="session")
def speech_wav() -> Path:
    return media.silence_then_speech("hello")


@pytest.fixture(scope="session")
def mama_wav() -> Path:
    return media.espeak_wav("mama")


@pytest.fixture(scope="session")
def singing_wav() -> Path:
    return media.singing_wav()


@pytest.fixture(scope="session")
def silence_wav() -> Path:
    return media.silence_wav(3.0)


@pytest.fixture(scope="session")
def tiny_config_path() -> Path:
    return media.REPO / "configs" / "tiny.yaml"
