"""Typed config: the shipped files load, bad keys and values name themselves."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from emo_stream.config import EngineConfig
from emo_stream.config_reader import check, load, validate_sections
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


@dataclass
class _Inner:
    rate: float = 1.0
    names: list[str] = field(default_factory=list)
    path: str | None = None

    def validate(self, prefix: str) -> None:
        check(self.rate > 0, f"{prefix}.rate", f"must be > 0, got {self.rate}")


@dataclass
class _Outer:
    steps: int = 1
    inner: _Inner = field(default_factory=_Inner)

    def validate(self, prefix: str = "") -> None:
        validate_sections(self, prefix)


def test_the_reader_builds_nested_sections_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  rate: 2\n  names: [a, b]\n")
    config = load(_Outer, path, {"steps": 5, "inner.path": "x", "inner.names": None})
    assert config == _Outer(steps=5, inner=_Inner(rate=2.0, names=["a", "b"], path="x"))
    assert isinstance(config.inner.rate, float)  # an int is accepted where a float is expected
    assert load(_Outer) == _Outer()


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("inner:\n  rate: 0\n", {}, "inner.rate: must be > 0, got 0.0"),
        ("inner:\n  names: [a, 3]\n", {}, "inner.names[1]: expected str, got 3"),
        ("inner:\n  names: a\n", {}, "inner.names: expected a list, got 'a'"),
        ("steps: 1.5\n", {}, "steps: expected int, got 1.5"),
        ("inner:\n  rat: 1\n", {}, "inner.rat: unknown key (known: names, path, rate)"),
        ("steps: 3\n", {"steps.inner": 1}, "steps: expected a mapping"),
        ("- 1\n", {}, "expected a mapping at the top level"),
    ],
)
def test_the_reader_names_the_bad_key(text, overrides, message, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(_Outer, path, overrides)
    assert message in str(info.value)


def test_the_engine_sections_are_the_servers_too():
    """``server.config.Config`` is the engine's config plus the server's sections, read from one file."""
    config = load_config(None, {"animator.size": 256, "server.port": 9000})
    assert isinstance(config, EngineConfig)
    assert (config.animator.size, config.server.port) == (256, 9000)
    with pytest.raises(ConfigError, match="^server: unknown key"):
        load(EngineConfig, None, {"server.port": 9000})
