"""``python -m jaxupdate parity --quick`` runs the parity matrix against torch and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from jaxupdate.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_parity_quick_subprocess():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "jaxupdate", "parity", "--quick"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "all runs agree with torch" in out
    header = next(line for line in out.splitlines() if line.startswith("optimizer"))
    assert header.split() == ["optimizer", "float64", "float32", "complex128"]
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for name in ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam",
                 "RAdam", "ASGD", "Rprop", "LBFGS", "SparseAdam", "Adafactor", "Muon"):
        assert name in rows, name
        assert "FAIL" not in rows[name] and " ok" in rows[name], rows[name]
    for sched in ("OneCycleLR", "SequentialLR", "ChainedScheduler", "ReduceLROnPlateau"):
        assert any(line.startswith(sched + " /") and line.endswith("ok")
                   for line in out.splitlines()), sched
    assert "[ 1/" in proc.stderr or "[  1/" in proc.stderr  # progress on stderr
    # the float32 bit-identity report, realistic sizes included; SGD exact
    assert "bit-identical to torch" in out and "1,000 x 33 + 100,003" in out
    sgd = next(line for line in out.splitlines() if line.endswith("SGD {'lr': 0.1}"))
    assert sgd.split()[:2] == ["100.0000%", "100.0000%"], sgd


def test_mismatch_exits_nonzero(monkeypatch, capsys):
    """A mismatch (here: a negative float64 tolerance, which no run meets) exits 1."""
    from jaxupdate.interop import parity as P

    monkeypatch.setattr(P, "TOL", {**P.TOL, "float64": -1.0})
    code = main(["parity", "--quick", "--only", "Adadelta", "--steps", "3"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL" in out and "mismatches" in out
