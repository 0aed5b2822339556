"""`python -m training synth` and `stats` as a user runs them, in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *args], capture_output=True, text=True, check=False
    )


def test_synth_then_stats_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "market"
    synth = _run("synth", "--out", str(out), "--seed", "5", "--scale", "0.05")
    assert synth.returncode == 0, synth.stderr
    stats = _run("stats", "--data", str(out))
    assert stats.returncode == 0, stats.stderr
    lines = stats.stdout.splitlines()
    assert lines[0].split()[:4] == ["figure", "this", "data", "set"]
    items_row = next(line for line in lines if line.startswith("items "))
    assert items_row.split()[1:3] == ["665", "13,297"]
    as_json = _run("stats", "--data", str(out), "--json")
    assert '"items": 665' in as_json.stdout


def test_bad_data_exits_with_the_file_and_line(tmp_path: Path) -> None:
    out = tmp_path / "market"
    assert _run("synth", "--out", str(out), "--scale", "0.02").returncode == 0
    purchases = out / "purchases.csv"
    lines = purchases.read_text().splitlines()
    lines[3] = "someone,1500000000,no-such-artwork"
    purchases.write_text("\n".join(lines) + "\n")
    result = _run("stats", "--data", str(out))
    assert result.returncode == 2
    assert f"error: {purchases}:4: unknown artwork 'no-such-artwork'" in result.stderr


def test_missing_directory_and_bad_scale_are_clear_errors(tmp_path: Path) -> None:
    missing = _run("stats", "--data", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert "data directory not found" in missing.stderr
    bad_scale = _run("synth", "--out", str(tmp_path / "x"), "--scale", "-1")
    assert bad_scale.returncode == 2
    assert "--scale must be positive" in bad_scale.stderr
