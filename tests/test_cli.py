"""The two command lines: the engine's (``python -m emo_stream``) and ``emo-stream`` (the engine's + ``serve``)."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import tomllib

import pytest

from tests.media import REPO

ENGINE_COMMANDS = ["metrics", "render", "import", "train", "distill", "train-lite-motion", "data"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def listed_commands(help_text: str) -> list[str]:
    """The subcommands a ``--help`` lists (argparse indents each under ``COMMAND`` by four spaces)."""
    return re.findall(r"^ {4}([\w-]+)", help_text, flags=re.MULTILINE)


def test_python_m_emo_stream_lists_the_engine_commands_and_not_serve():
    result = run("-m", "emo_stream", "--help")
    assert result.returncode == 0, result.stderr
    assert listed_commands(result.stdout) == ENGINE_COMMANDS


def test_python_m_emo_stream_cli_is_the_same_command_line():
    """The form ``torchrun -m emo_stream.cli train`` needs."""
    result = run("-m", "emo_stream.cli", "train", "--help")
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout and "torchrun" in result.stdout


def test_the_console_script_lists_serve_and_the_engine_commands():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["emo-stream"].partition(":")
    code = f"import sys; from {module} import {function} as main; sys.exit(main(['--help']))"
    result = run("-c", code)
    assert result.returncode == 0, result.stderr
    assert listed_commands(result.stdout) == ["serve", *ENGINE_COMMANDS]


def test_serve_is_not_an_engine_command():
    result = run("-m", "emo_stream", "serve")
    assert result.returncode == 2
    assert "invalid choice: 'serve'" in result.stderr


@pytest.mark.parametrize("module", ["emo_stream.cli", "server.cli"])
def test_a_user_error_is_one_line_and_exit_2(module, tmp_path, monkeypatch, capsys):
    from emo_stream.cli import runner

    monkeypatch.setattr(runner, "quiet_native_stderr", lambda: None)
    main = importlib.import_module(module).main
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == runner.EXIT_USER_ERROR
    assert capsys.readouterr().err == f"error: config file not found: {tmp_path / 'missing.yaml'}\n"


def test_the_engine_never_imports_the_server():
    offenders = []
    for path in sorted((REPO / "emo_stream").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n == "server" or n.startswith("server.")]
    assert not offenders
