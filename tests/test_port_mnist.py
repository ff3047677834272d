"""examples/port_mnist.py: the ported MNIST run's two loss curves agree, and it draws its PNG."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, *extra):
    out = tmp_path / "port_mnist.png"
    res = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "port_mnist.py"), str(out),
         "--samples", "128", "--epochs", "2", *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [line.split() for line in res.stdout.splitlines() if re.match(r"^\s+\d+\s", line)]
    assert len(rows) == 4  # 2 batches per epoch, 2 epochs
    worst = float(re.search(r"largest relative difference: (\S+)", res.stdout).group(1))
    return rows, worst


def test_port_mnist_float32(tmp_path):
    rows, worst = _run(tmp_path)
    assert worst <= 1e-3
    assert float(rows[-1][1]) < float(rows[0][1])  # it trains


def test_port_mnist_float64_is_exact(tmp_path):
    """In float64 the port agrees with torch to rounding: the float32 gap is not a port error."""
    _, worst = _run(tmp_path, "--dtype", "float64")
    assert worst <= 1e-12
