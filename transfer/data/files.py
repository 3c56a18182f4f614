"""File identity and the cache location, shared by planning (torch-free) and the feature cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_ENV = "TRANSFER_CACHE_DIR"


def file_fingerprint(path: Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "transfer") / "features"
