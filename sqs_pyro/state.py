"""
Saving and loading a fitted model and guide: state dicts, not pickled objects.

``torch.save(model)`` / ``torch.save(guide)`` do not work and are not the way:
Pyro's param store tags the network's parameters with weak references
(``param.unconstrained``) and an ``AutoMessenger`` guide keeps its last trace,
neither of which pickles (``TypeError: cannot pickle 'weakref.ReferenceType'
object``). As in Pyro, the state is saved instead: :func:`save_fit` writes the
model's and the guide's ``state_dict`` (network weights and point parameters;
codebooks, scales, mixing logits, gate logits and pruning masks), the Pyro
param-store entries that live outside the network (e.g. a learned
``obs_scale``) and the plug-in the fit used, in one file read back with
``torch.load(..., weights_only=True)`` (tensors and plain containers only, no
code). :func:`load_fit` loads it into a model and guide built the same way
(same network architecture and prior spec).

Example::

    >>> import os, tempfile, torch
    >>> from sqs_pyro.models import SQSModel, Gaussian
    >>> from sqs_pyro.guides import SQSGuide
    >>> def build():
    ...     torch.manual_seed(0)
    ...     model = SQSModel(torch.nn.Linear(3, 1), {"_default": {"num_components": 2}}, Gaussian(), num_data=10)
    ...     return model, SQSGuide(model)
    >>> model, guide = build()
    >>> path = os.path.join(tempfile.mkdtemp(), "fit.pt")
    >>> save_fit(path, model, guide)
    >>> model2, guide2 = build()
    >>> load_fit(path, model2, guide2)
    >>> torch.equal(guide2.params_of("weight").locs, guide.params_of("weight").locs)
    True
"""

import pyro
import torch

from .io import atomic_write

__all__ = ["FORMAT", "fit_state_dict", "load_fit", "load_fit_state_dict", "save_fit"]

#: The ``format`` entry of a saved fit.
FORMAT = "sqs-pyro-fit/1"


def _store_entries(model):
    # param-store entries that are not the network's own parameters (pyro.param("net." + name, param))
    net_names = {"net." + n for n, _ in model.net.named_parameters()}
    store = pyro.get_param_store()
    return {name: store[name].detach().clone() for name in store.keys() if name not in net_names}


def fit_state_dict(model, guide):
    """The state of a fitted model and guide: a dict of tensors and plain values."""
    return {
        "format": FORMAT,
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "guide": {k: v.detach().clone() for k, v in guide.state_dict().items()},
        "param_store": _store_entries(model),
        "fit_plug_in": getattr(guide, "fit_plug_in", None),
    }


def load_fit_state_dict(state, model, guide, strict=True):
    """Load :func:`fit_state_dict`'s ``state`` into ``model`` and ``guide`` (built as the saved ones were)."""
    if state.get("format") != FORMAT:
        raise ValueError(f"not a saved sqs-pyro fit (format {state.get('format')!r}, expected {FORMAT!r})")
    model.load_state_dict(state["model"], strict=strict)
    guide.load_state_dict(state["guide"], strict=strict)
    store = pyro.get_param_store()
    for name, value in state["param_store"].items():
        if name in store:
            with torch.no_grad():
                store[name] = value
        else:
            pyro.param(name, value)
    if hasattr(guide, "fit_plug_in"):
        guide.fit_plug_in = state.get("fit_plug_in")


def save_fit(path, model, guide):
    """Write a fitted model and guide to ``path`` (atomically; see the module docstring)."""
    with atomic_write(path, "wb") as f:
        torch.save(fit_state_dict(model, guide), f)


def load_fit(path, model, guide, map_location="cpu", strict=True):
    """Read :func:`save_fit`'s file into ``model`` and ``guide`` (tensors only: ``weights_only=True``)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    load_fit_state_dict(state, model, guide, strict=strict)
