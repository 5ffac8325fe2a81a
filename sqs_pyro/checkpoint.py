"""
Checkpoints of a compression run: written atomically, so a run killed at any
moment (``kill -9`` included) resumes from the last complete one.

Example::

    >>> import tempfile, os, torch
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.pt")
    >>> save_checkpoint(path, {"step": 3, "w": torch.ones(2)})
    >>> load_checkpoint(path)["step"]
    3
"""

import os
import random

import numpy as np
import torch

from .io import atomic_write


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or belongs to another run."""


def save_checkpoint(path, state):
    """Write ``state`` (a dict of tensors and plain values) atomically with :func:`torch.save`."""
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint; a truncated or corrupt file is a :class:`CheckpointError`."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}: start the run without --resume")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"checkpoint {path} is unreadable ({e}); delete it to start over") from e


def rng_state():
    """The state of every random number generator a run uses."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
