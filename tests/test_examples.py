"""The examples users look at run, and agree with torch (each exits non-zero otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_schedules_example_draws_png(tmp_path):
    out = tmp_path / "schedules.png"
    res = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "schedules.py"), str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert out.stat().st_size > 10_000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_float32_bit_identical_example():
    """SGD's float32 parameters equal torch's bit for bit (the example exits 1 otherwise)."""
    # this checkout's jaxupdate, not an installed one (a script's own folder leads sys.path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "float32_bit_identical.py")],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env=env,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SGD(momentum, weight_decay): 100.0000%" in res.stdout
