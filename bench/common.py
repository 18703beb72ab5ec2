"""Shared helpers: output location, machine facts, timing, atomic JSON."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from stepsearch_lib.config import PROJECT_ROOT
from stepsearch_lib.fileio import peak_rss_mb, write_json

OUT_DIR = Path(os.environ.get("STEPSEARCH_BENCH_DIR", PROJECT_ROOT / "runs" / "bench"))
"""Where benchmark JSON goes (`$STEPSEARCH_BENCH_DIR` overrides)."""


def machine() -> dict:
    import torch

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def timed(fn, *args, repeat: int = 1, **kwargs):
    """(result of the last call, best wall seconds over ``repeat`` calls)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return out, best


def save(name: str, result: dict) -> Path:
    path = write_json(
        OUT_DIR / f"{name}.json", {"benchmark": name, "machine": machine(), "peak_rss_mb": peak_rss_mb(), **result}
    )
    print(f"[bench] {name}: {path}")
    return path


def memory_bandwidth_gbs(size_mb: int = 512, repeat: int = 5) -> float:
    """Measured copy bandwidth (read + write bytes per second, GB/s) of a large array."""
    import numpy as np

    a = np.ones(size_mb * 2**20 // 8)
    b = np.empty_like(a)
    _, best = timed(np.copyto, b, a, repeat=repeat)
    return 2 * a.nbytes / best / 1e9


def gemm_gflops(m: int = 2048, k: int = 576, n: int = 1536, dtype: str = "bfloat16", repeat: int = 20) -> float:
    """Measured (m x k) @ (k x n) GEMM rate in GFLOP/s, best of ``repeat`` (default: the model's shapes,
    hidden 576 and MLP 1536)."""
    import torch

    a, b = torch.randn(m, k, dtype=getattr(torch, dtype)), torch.randn(k, n, dtype=getattr(torch, dtype))
    _, s = timed(torch.matmul, a, b, repeat=repeat)
    return 2 * m * k * n / s / 1e9
