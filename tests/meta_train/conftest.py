import jax
import pytest


@pytest.fixture(autouse=True)
def _standard_promotion():
    """Meta-training runs task models (flax, optax), which rely on standard promotion."""
    with jax.numpy_dtype_promotion("standard"):
        yield
