"""What the benchmarks measure the machine by: the kind of CPU (from its flags), which every
report names, and its matrix-multiply peak, which speed figures are stated against."""

from __future__ import annotations

import time

import torch


def cpu_flags() -> set[str]:
    """The flags of the first CPU in /proc/cpuinfo."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def machine_kind() -> str:
    """"AMX", "AVX-512", "AVX2" or "other", from the CPU's flags."""
    flags = cpu_flags()
    if "amx_tile" in flags:
        return "AMX"
    return "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "other")


def bf16_units() -> str | None:
    """Which bf16 matrix instructions the CPU has: "AMX", "AVX512-BF16" or None (bf16 emulated)."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "AMX"
    return "AVX512-BF16" if "avx512_bf16" in flags else None


def matmul_peak_gflops(dtype: torch.dtype, repeats: int = 5) -> dict[str, float]:
    """Best GFLOP/s of `a @ b` over a few square sizes (2 n^3 FLOPs each)."""
    best = {}
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        best[str(n)] = 2 * n**3 / min(times) / 1e9
    return best
