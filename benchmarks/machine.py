"""Where the numbers were measured: CPU model, cores, memory, load and library versions."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path


def _cpuinfo() -> tuple[str, int | None]:
    model, cores = None, set()
    try:
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name" and model is None:
                model = value
            elif key == "physical id":
                phys = value
            elif key == "core id":
                core = value
            elif not key and core is not None:
                cores.add((phys, core))
                phys = core = None
        if core is not None:
            cores.add((phys, core))
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), (len(cores) or None)


def mem_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _mem_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_pressure_avg60() -> float | None:
    """Share of the last minute in which some runnable task waited for a CPU (Linux PSI)."""
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some"):
                return float(dict(kv.split("=") for kv in line.split()[1:])["avg60"])
    except (OSError, KeyError, ValueError):
        pass
    return None


def describe() -> dict:
    import jax
    import jaxlib
    import numpy as np
    import optax

    import jaxupdate

    model, physical = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "physical_cores": physical,
        "mem_total_gb": round((_mem_total_bytes() or 0) / 2**30, 1),
        "mem_available_gb_at_start": round((mem_available_bytes() or 0) / 2**30, 1),
        "load_average_at_start": load_average(),
        "cpu_pressure_avg60_at_start": cpu_pressure_avg60(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "optax": optax.__version__,
        "numpy": np.__version__,
        "jaxupdate": getattr(jaxupdate, "__version__", None),
        "git_commit": _git_commit(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "env": {k: os.environ[k] for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                           "JAX_PLATFORMS") if k in os.environ},
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except ImportError:
        info["torch"] = None
    return info


def one_line(info: dict) -> str:
    cores = info.get("physical_cores")
    parts = [
        f"{info['cpu_model']}",
        f"{info['usable_cpus']} usable CPUs" + (f" ({cores} physical cores)" if cores else ""),
        f"{info['mem_total_gb']} GiB RAM",
    ]
    if info.get("cuda_device"):
        parts.append(f"GPU {info['cuda_device']}")
    parts.append(f"jax {info['jax']} ({info['jax_backend']}), optax {info['optax']}, "
                 f"torch {info.get('torch')} ({info.get('torch_threads')} threads), "
                 f"Python {info['python']}")
    return "; ".join(parts)
