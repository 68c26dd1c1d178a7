"""The GPU campaign's summary: one markdown table from the JSON files ``bench/gpu_campaign.sh`` wrote.

Usage: python bench/campaign_table.py OUT_DIR > OUT_DIR/campaign.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def emo_rows(name: str, result: dict) -> list[str]:
    config = result.get("config", {})
    grid = result["grid"] if result.get("partial") else result["candidate"]["grid"]
    weights = config.get("weights", "(stopped at its time limit: the rows it finished)")
    rows = []
    for row in grid:
        compute = row.get("compute", {})
        rows.append(f"| {name} | {weights} | {'yes' if config.get('compile') else 'no'} | {row['steps']} | "
                    f"{row['sessions']} | {row['fps_per_session']} | {row['fps_aggregate']} | "
                    f"{row['voice_to_frame_ms_p95']} | {compute.get('gflops_per_frame', '—')} | "
                    f"{_pct(compute.get('mfu'))} |")
    return rows


def _load(path: Path, problems: list[str]) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"`{path.name}` could not be read: {exc}")
        return None


def main() -> int:
    out = Path(sys.argv[1])
    problems: list[str] = []
    lines = ["# GPU campaign", ""]
    device = None
    table = []
    for path in sorted(out.glob("emo_*.json")):
        result = _load(path, problems)
        if result is not None:
            device = device or result.get("device")
            table += emo_rows(path.stem, result)
    commit = (out / "commit.txt").read_text().strip() if (out / "commit.txt").exists() else None
    lines += [f"Device: {device or 'no emo results'}. Commit: {commit or 'unknown'}.", ""]
    gpu = out / "gpu.txt"
    if gpu.exists():
        lines += ["```", gpu.read_text().strip(), "```", ""]
    if table:
        lines += ["| run | weights | compiled | steps | sessions | frames/s per session | aggregate | "
                  "voice → frame p95 ms | GFLOP per frame | MFU |", "|---|---|---|---|---|---|---|---|---|---|", *table, ""]
    for path in sorted(out.glob("audio_parity_*.json")):
        result = _load(path, problems)
        if result is None:
            continue
        timing = result.get("ms_per_clip", {})
        lines.append(f"- `{path.name}`: {result['encoder']}; relative L2 {result['relative_l2']}"
                     + (f"; ms per live clip padded {timing['padded']['median']} against unpadded "
                        f"{timing['unpadded']['median']}" if timing else ""))
    for path in sorted(out.glob("profile_*.md")):
        lines += ["", f"## {path.stem}", "", path.read_text()]
    for path in sorted(out.glob("*.failed")):
        log = out / f"{path.stem}.log"
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
        lines += ["", f"## {path.stem}: failed or stopped at its time limit", "", "```", *tail, "```"]
    if problems:
        lines += ["", *problems]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
