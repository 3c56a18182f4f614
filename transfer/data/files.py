"""File identity, the cache location and reading a TOML file with errors that name it (torch-free)."""

from __future__ import annotations

import hashlib
import os
import tomllib
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


def read_toml(path: Path, error: type[Exception]) -> dict:
    """A TOML file's contents; a byte-order mark is accepted, and any problem raises ``error`` naming the file
    (and the line of a byte that is not UTF-8)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise error(f"{path}, line {line}: not valid UTF-8 text ({exc.reason}); save it as UTF-8") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None
