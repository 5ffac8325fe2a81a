import pyro
import pytest


@pytest.fixture(autouse=True)
def pyro_setup():
    """Pyro's test hygiene: a fresh param store, a fixed seed, validation on, settings restored."""
    local = pyro.settings.get("module_local_params")
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
    pyro.settings.set(module_local_params=local)
