"""Typed config: the shipped files load, bad keys and values name themselves."""

from __future__ import annotations

import pytest

from emo_stream.errors import ConfigError, InputNotFoundError
from server.config import Config, load_config
from tests.media import REPO


@pytest.mark.parametrize("name", ["default.yaml", "tiny.yaml"])
def test_shipped_configs_load(name):
    config = load_config(REPO / "configs" / name)
    assert config.animator.backend == "lite"
    assert config.server.host == "127.0.0.1"


def test_default_file_matches_builtin_defaults():
    assert load_config(REPO / "configs" / "default.yaml") == Config()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("server:\n  prot: 80\n", "server.prot"),
        ("animator:\n  backend: magic\n", "animator.backend"),
        ("animator:\n  size: big\n", "animator.size"),
        ("server:\n  port: 70000\n", "server.port"),
        ("audio:\n  vad_threshold: 2\n", "audio.vad_threshold"),
        ("sever:\n  port: 1\n", "sever"),
        ("animator: 3\n", "animator"),
        ("server:\n  port: true\n", "server.port"),
        ("server:\n  processes: -1\n", "server.processes"),
    ],
)
def test_bad_keys_and_values_name_the_key(text, key, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(key)


def test_overrides_and_errors(tmp_path):
    config = load_config(None, {"server.port": 9001, "server.token": None})
    assert config.server.port == 9001 and config.server.token is None
    assert load_config(None, {"animator.motion": 2}).animator.motion == 2.0
    with pytest.raises(InputNotFoundError):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
