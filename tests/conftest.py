import pyro
import pytest


@pytest.fixture(autouse=True)
def pyro_setup():
    """Pyro's test hygiene: a fresh param store, a fixed seed, validation on."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
