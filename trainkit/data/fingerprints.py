"""Fingerprint material: short stable hashes of strings, files, folders and `datasets` splits."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def stable_hash(*parts: object) -> str:
    """16 hex digits of the SHA-256 of the parts joined by "|"."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def file_stats(paths) -> str:
    """Hash of the paths, sizes and modification times of files."""
    stats = [(str(p), st.st_size, st.st_mtime_ns) for p in paths for st in [os.stat(p)]]
    return stable_hash(*sorted(stats))


def tree_stats(root: Path) -> str:
    """File count, total size and latest modification time under a folder."""
    count = total = latest = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            count, total, latest = count + 1, total + st.st_size, max(latest, st.st_mtime_ns)
    return f"{count}-{total}-{latest}"


def split_fingerprints(splits: dict) -> str:
    """Hash of the `datasets` fingerprints of named splits."""
    return stable_hash(*(f"{name}={getattr(d, '_fingerprint', '')}" for name, d in sorted(splits.items())))
