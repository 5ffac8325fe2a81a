import pyro
import pytest


@pytest.fixture(autouse=True)
def pyro_setup():
    """Pyro's test hygiene: a fresh param store, a fixed seed, validation on, default settings."""
    local = pyro.settings.get("module_local_params")
    pyro.settings.set(module_local_params=False)  # Pyro's default; tests that need local params set it
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
    pyro.settings.set(module_local_params=local)
