"""Test setup: 2 forced CPU devices (sharding tests) and cheap compiles (`xla_flags.py`), the
persistent compilation cache, strict dtype promotion, and the reference oracle (vendored in
tests/data/velo_oracle; the package never reads it)."""

import os
from pathlib import Path

from tests.xla_flags import xla_flags

# Must happen before jax initialises its backend.
os.environ.setdefault("XLA_FLAGS", xla_flags(2))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("VELOJAX_OFFLINE", "1")  # no test may reach the network by accident
# OpenBLAS (behind LAPACK calls on CPU) spins threads that stall for seconds on a busy 2-core machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax
import pytest

REPO = Path(__file__).resolve().parents[1]
jax.config.update("jax_compilation_cache_dir", str(REPO / ".jax_cache"))
# Every program: tests (and the CLI processes some tests start) often compile the same ones.
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
# Our code must not rely on implicit promotion; tests that run optax's own transforms
# (which do) opt out with @jax.numpy_dtype_promotion("standard").
jax.config.update("jax_numpy_dtype_promotion", "strict")

# Another copy of the recording (same layout) may be named by $VELOJAX_ORACLE_DIR.
ORACLE = Path(os.environ.get("VELOJAX_ORACLE_DIR") or REPO / "tests" / "data" / "velo_oracle")


@pytest.fixture(scope="session")
def oracle_dir() -> Path:
    if not (ORACLE / "meta_params.json").is_file():
        raise FileNotFoundError(f"the reference oracle is not at {ORACLE} (check $VELOJAX_ORACLE_DIR)")
    return ORACLE


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test sees an empty velojax weights cache and no weights or digest override."""
    monkeypatch.setenv("VELOJAX_CACHE_DIR", str(tmp_path / "velojax-cache"))
    monkeypatch.delenv("VELOJAX_WEIGHTS", raising=False)
    monkeypatch.delenv("VELOJAX_WEIGHTS_SHA256", raising=False)
