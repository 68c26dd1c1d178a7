"""The GPU campaign (``bench/gpu_campaign.sh``) runs end to end on CPU with tiny models: the dry run a lucky
session can trust before it spends its GPU minutes."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile

import pytest

from tests import media


def _dry_run(out, *extra: str) -> subprocess.CompletedProcess:
    """Run it with OUT = ``out`` and its staging folder in ``out / "stage"``."""
    env = dict(os.environ, OUT=str(out), STAGE=str(out / "stage"), HF_HUB_OFFLINE="1")
    done = subprocess.run(["bash", "bench/gpu_campaign.sh", "--device", "cpu", "--tiny", *extra], cwd=media.REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    # What comes back from a lent machine: the table and one archive of everything.
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["campaign.md", "raw.tgz"], done.stderr[-3000:]
    with tarfile.open(out / "raw.tgz") as archive:
        assert "./campaign.md" in archive.getnames()
    return done


def _check_emo(result: dict, compiled: bool) -> None:
    assert result["config"]["compile"] is compiled
    for row in result["candidate"]["grid"]:
        assert row["fps_aggregate"] > 0 and row["compute"]["gflops_per_frame"] > 0
        assert row["compute"]["mfu"] is None  # a CPU has no peak in the table: no guessed MFU


def test_the_campaign_dry_run_writes_every_result_and_the_table(tmp_path):
    done = _dry_run(tmp_path, "--no-compile")
    assert done.returncode == 0, done.stderr[-3000:]
    stage = tmp_path / "stage"
    assert not list(stage.glob("*.failed")), done.stderr[-3000:]
    emo = json.loads((stage / "emo_tiny.json").read_text())
    _check_emo(emo, compiled=False)
    assert [(row["steps"], row["sessions"]) for row in emo["candidate"]["grid"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    parity = json.loads((stage / "audio_parity_tiny.json").read_text())
    assert parity["relative_l2"]["placed"] < parity["relative_l2"]["at_zero"]
    table = (tmp_path / "campaign.md").read_text()
    assert "| emo_tiny | tiny random checkpoint | no | 2 | 2 |" in table
    assert "Top 20 by CPU time" in table and "audio_parity_tiny.json" in table


@pytest.mark.compile
def test_the_campaign_dry_run_compiles_too(tmp_path):
    done = _dry_run(tmp_path)
    stage = tmp_path / "stage"
    assert done.returncode == 0 and not list(stage.glob("*.failed")), done.stderr[-3000:]
    compiled = json.loads((stage / "emo_tiny_compiled.json").read_text())
    _check_emo(compiled, compiled=True)
    assert compiled["compile_counters"]["stats"]["unique_graphs"] > 0  # it did compile
    assert "| emo_tiny_compiled | tiny random checkpoint | yes | 2 | 1 |" in (tmp_path / "campaign.md").read_text()
