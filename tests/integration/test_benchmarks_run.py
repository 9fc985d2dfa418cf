"""The benchmark runner's quick mode runs every benchmark end to end and writes its table.

About a minute on two idle cores: each benchmark starts its own OpenBao and
SoftHSM2 stack, so the test is marked slow. It checks that the runner works,
not any figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks._suites import NAMES
from benchmarks._table import END, START

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_quick_run_of_every_benchmark_writes_the_table(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## What is measured\n\ntext kept\n", encoding="utf-8")
    out = tmp_path / "run.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "KEYOPS_"))}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--docs", str(docs), "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert out.exists(), proc.stderr[-3000:]
    run = json.loads(out.read_text())
    failed = {name: suite["error"] for name, suite in run["suites"].items() if "error" in suite}
    assert not failed and proc.returncode == 0, (failed, proc.stderr[-1500:])
    assert run["kv_baseline"]["pair_ms"] > 0 and run["crypto"]["rates"]
    assert set(run["suites"]) == set(NAMES)
    for name, suite in run["suites"].items():
        assert "error" not in suite, (name, suite)
        assert "figures" in suite or "skipped" in suite, (name, suite)
    text = docs.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1 and "text kept" in text
    for name, suite in run["suites"].items():
        if "figures" in suite:
            assert f"| {name} |" in text, name
    # A second run replaces the block instead of adding one.
    from benchmarks._table import replace_block

    assert replace_block(text, f"{START}\nnew\n{END}").count(START) == 1
