"""A digest of the code that determines a training curve, in the fingerprints of eval's
computed baselines and results: after a change to the optimizer, the tasks, their data or
random keys, or eval's training loop, nothing cached by the old code is reused.

It hashes source text, so any edit of those files (a comment too) invalidates the caches:
a recomputation is cheaper than a stale number in a report.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
#: What a curve depends on: the optimizer core, the task families and data, eval's loop.
SOURCES = ("velojax", "tasks", "eval/training.py", "eval/optimizers.py", "eval/envelope.py")


def digest_of(paths: Iterable[Path], root: Path) -> str:
    """sha256 (16 hex) over the relative names and bytes of the `.py` files in `paths`
    (files, or directories searched recursively), `__main__.py` command lines excepted."""
    files = set()
    for path in paths:
        found = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        files |= {f for f in found if f.name != "__main__.py" and f.is_file()}
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@functools.cache
def code_version() -> str:
    """The digest of `SOURCES` as installed (computed once per process)."""
    return digest_of((_ROOT / s for s in SOURCES), _ROOT)
