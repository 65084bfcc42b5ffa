import jax
import pytest


@pytest.fixture(autouse=True)
def _standard_promotion():
    """Task models run flax and optax code, which relies on standard dtype promotion
    (velojax's own core is tested under strict promotion)."""
    with jax.numpy_dtype_promotion("standard"):
        yield
