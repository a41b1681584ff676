"""What every benchmark report names: the kind of CPU it ran on, from its flags."""

from __future__ import annotations


def machine_kind() -> str:
    """"AMX", "AVX-512", "AVX2" or "other", from the flags in /proc/cpuinfo."""
    flags: set[str] = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if "amx_tile" in flags:
        return "AMX"
    return "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "other")
