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
    """"AMX", "AVX-512", "AVX2" or "other", from the CPU's flags, then the CPU's vendor, family
    and model (CPUs with the same flags can differ twofold in speed: AMD's family 25 and 26)."""
    flags = cpu_flags()
    if "amx_tile" in flags:
        kind = "AMX"
    else:
        kind = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "other")
    cpu = cpu_fields("vendor_id", "cpu family", "model")
    return f"{kind} ({cpu['vendor_id']} family {cpu['cpu family']} model {cpu['model']})" if len(cpu) == 3 else kind


def cpu_fields(*names: str) -> dict[str, str]:
    """The named fields of the first CPU in /proc/cpuinfo that it has."""
    found: dict[str, str] = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() in names and key.strip() not in found:
                found[key.strip()] = value.strip()
            if not line.strip():
                break
    return found


def bf16_units() -> str | None:
    """Which bf16 matrix instructions the CPU has: "AMX", "AVX512-BF16" or None (bf16 emulated)."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "AMX"
    return "AVX512-BF16" if "avx512_bf16" in flags else None


def matmul_peak_gflops(dtype: torch.dtype, repeats: int = 5) -> dict[str, float]:
    """Best GFLOP/s of a matrix product over a few square sizes (2 n^3 FLOPs each), done two ways:
    `a @ b` (BLAS, MKL on x86) and the same product as a 1x1 convolution (oneDNN). On some CPUs
    one library runs far below the other (MKL's fp32 on AMD's AVX-512 CPUs), so the peak a step
    is measured against is the better of the two."""
    best = {}
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        image = a.reshape(1, n, n // 32, 32).contiguous(memory_format=torch.channels_last)  # n columns of a
        kernel = b.reshape(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
        for name, product in (("matmul", lambda: a @ b), ("conv1x1", lambda: torch.nn.functional.conv2d(image, kernel))):
            product()
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                product()
                times.append(time.perf_counter() - t)
            best[f"{name}_{n}"] = 2 * n**3 / min(times) / 1e9
    return best
