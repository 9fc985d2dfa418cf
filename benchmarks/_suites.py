"""The benchmarks that ``benchmarks.run`` runs, each in its own process with its own stack, and their figures.

Each suite names its script, its arguments for a full run and for a quick
smoke run, and how to read its output into a flat dict of figures. The
table (``benchmarks._table``) sets each figure beside its baseline measured
in the same run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

Figures = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    read: Callable[[str, Path], Figures]  # (stdout, the --json file) -> figures
    json_file: bool = True  # takes ``--json FILE``
    needs: str | None = None  # a program on PATH without which the suite is skipped


def _json_tail(stdout: str) -> Any:
    """The JSON document that ends the output (the last line, or everything from the last line that opens one)."""
    lines = stdout.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(("{", "[")):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON document at the end of the output")


def _reencrypt(_: str, path: Path) -> Figures:
    rounds = json.loads(path.read_text())["rounds"]
    best = {key: max(r[key]["rate"] for r in rounds) for key in ("raw", "pass", "total", "rewrap")}
    return {"raw_kv_pairs_per_s": best["raw"], "pass_per_s": best["pass"], "job_per_s": best["total"],
            "transit_rewrap_per_s": best["rewrap"], "secrets": json.loads(path.read_text())["secrets"]}


def _rotation(_: str, path: Path) -> Figures:
    return {r["name"]: {"best_ms": round(r["best"] * 1000, 1), "median_ms": round(r["median"] * 1000, 1)}
            for r in json.loads(path.read_text())["results"]}


def _vault_client(_: str, path: Path) -> Figures:
    summary = json.loads(path.read_text())["summary"]
    return {op: by["urllib3"] for op, by in summary.items()}


_STARTUP = re.compile(r"^(?P<name>.+?)\s+best\s+(?P<best>\d+) ms\s+median\s+(?P<median>\d+) ms", re.MULTILINE)


def _startup(stdout: str, _: Path) -> Figures:
    return {m["name"].strip(): {"best_ms": int(m["best"]), "median_ms": int(m["median"])}
            for m in _STARTUP.finditer(stdout)}


def _http(stdout: str, _: Path) -> Figures:
    return dict(_json_tail(stdout))


def _kms(stdout: str, _: Path) -> Figures:
    return dict(_json_tail(stdout))


def _playbook(stdout: str, _: Path) -> Figures:
    return dict(_json_tail(stdout))


def _scale(_: str, path: Path) -> Figures:
    return dict(json.loads(path.read_text()))


SUITES: tuple[Suite, ...] = (
    Suite("reencrypt", "bench_reencrypt.py", ("--secrets", "2000", "--rounds", "2"),
          ("--secrets", "40", "--rounds", "1"), _reencrypt),
    Suite("rotation", "bench_rotation.py", ("--secrets", "100,1000", "--tenants", "10,100", "--rounds", "3"),
          ("--secrets", "10", "--tenants", "3", "--rounds", "1"), _rotation),
    Suite("vault_client", "bench_vault_client.py", ("--requests", "500", "--rounds", "3"),
          ("--requests", "30", "--rounds", "1"), _vault_client),
    Suite("startup", "bench_startup.py", ("--rounds", "7"), ("--rounds", "1"), _startup, json_file=False),
    Suite("http", "bench_http.py", ("--seconds", "5"), ("--seconds", "1", "--concurrency", "4"), _http,
          json_file=False, needs="hey"),
    Suite("kms", "bench_kms.py", (), ("--calls", "20", "--burst", "60", "--threads", "2"), _kms, json_file=False),
    Suite("rotate_playbook", "bench_rotate_playbook.py", ("--tenants", "1,10,100,1000", "--json"),
          ("--tenants", "1,2", "--secrets", "1", "--json"), _playbook, json_file=False, needs="ansible-playbook"),
    Suite("scale", "bench_scale.py", (), ("--quick",), _scale),
)

NAMES = tuple(s.name for s in SUITES)


def run_suite(suite: Suite, quick: bool, progress: Callable[[str], None]) -> Figures:
    """Run one suite in its own process; its figures, the seconds it took, and the load average after it.

    A suite that fails (or lacks its program) is reported with its error, and the others still run.
    """
    out: Figures = {}
    bin_dir = Path(sys.executable).parent
    if suite.needs is not None and not (bin_dir / suite.needs).exists() and _which(suite.needs) is None:
        return {"skipped": f"{suite.needs} is not installed"}
    with tempfile.TemporaryDirectory(prefix=f"keyops-run-{suite.name}-") as tmp:
        json_path = Path(tmp) / "out.json"
        cmd = [sys.executable, str(REPO / "benchmarks" / suite.script), *(suite.quick if quick else suite.full)]
        if suite.json_file:
            cmd += ["--json", str(json_path)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        progress(f"{suite.name}: {' '.join(cmd[1:])}")
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL)
        out["seconds"] = round(time.monotonic() - started, 1)
        out["load_after"] = round(os.getloadavg()[0], 2)
        if proc.returncode != 0:
            out["error"] = f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-1500:]}"
            return out
        try:
            out["figures"] = suite.read(proc.stdout, json_path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out["error"] = f"could not read its output ({exc}): {proc.stdout.strip()[-1500:]}"
    return out


def _which(program: str) -> str | None:
    import shutil

    return shutil.which(program)
