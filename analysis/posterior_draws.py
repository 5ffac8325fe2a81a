r"""
Exact draws of whole networks from a fitted SQS posterior, with the
mixed-measure log-densities the diagnostics need.

Each compressed weight is drawn from its
:class:`~sqs_pyro.distributions.SparseGMM` in two stages, exactly as
:meth:`SparseGMM.sample` does: a gate ``z_i ~ Bernoulli(gamma_i)``, a component
``k_i ~ Categorical(phi_i)`` and, when ``z_i = 1``, a value
``theta_i ~ N(mu_k, sigma_k^2)``; otherwise ``theta_i = 0`` exactly. Keeping the
gate and component of every draw lets the analysis report per-draw sparsity,
codebook usage and bits next to the weights themselves.

Densities are with respect to ``delta_0 + Lebesgue``, the measure on which both
the posterior ``q`` and the spike-and-slab prior ``pi`` have a density: at an
exact zero ``log q = log(1 - gamma)`` and ``log pi = log(1 - lambda_0)``, at a
nonzero value the densities of the slabs (times ``gamma`` and ``lambda_0``).
Their difference ``log pi - log q`` is then a proper log Radon-Nikodym
derivative. A prior without a spike (``spike=False``) has no atom at zero, so
``q`` is not absolutely continuous with respect to it and the ratio is
undefined; :func:`log_densities` reports such sites in ``atomless``.

Example::

    >>> import torch
    >>> from sqs_pyro.models import SQSModel, Categorical
    >>> from sqs_pyro.guides import SQSGuide
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> model = SQSModel(net, {"_default": {"num_components": 4}}, Categorical(), num_data=10)
    >>> guide = SQSGuide(model)
    >>> draws = list(iter_draws(model, guide, 2, seed=0))
    >>> draws[0].weights["0.weight"].shape, draws[0].components["0.weight"].dtype
    (torch.Size([8, 4]), torch.int64)
    >>> log_q, log_p = log_densities(model, guide, draws[0].weights)
    >>> log_q["0.weight"].shape
    torch.Size([8, 4])
"""

import contextlib
import inspect
from dataclasses import dataclass

import pyro
import torch

from sqs_pyro.distributions import SparseGMM

__all__ = [
    "Draw", "LayerState", "atomless_sites", "draw_layer", "eval_mode", "iter_draws", "layer_states",
    "log_densities", "pointwise_log_likelihood", "pointwise_predictive",
]


@dataclass
class LayerState:
    """The per-weight posterior of one compressed site, flattened to ``(N,)`` / ``(N, K)``."""

    name: str
    shape: torch.Size
    gate: torch.Tensor  # (N,)
    phi: torch.Tensor  # (N, K)
    locs: torch.Tensor  # (N, K) view of the group's codebook
    scales: torch.Tensor  # (N, K)
    group: torch.Tensor  # (N,) long: the window of each weight (zeros for a whole layer)
    num_groups: int
    num_components: int


@dataclass
class Draw:
    """
    One network drawn from the posterior.

    ``weights``: ``name -> tensor`` of the site's shape (exact zeros where the
    gate is off); ``components``: ``name -> long tensor`` of the drawn component
    index, ``-1`` where the weight is zero; ``codes``: the index into the site's
    flat codebook of ``G * K`` values (``group * K + k``), ``-1`` at zeros.
    """

    weights: dict
    components: dict
    codes: dict


@torch.no_grad()
def layer_states(model, guide, tau=None):
    """``name -> LayerState`` for every compressed site (``tau`` overrides the temperature of ``phi``)."""
    out = {}
    for name, site in model.sites.items():
        p = guide.params_of(name)
        g = p.grouping
        anchor = site.anchor.detach()
        phi = p.component_probs(anchor, tau)
        k = phi.shape[-1]
        group = g.index if g.index is not None else torch.zeros(anchor.shape, dtype=torch.long, device=anchor.device)
        out[name] = LayerState(
            name=name,
            shape=anchor.shape,
            gate=p.gate_probs().detach().reshape(-1),
            phi=phi.reshape(-1, k),
            locs=g.gather(p.locs.detach()).expand(phi.shape).reshape(-1, k),
            scales=g.gather(p.scales.detach()).expand(phi.shape).reshape(-1, k),
            group=group.reshape(-1).long(),
            num_groups=g.num_groups,
            num_components=k,
        )
    return out


def _categorical(phi, generator):
    # Inverse-CDF draw of one index per row; the normalized cumulative sum ends
    # at exactly 1 so an index with zero probability is never chosen.
    cdf = phi.cumsum(-1)
    cdf = cdf / cdf[:, -1:]
    u = torch.rand(phi.shape[:1] + (1,), generator=generator, dtype=phi.dtype, device=phi.device)
    return (cdf <= u).sum(-1).clamp_(max=phi.shape[-1] - 1)


@torch.no_grad()
def draw_layer(state, generator=None):
    """One exact draw of a layer: ``(weights, components)`` of shape ``state.shape``."""
    keep = torch.bernoulli(state.gate, generator=generator).bool()
    k = _categorical(state.phi, generator)
    idx = k.unsqueeze(-1)
    loc = state.locs.gather(-1, idx).squeeze(-1)
    scale = state.scales.gather(-1, idx).squeeze(-1)
    noise = torch.randn(loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)
    value = torch.where(keep, loc + scale * noise, torch.zeros_like(loc))
    keep = keep & (value != 0)  # a Normal draw of exactly 0 (probability 0) counts as a zero
    comp = torch.where(keep, k, torch.full_like(k, -1))
    return value.reshape(state.shape), comp.reshape(state.shape)


def iter_draws(model, guide, num_draws, *, seed=0, tau=None, states=None):
    """
    Yield ``num_draws`` :class:`Draw` objects, exact and independent, from the
    guide's posterior (reproducible for a given ``seed``).
    """
    states = layer_states(model, guide, tau) if states is None else states
    device = next(iter(states.values())).gate.device if states else torch.device("cpu")
    generator = torch.Generator(device=device).manual_seed(int(seed))
    for _ in range(int(num_draws)):
        weights, components, codes = {}, {}, {}
        for name, st in states.items():
            w, k = draw_layer(st, generator)
            weights[name], components[name] = w, k
            code = st.group.reshape(st.shape) * st.num_components + k
            codes[name] = torch.where(k >= 0, code, torch.full_like(k, -1))
        yield Draw(weights, components, codes)


@torch.no_grad()
def log_densities(model, guide, weights, tau=None, states=None):
    """
    Elementwise ``log q(theta)`` and ``log pi(theta)`` of the mixed measure.

    :param dict weights: ``name -> tensor`` (e.g. :attr:`Draw.weights`).
    :param dict states: the :func:`layer_states` to reuse (computed if None).
    :returns: ``(log_q, log_prior)``, two dicts ``name -> tensor`` of the
        site's shape. Sites whose prior has no spike are left out of both
        (see the module docstring); :func:`atomless_sites` lists them.
    """
    states = layer_states(model, guide, tau) if states is None else states
    log_q, log_p = {}, {}
    for name, site in model.sites.items():
        if not site.settings.prior.spike:
            continue
        st = states[name]
        w = weights[name].reshape(-1)
        q = SparseGMM(st.gate, st.phi, st.locs, st.scales, validate_args=False)
        log_q[name] = q.log_prob(w).reshape(st.shape)
        log_p[name] = model.prior(name).base_dist.log_prob(weights[name])
    return log_q, log_p


def atomless_sites(model):
    """Names of the sites whose prior has no spike (``spike=False``): their log ratio is undefined."""
    return [name for name, site in model.sites.items() if not site.settings.prior.spike]


@contextlib.contextmanager
def eval_mode(net):
    """Evaluate ``net`` in eval mode (BatchNorm running statistics, no dropout), then restore it."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


def _accepts(fn, name):
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def pointwise_log_likelihood(model, weights, x, y):
    """
    ``log p(y_j | x_j, theta)`` for every example ``j`` of a batch (no minibatch
    scaling), through the model's own likelihood, with ``weights``
    substituted for the compressed tensors and the net in eval mode.
    """
    return pointwise_predictive(model, weights, x, y, replicate=False)[0]


@torch.no_grad()
def pointwise_predictive(model, weights, x, y, replicate=True):
    """
    ``(log p(y_j | x_j, theta), y_rep)``: the pointwise log-likelihood (as
    :func:`pointwise_log_likelihood`) and a replicate ``y_rep ~ p(y | x, theta)``
    drawn from the same likelihood (None without ``replicate``), shaped like
    the likelihood's draws (``y``'s shape for the classification and
    regression likelihoods).
    """
    with eval_mode(model.net):
        output = model.run_net(weights, x)
    kwargs = {}
    if isinstance(x, dict) and x.get("attention_mask") is not None and _accepts(model.likelihood, "attention_mask"):
        kwargs["attention_mask"] = x["attention_mask"]
    with pyro.poutine.block():
        trace = pyro.poutine.trace(model.likelihood).get_trace(output, y, **kwargs)
    site = trace.nodes["obs"]
    log_lik = site["fn"].log_prob(site["value"]).reshape(-1)
    return log_lik, (site["fn"].sample() if replicate else None)
