"""Shared fixtures: portraits and audio made on this machine (cached), tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests import media

# tests/agents (pipecat, LiveKit Agents) run in the agent environment: `make test-agents`, which `make test` runs.
collect_ignore = [] if os.environ.get("EMO_STREAM_AGENT_TESTS") else ["agents"]

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


@pytest.fixture(scope="module")
def tiny_emo_pipe():
    """The tiny random emo pipeline (its own, per module: tests change its scheduler and settings)."""
    from emo_stream.models import tiny_components
    from emo_stream.pipelines import EmoPipeline

    pipe = EmoPipeline.from_components(tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_emo_avatars(tiny_emo_pipe) -> list:
    """Three portraits (astronaut, Grace Hopper, a sketch) prepared at the tiny pipeline's size."""
    from emo_stream.avatar import prepare_avatar

    size = int(tiny_emo_pipe.settings.sample_size)
    astronaut = media.astronaut()
    return [prepare_avatar(media.save_png(rgb, name), size=size)
            for name, rgb in (("astronaut.png", astronaut), ("grace_hopper.png", media.grace_hopper()),
                              ("astsketch.png", media.stylise(astronaut, "sketch")))]
