"""Describe the machine a benchmark ran on, so its numbers can be read in context.

Timings mean little without the CPU, the core count, the memory and the
numerical stack (which BLAS, how many threads); every benchmark stores this
record next to its results. Run ``python benchmarks/machine.py`` to print it.
"""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["machine_info", "machine_markdown"]

_PACKAGES = ("privrec", "numpy", "scipy", "numba", "implicit", "threadpoolctl", "pandas")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _blas() -> list[dict[str, Any]]:
    try:
        import numpy  # noqa: F401  (loads the BLAS that threadpoolctl inspects)
        import scipy.linalg  # noqa: F401
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("user_api", "internal_api", "version", "num_threads", "threading_layer", "filepath")
    return [{k: info.get(k) for k in keep} for info in threadpool_info()]


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, OS, Python and library versions, and the BLAS libraries loaded."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": affinity,
        "ram_gb": _ram_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in _PACKAGES},
        "blas": _blas(),
        "numba_num_threads_env": os.environ.get("NUMBA_NUM_THREADS"),
    }


def machine_markdown(info: dict[str, Any]) -> str:
    """The record as a short Markdown list for a results file."""
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    blas = "; ".join(
        f"{b['internal_api']} {b['version']} ({b['num_threads']} threads"
        + (f", {b['threading_layer']}" if b.get("threading_layer") else "")
        + ")"
        for b in info["blas"]
    )
    return "\n".join(
        [
            f"- CPU: {info['cpu']} — {info['logical_cores']} logical cores "
            f"({info['usable_cores']} usable), {info['ram_gb']} GB RAM",
            f"- OS: {info['os']}, Python {info['python']}",
            f"- Versions: {versions}",
            f"- BLAS: {blas or 'not detected'}",
        ]
    )


if __name__ == "__main__":
    print(json.dumps(machine_info(), indent=2))
