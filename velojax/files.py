"""Atomic file writes (a reader sees the old file or the new one, never a torn one) and the
cache directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: Overrides the cache directory (default: $XDG_CACHE_HOME/velojax or ~/.cache/velojax).
CACHE_ENV = "VELOJAX_CACHE_DIR"


def cache_dir() -> Path:
    """Where velojax caches downloaded weights and machine calibrations."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "velojax"


def write_atomic(path: str | os.PathLike, data: bytes | str, mode: int = 0o644) -> Path:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`
    (parent directories are created). The file gets permissions `mode`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
