"""
Turn any ``nn.Module`` into a Pyro model whose compressed weights are sample
sites with a spike-and-slab prior.

The network, the prior (a :class:`~sqs_pyro.PriorSpec`) and the likelihood are
separate and swappable, in the manner of TyXe. Compressed weights are replaced
at call time with :func:`torch.func.functional_call`, so the user's module is
not modified (its weights stay as the *anchors* the guide reads). All other
trainable parameters (biases, norms, heads) are point estimates registered with
``pyro.param``, so both :class:`pyro.infer.SVI` and plain ``torch.optim`` loops
train them. Under ``pyro.settings.set(module_local_params=True)`` train with
``torch.optim`` over ``SQSELBO()(model, guide).parameters()`` (what
:class:`~sqs_pyro.run.trainer.SQSTrainer` does): in that mode ``SVI`` only steps
``PyroParam``\ s, and the point parameters of a plain ``nn.Module`` are not
``PyroParam``\ s (``SVI.step`` raises ``AttributeError: ... 'unconstrained'``).

Example::

    >>> import torch, pyro
    >>> from sqs_pyro import PriorSpec
    >>> from sqs_pyro.models import SQSModel, Categorical
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> model = SQSModel(net, PriorSpec({"_default": {"num_components": 4}}), Categorical(), num_data=100)
    >>> list(model.sites)
    ['0.weight', '2.weight']
    >>> trace = pyro.poutine.trace(model).get_trace(torch.randn(5, 4), torch.zeros(5, dtype=torch.long))
    >>> trace.nodes["0.weight"]["fn"].event_shape
    torch.Size([8, 4])

Weights with leading batch dimensions (``pyro.plate`` around the model, as in
``pyro.infer.Predictive(..., parallel=True)``) evaluate the network once per
draw, vectorised with :func:`torch.func.vmap`; the likelihoods then keep the
batch dimensions left of the data plate.
"""

import inspect
from collections import OrderedDict
from dataclasses import dataclass

import pyro
import torch
from torch import nn
from torch.func import functional_call, vmap

from sqs_pyro.distributions import SpikeSlab
from sqs_pyro.prior_spec import LayerSettings, PriorSpec


@dataclass
class WeightSite:
    """One compressed weight tensor: its sample-site name, settings and anchor."""

    name: str
    settings: LayerSettings  #: ``.prior`` for the model, ``.guide`` for the guide
    anchor: nn.Parameter

    @property
    def shape(self):
        return self.anchor.shape


def spike_slab_prior(settings, anchor):
    """
    The spike-and-slab prior (docs/method.md §2) of a weight tensor shaped like
    ``anchor``, from its :class:`~sqs_pyro.PriorSettings` (the plain slab when
    ``settings.spike`` is False).
    """
    slab = settings.slab_distribution(like=anchor)
    prior = SpikeSlab(anchor.new_tensor(settings.inclusion_prob), slab) if settings.spike else slab
    return prior.expand(anchor.shape).to_event(anchor.dim())


class SQSModel(nn.Module):
    """
    A Pyro model: a network with spike-and-slab priors on its compressed weights
    and a likelihood on its output.

    :param nn.Module net: the (pretrained) network; its compressed weights are
        the anchors and are frozen unless ``train_anchors`` is set in the spec.
    :param prior_spec: a :class:`~sqs_pyro.PriorSpec`, a dict or a spec file path.
    :param likelihood: a callable ``likelihood(output, target, num_data, subsample)``
        from :mod:`sqs_pyro.models.likelihoods`.
    :param int num_data: size of the training set (the data plate's size).
    :param callable forward: optional ``forward(net, x) -> output``; by default
        ``net(x)`` for tensors and ``net(**x)`` for dicts (transformers inputs).
    """

    #: Sample sites of the likelihood (what :class:`pyro.infer.Predictive` predicts when ``y`` is None).
    observation_sites = ("obs",)

    def __init__(self, net, prior_spec, likelihood, num_data, forward=None):
        super().__init__()
        self.net = net
        self.prior_spec = PriorSpec.coerce(prior_spec)
        self.likelihood = likelihood
        self.num_data = int(num_data)
        self.forward_fn = forward
        self.sites = OrderedDict()
        for name, settings in self.prior_spec.resolve(net).items():
            anchor = net.get_parameter(name)
            anchor.requires_grad_(settings.guide.train_anchors)
            self.sites[name] = WeightSite(name, settings, anchor)

    def point_parameters(self):
        """Trainable parameters that are point estimates (everything but the frozen anchors)."""
        return [(n, p) for n, p in self.net.named_parameters() if p.requires_grad]

    def prior(self, name):
        """The prior distribution of site ``name``."""
        site = self.sites[name]
        return spike_slab_prior(site.settings.prior, site.anchor)

    def sample_weights(self):
        """Sample every compressed weight from its prior (or from the guide, under it)."""
        return {name: pyro.sample(name, self.prior(name)) for name in self.sites}

    def run_net(self, weights, x):
        """Evaluate the network with ``weights`` substituted for the compressed tensors."""
        if self.forward_fn is not None:
            return self.forward_fn(lambda *a, **k: functional_call(self.net, weights, a, k), x)
        if isinstance(x, dict):
            return functional_call(self.net, weights, (), dict(x))
        return functional_call(self.net, weights, (x,))

    def batch_shape_of(self, weights):
        """
        The leading batch shape of ``weights``: ``()`` for one network, ``(S,)`` for
        ``S`` networks drawn under a plate at ``dim=-2`` (what
        ``pyro.infer.Predictive(..., parallel=True)`` and vectorised particles
        use; the weights' rightmost batch dimension is the data plate's, of size 1).
        """
        shapes = {tuple(w.shape[: w.dim() - self.sites[n].anchor.dim()]) for n, w in weights.items()}
        if len(shapes) > 1:
            raise ValueError(f"compressed weights have different batch shapes: {sorted(shapes)}")
        shape = shapes.pop() if shapes else ()
        if shape and shape[-1] != 1:
            raise ValueError(
                f"batched weights of batch shape {shape}: the rightmost batch dimension belongs to the data plate "
                "(dim=-1) and must be 1; put the plate that batches networks at dim=-2 or further left"
            )
        return torch.Size(shape[:-1])

    def run_batched(self, weights, x, batch_shape):
        """
        :meth:`run_net` once per leading index of ``weights`` (shape ``batch_shape
        + (1,) + site shape``), vectorised with :func:`torch.func.vmap`; the
        output has shape ``batch_shape + output shape``.
        """
        nb = len(batch_shape)
        flat = {n: w.reshape((-1,) + w.shape[nb + 1:]) for n, w in weights.items()}
        try:
            out = vmap(lambda ws: _logits(self.run_net(ws, x)))(flat)
        except RuntimeError:  # an operation vmap cannot batch (e.g. BatchNorm updating running stats): a loop
            size = next(iter(flat.values())).shape[0]
            out = torch.stack([_logits(self.run_net({n: w[i] for n, w in flat.items()}, x)) for i in range(size)])
        return out.reshape(batch_shape + out.shape[1:])

    def forward(self, x, y=None, subsample=None, **likelihood_kwargs):
        for name, param in self.point_parameters():
            pyro.param("net." + name, param)
        weights = self.sample_weights()
        batch_shape = self.batch_shape_of(weights)
        if not batch_shape:  # drop a size-1 batch dimension (Predictive's sequential draws have one)
            weights = {n: w.reshape(self.sites[n].anchor.shape) for n, w in weights.items()}
            output = self.run_net(weights, x)
        else:
            if not _accepts(self.likelihood, "batch_ndim"):
                raise ValueError(
                    f"the likelihood {self.likelihood!r} does not take batch_ndim, so it cannot evaluate batched "
                    "weights: use pyro.infer.Predictive(..., parallel=False)"
                )
            output = self.run_batched(weights, x, batch_shape)
            likelihood_kwargs["batch_ndim"] = len(batch_shape)
        self.likelihood(output, y, num_data=self.num_data, subsample=subsample, **likelihood_kwargs)
        return output

    def __repr__(self):
        return (
            f"SQSModel(net={type(self.net).__name__}, sites={len(self.sites)}, "
            f"likelihood={self.likelihood!r}, num_data={self.num_data})"
        )


def _accepts(fn, name):
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _logits(output):
    return getattr(output, "logits", output)
