"""The GPU campaign (``bench/gpu_campaign.sh``) runs end to end on CPU with tiny models: the dry run a lucky
session can trust before it spends its GPU minutes."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests import media


def _dry_run(out, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT=str(out), HF_HUB_OFFLINE="1")
    return subprocess.run(["bash", "bench/gpu_campaign.sh", "--device", "cpu", "--tiny", *extra], cwd=media.REPO,
                          env=env, capture_output=True, text=True, timeout=900)


def _check_emo(result: dict, compiled: bool) -> None:
    assert result["config"]["compile"] is compiled
    for row in result["candidate"]["grid"]:
        assert row["fps_aggregate"] > 0 and row["compute"]["gflops_per_frame"] > 0
        assert row["compute"]["mfu"] is None  # a CPU has no peak in the table: no guessed MFU


def test_the_campaign_dry_run_writes_every_result_and_the_table(tmp_path):
    done = _dry_run(tmp_path, "--no-compile")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(tmp_path.glob("*.failed")), done.stderr[-3000:]
    emo = json.loads((tmp_path / "emo_tiny.json").read_text())
    _check_emo(emo, compiled=False)
    assert [(row["steps"], row["sessions"]) for row in emo["candidate"]["grid"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    parity = json.loads((tmp_path / "audio_parity_tiny.json").read_text())
    assert parity["relative_l2"]["placed"] < parity["relative_l2"]["at_zero"]
    table = (tmp_path / "campaign.md").read_text()
    assert "| emo_tiny | tiny random checkpoint | no | 2 | 2 |" in table
    assert "Top 20 by CPU time" in table and "audio_parity_tiny.json" in table


@pytest.mark.compile
def test_the_campaign_dry_run_compiles_too(tmp_path):
    done = _dry_run(tmp_path)
    assert done.returncode == 0 and not list(tmp_path.glob("*.failed")), done.stderr[-3000:]
    _check_emo(json.loads((tmp_path / "emo_tiny_compiled.json").read_text()), compiled=True)
    assert "| emo_tiny_compiled | tiny random checkpoint | yes | 2 | 1 |" in (tmp_path / "campaign.md").read_text()
