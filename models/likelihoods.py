"""
Likelihoods: how a network's output explains the data.

Each likelihood opens the data plate of full size ``num_data`` over the
minibatch, so Pyro scales the minibatch log-likelihood by ``n / b``
(docs/method.md §4) — nothing is hand-scaled. ``batch_ndim`` leading dimensions of
the network's output (one per vectorised plate around the model, e.g.
``pyro.infer.Predictive(..., parallel=True)``) are kept left of the data plate.

Example::

    >>> import torch, pyro
    >>> lik = Categorical()
    >>> tr = pyro.poutine.trace(lik).get_trace(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), num_data=100)
    >>> tr.nodes["obs"]["scale"]
    25.0
"""

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints


def _logits(output):
    return getattr(output, "logits", output)


def _data_plate(batch_size, num_data, subsample, device):
    if subsample is None:
        subsample = torch.arange(batch_size, device=device)
    # predicting on more rows than the training set has: the plate's size must cover them
    size = max(num_data or batch_size, batch_size)
    return pyro.plate("data", size=size, subsample=subsample)


class Likelihood:
    """
    Base class: ``likelihood(output, target, num_data, subsample=None, batch_ndim=0)``
    adds the ``obs`` site; ``output`` has ``batch_ndim`` leading batch dimensions
    before the examples.
    """

    def __call__(self, output, target=None, num_data=None, subsample=None, batch_ndim=0):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class Categorical(Likelihood):
    """Classification: ``y ~ Categorical(logits=f(x))``."""

    def __call__(self, output, target=None, num_data=None, subsample=None, batch_ndim=0):
        logits = _logits(output)
        with _data_plate(logits.shape[batch_ndim], num_data, subsample, logits.device):
            return pyro.sample("obs", dist.Categorical(logits=logits), obs=target)


class Gaussian(Likelihood):
    """
    Regression: ``y ~ Normal(f(x), scale)``.

    A network output of shape ``(n, 1)`` is a scalar regression: the trailing
    1 is dropped when the target has shape ``(n,)`` or is not given (so
    predictions have the shape of ``y``).

    :param float scale: observation noise; with ``learn_scale=True`` it is the
        initial value of a point-estimated ``obs_scale`` parameter.
    """

    def __init__(self, scale=1.0, learn_scale=False):
        self.scale = float(scale)
        self.learn_scale = learn_scale

    def __call__(self, output, target=None, num_data=None, subsample=None, batch_ndim=0):
        loc = _logits(output)
        per_example = loc.dim() - batch_ndim  # dims of the examples' output, the data dim included
        if loc.shape[-1] == 1 and per_example >= 2 and (target is None or target.dim() == per_example - 1):
            loc = loc.squeeze(-1)
            per_example -= 1
        if self.learn_scale:
            scale = pyro.param("obs_scale", lambda: loc.new_tensor(self.scale), constraint=constraints.positive)
        else:
            scale = loc.new_tensor(self.scale)
        with _data_plate(loc.shape[batch_ndim], num_data, subsample, loc.device):
            return pyro.sample("obs", dist.Normal(loc, scale).to_event(per_example - 1), obs=target)

    def __repr__(self):
        return f"Gaussian(scale={self.scale}, learn_scale={self.learn_scale})"


class CausalLM(Likelihood):
    """
    Token-level categorical likelihood of a causal language model: each
    sequence's next-token log-probabilities are summed (masked by the
    ``attention_mask`` and by ``-100`` labels), sequences are the data plate.

    ``target`` is a dict or tensor of labels ``(b, T)``; with ``None`` the
    model's ``input_ids`` are not known here, so pass them explicitly.
    """

    def __call__(self, output, target=None, num_data=None, subsample=None, attention_mask=None, batch_ndim=0):
        logits = _logits(output)[..., :-1, :]
        labels = None
        mask = torch.ones(logits.shape[batch_ndim : batch_ndim + 2], dtype=torch.bool, device=logits.device)
        if target is not None:
            labels = target[:, 1:]
            mask = labels != -100
            labels = labels.clamp(min=0)
        if attention_mask is not None:
            mask = mask & attention_mask[:, 1:].bool()
        with _data_plate(logits.shape[batch_ndim], num_data, subsample, logits.device):
            fn = dist.Categorical(logits=logits).mask(mask).to_event(1)
            return pyro.sample("obs", fn, obs=labels)


LIKELIHOODS = {"categorical": Categorical, "gaussian": Gaussian, "causal-lm": CausalLM}


def get_likelihood(name, **kwargs):
    """Look up a likelihood by name (``categorical``, ``gaussian``, ``causal-lm``)."""
    try:
        return LIKELIHOODS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown likelihood {name!r}: choose one of {sorted(LIKELIHOODS)}") from None
