r"""
A fitted SQS posterior as an ArviZ :class:`~xarray.DataTree`.

:func:`to_datatree` draws whole networks exactly from the
:class:`~sqs_pyro.guides.SQSGuide` (see
:mod:`sqs_pyro.analysis.posterior_draws`) and lays them out as ArviZ expects,
with the sample dimensions ``(chain, draw)``: independent draws from ``q``
make **one chain** (``chain = 1``, ``draw = num_draws``; ``num_chains`` splits
them into several, which R-hat needs). Every ArviZ function then works on the
tree as on MCMC output: ``arviz_stats.summary``, ``ess``, ``rhat`` (about 1 for
independent draws, NaN with one chain), ``hdi``, ``loo`` (with ``data``),
``psense``, and the arviz-plots plots (``plot_dist``, ``plot_forest``,
``plot_ppc_dist``). Below, ``sample`` stands for ``(chain, draw)``.

``posterior`` (one value per draw)
    ``theta`` (sample, weight): a random subset of the compressed weights
    (``weights_per_layer`` per layer; label ``"layer[i,j,...]"``; the layer of
    each is ``variational/weight_layer``); ``sparsity`` (sample, layer): fraction of exact zeros
    in the drawn layer; ``bits`` (sample, layer): the paper's bits per weight
    ``log2(K) x nonzero fraction`` (its compression rate is ``32 / bits``);
    ``entropy_bits`` (sample, layer): the empirical entropy of the draw's mask
    and codes per weight, what an ideal entropy coder would need. Only
    scalars per layer or weight live here, so that every ArviZ summary
    (``psense_summary`` included, which on the 0.8 line cannot stack a
    two-dimensional variable) works on the group as it is.
``log_prior``
    ``theta`` (sample, weight): the spike-and-slab log prior of each drawn
    subset weight, on the mixed measure (``log(1 - lambda_0)`` at an exact 0).
    This is a *subset*: to power-scale the whole prior use
    :func:`sqs_pyro.analysis.diagnostics.prior_sensitivity`.
``log_likelihood``, ``posterior_predictive`` and ``observed_data`` (when ``data=(x, y)`` is given)
    ``obs`` (sample, obs_id): ``log p(y_j | x_j, theta_s)`` at each drawn
    network, and a replicate ``y_rep ~ p(y | x_j, theta_s)`` drawn from it (the
    posterior predictive; left out when the likelihood's draws are not shaped
    like ``y``, e.g. a causal LM).
``sample_stats``
    ``log_prior`` and ``log_q``: the log prior and log posterior density of
    the whole drawn network (all compressed weights, mixed measure; sites
    without a spike left out), ``log_likelihood`` (sum over the batch), and
    ``component_usage`` (sample, layer, component): share of the nonzero
    weights drawn from each component.
``variational`` (no sample dimension: the fitted ``q`` itself)
    ``gate_mean``, ``expected_sparsity`` (``1 - mean gamma``),
    ``mask_sparsity``, ``export_sparsity`` (pruned by the export rule:
    masked or ``gamma < 0.5``), ``export_bits`` (``log2 K`` x kept fraction
    of the export), ``gate_quantile`` (layer, quantile), ``codebook_mean``,
    ``codebook_scale``, ``mixture_weight`` (layer, window, component; NaN
    where a layer has fewer windows or components), ``expected_usage``
    (layer, component), ``num_components``, ``num_windows``, ``num_weights``.

Only arviz-base's :func:`~arviz_base.from_dict` and
:func:`~arviz_base.dict_to_dataset` are used, which the 0.x and 1.x lines share.
A fit made with the posterior-mean plug-in gives a :class:`~sqs_pyro.elbo.MeanPlugInWarning`
when ``data`` asks for the predictive groups.

Example::

    >>> import torch
    >>> from sqs_pyro.models import SQSModel, Categorical
    >>> from sqs_pyro.guides import SQSGuide
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> model = SQSModel(net, {"_default": {"num_components": 4}}, Categorical(), num_data=10)
    >>> guide = SQSGuide(model)
    >>> x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    >>> dt = to_datatree(model, guide, num_draws=20, weights_per_layer=3, data=(x, y))
    >>> dict(dt["posterior"].sizes)
    {'chain': 1, 'draw': 20, 'weight': 6, 'layer': 2}
    >>> dt["log_likelihood"]["obs"].shape
    (1, 20, 5)
"""

import math

import numpy as np

from sqs_pyro.elbo import warn_if_mean_plug_in

from .posterior_draws import iter_draws, layer_states, log_densities, pointwise_predictive

__all__ = ["DEFAULT_QUANTILES", "SAMPLE_DIMS", "build_datatree", "flat_draws", "layer_summary", "to_datatree"]

#: The sample dimensions of every group with draws: one chain of independent draws from ``q``.
SAMPLE_DIMS = ("chain", "draw")

#: Gate-probability quantiles stored in the ``variational`` group.
DEFAULT_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _padded(rows, width, fill=np.nan):
    out = np.full((len(rows), width), fill, dtype=float)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def layer_summary(model, guide, quantiles=DEFAULT_QUANTILES, tau=None):
    """
    Deterministic per-layer summaries of the fitted ``q`` (the ``variational``
    group of :func:`to_datatree`), as ``(data, coords, dims)`` for
    :func:`arviz_base.dict_to_dataset`.
    """
    import torch

    with torch.no_grad():
        return _layer_summary(model, guide, quantiles, tau)


def _layer_summary(model, guide, quantiles, tau):
    import torch

    names = list(model.sites)
    max_g = max(guide.params_of(n).locs.shape[0] for n in names)
    max_k = max(guide.params_of(n).locs.shape[1] for n in names)
    rows = {k: [] for k in ("gate_mean", "expected_sparsity", "mask_sparsity", "export_sparsity", "export_bits",
                            "num_components", "num_windows", "num_weights")}
    gate_q, locs, scales, weights, usage = [], [], [], [], []
    for name in names:
        p = guide.params_of(name)
        gate = p.gate_probs().detach().double().reshape(-1)
        g, k = p.locs.shape
        keep = p.mask & (p.gate_probs() >= 0.5)
        kept = float(keep.double().mean())
        rows["gate_mean"].append(float(gate.mean()))
        rows["expected_sparsity"].append(1.0 - float(gate.mean()))
        rows["mask_sparsity"].append(1.0 - float(p.mask.double().mean()))
        rows["export_sparsity"].append(1.0 - kept)
        rows["export_bits"].append(math.log2(k) * kept)
        rows["num_components"].append(k)
        rows["num_windows"].append(g)
        rows["num_weights"].append(gate.numel())
        gate_q.append(torch.quantile(gate, torch.tensor(quantiles, dtype=gate.dtype)).numpy()
                      if gate.numel() <= 16_000_000 else np.quantile(gate.numpy(), quantiles))
        locs.append(_padded(p.locs.detach().double().cpu().numpy(), max_k))
        scales.append(_padded(p.scales.detach().double().cpu().numpy(), max_k))
        weights.append(_padded(torch.softmax(p.logits.detach().double(), -1).cpu().numpy(), max_k))
        phi = p.component_probs(model.sites[name].anchor.detach(), tau).double().reshape(-1, k)
        mass = (gate.unsqueeze(-1) * phi).sum(0)
        usage.append(mass / mass.sum().clamp(min=1e-300))
    pad_g = lambda a: np.concatenate([a, np.full((max_g - a.shape[0], max_k), np.nan)])  # noqa: E731
    counts = ("num_components", "num_windows", "num_weights")
    data = {key: np.asarray(v, dtype=int if key in counts else float) for key, v in rows.items()}
    data["gate_quantile"] = np.stack(gate_q)
    data["codebook_mean"] = np.stack([pad_g(a) for a in locs])
    data["codebook_scale"] = np.stack([pad_g(a) for a in scales])
    data["mixture_weight"] = np.stack([pad_g(a) for a in weights])
    data["expected_usage"] = _padded([u.cpu().numpy() for u in usage], max_k)
    dims = {key: ["layer"] for key in rows}
    dims.update(gate_quantile=["layer", "quantile"], expected_usage=["layer", "component"],
                **{v: ["layer", "window", "component"] for v in ("codebook_mean", "codebook_scale", "mixture_weight")})
    coords = {"layer": names, "quantile": list(quantiles), "window": np.arange(max_g), "component": np.arange(max_k)}
    return data, coords, dims


def _subset(model, weights_per_layer, generator):
    """``name -> flat indices`` of the weights kept in ``theta`` (sorted), and their labels."""
    import torch

    index, labels, layers = {}, [], []
    for name, site in model.sites.items():
        n = site.anchor.numel()
        m = min(int(weights_per_layer), n)
        idx = torch.randperm(n, generator=generator)[:m].sort().values
        index[name] = idx
        for i in idx.tolist():
            pos = np.unravel_index(i, tuple(site.anchor.shape))
            labels.append(f"{name}[{','.join(str(int(j)) for j in pos)}]")
            layers.append(name)
    return index, labels, layers


def _entropy_bits(codes, numel):
    """Empirical entropy (bits per weight) of a draw's mask and nonzero codes."""
    import torch

    nnz = codes.numel()
    bits = 0.0
    for count, total in ((nnz, numel), (numel - nnz, numel)):
        if 0 < count < total:
            bits -= count * math.log2(count / total)
    if nnz:
        counts = torch.bincount(codes).double()
        counts = counts[counts > 0]
        bits -= float((counts * torch.log2(counts / nnz)).sum())
    return bits / numel


def flat_draws(da):
    """The values of a DataArray with ``(chain, draw)`` flattened to one leading draw axis (numpy)."""
    dims = [d for d in SAMPLE_DIMS if d in da.dims]
    rest = [d for d in da.dims if d not in dims]
    values = np.asarray(da.transpose(*dims, *rest).values)
    return values.reshape((-1,) + values.shape[len(dims):])


def _chains(groups, num_chains=1):
    # (draws, ...) arrays -> (chain, draw, ...); groups named *data have no draws
    def split(v):
        v = np.asarray(v)
        if v.shape[0] % num_chains:
            raise ValueError(f"{v.shape[0]} draws do not split into {num_chains} chains of equal length")
        return v.reshape((num_chains, v.shape[0] // num_chains) + v.shape[1:])

    return {g: ({k: np.asarray(v) for k, v in d.items()} if "data" in g else {k: split(v) for k, v in d.items()})
            for g, d in groups.items()}


def build_datatree(groups, *, dims, coords, variational, weight_layer, name=None, num_chains=1):
    """
    Assemble the DataTree from plain arrays (no torch): ``groups`` for
    :func:`arviz_base.from_dict`, each array with one leading axis of
    independent draws (laid out here as ``(chain, draw)``, ``num_chains``
    chains), ``variational`` a ``(data, coords, dims)`` triple for the group
    without draws, and ``weight_layer`` the layer of each ``theta`` weight
    (``variational/weight_layer``).
    """
    from arviz_base import dict_to_dataset, from_dict

    attrs = {"/": {"inference": "variational (SQS guide)", "draws": "exact draws from the SparseGMM posterior",
                   "chains": f"{num_chains} chain(s) of independent draws from q", "inference_library": "pyro",
                   "density_measure": "delta_0 + Lebesgue"}}
    dt = from_dict(_chains(groups, num_chains), sample_dims=list(SAMPLE_DIMS), dims=dims, coords=coords, name=name,
                   attrs=attrs)
    v_data, v_coords, v_dims = variational
    # the layer of each theta weight: a variable of the draw-free group (as a coordinate of the posterior
    # it would break ArviZ's stacking in summary)
    v_data, v_coords, v_dims = ({**v_data, "weight_layer": np.asarray(list(weight_layer), dtype=str)},
                                {**v_coords, "weight": list(dt["posterior"]["weight"].values)},
                                {**v_dims, "weight_layer": ["weight"]})
    dt["variational"] = dict_to_dataset(v_data, coords=v_coords, dims=v_dims, sample_dims=[],
                                        attrs={"description": "parameters and summaries of the fitted q (no draws)"})
    return dt


def to_datatree(model, guide, *, num_draws=100, weights_per_layer=8, data=None, seed=0, tau=None,
                quantiles=DEFAULT_QUANTILES, batch_size=1024, name=None, predictive=True, num_chains=1):
    """
    Convert a fitted model and guide to an ArviZ DataTree (groups listed in
    the module docstring).

    :param model: an :class:`~sqs_pyro.models.SQSModel`.
    :param guide: its fitted :class:`~sqs_pyro.guides.SQSGuide`.
    :param int num_draws: networks drawn from the posterior.
    :param int weights_per_layer: weights per layer kept in ``posterior/theta``
        (a random subset, the same positions in every draw).
    :param tuple data: optional ``(x, y)`` batch for the ``log_likelihood``
        group (evaluated in chunks of ``batch_size``); ``x`` may be a dict of
        tensors (transformers inputs, whose ``attention_mask`` then reaches a
        likelihood that takes one, e.g. :class:`~sqs_pyro.models.CausalLM`).
    :param int seed: seeds the subset and the draws.
    :param float tau: temperature of ``phi`` (the guide's own ``tau`` if None).
    :param bool predictive: with ``data``, also draw the ``posterior_predictive`` group.
    :param int num_chains: lay the (independent) draws out as this many chains
        (``num_draws`` must be a multiple). One chain is the VI convention, but
        R-hat needs two or more (arviz-stats returns NaN for one chain); as the
        draws are independent, several chains are equally valid, and R-hat is
        then about 1 by construction: it checks the draws, not the fit.
    :rtype: xarray.DataTree
    """
    import torch

    if data is not None and predictive:
        warn_if_mean_plug_in(guide)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(int(seed))
        groups, dims, coords, weight_layer = _draw_groups(model, guide, num_draws, weights_per_layer, data, seed, tau,
                                                          batch_size, predictive)
    variational = layer_summary(model, guide, quantiles, tau)
    return build_datatree(groups, dims=dims, coords=coords, variational=variational, weight_layer=weight_layer,
                          name=name, num_chains=num_chains)


def _rows(x, start, size):
    """Rows ``start : start + size`` of a tensor or of every tensor in a dict (transformers inputs)."""
    if isinstance(x, dict):
        return {k: v[start : start + size] for k, v in x.items()}
    return x[start : start + size]


def _draw_groups(model, guide, num_draws, weights_per_layer, data, seed, tau, batch_size, predictive=False):
    import torch


    names = list(model.sites)
    if not names:
        raise ValueError("the model has no compressed sites")
    gen = torch.Generator().manual_seed(int(seed))
    index, labels, weight_layer = _subset(model, weights_per_layer, gen)
    states = layer_states(model, guide, tau)
    max_k = max(st.num_components for st in states.values())
    theta, lp_theta, sparsity, bits, ent, usage = [], [], [], [], [], []
    lp_tot, lq_tot, ll, ll_tot, y_rep = [], [], [], [], []
    for draw in iter_draws(model, guide, num_draws, seed=seed, tau=tau, states=states):
        log_q, log_p = log_densities(model, guide, draw.weights, tau, states)
        theta.append(torch.cat([draw.weights[n].reshape(-1)[index[n].to(draw.weights[n].device)].cpu() for n in names]))
        lp_theta.append(torch.cat([
            (log_p[n] if n in log_p else model.prior(n).base_dist.log_prob(draw.weights[n])).reshape(-1)[
                index[n].to(draw.weights[n].device)].cpu() for n in names]))
        lp_tot.append(sum(float(v.double().sum()) for v in log_p.values()))
        lq_tot.append(sum(float(v.double().sum()) for v in log_q.values()))
        s_row, b_row, e_row, u_row = [], [], [], []
        for n in names:
            st, comp = states[n], draw.components[n].reshape(-1)
            numel = comp.numel()
            nonzero = comp >= 0
            nnz = int(nonzero.sum())
            s_row.append(1.0 - nnz / numel)
            b_row.append(math.log2(st.num_components) * nnz / numel)
            e_row.append(_entropy_bits(draw.codes[n].reshape(-1)[nonzero].cpu(), numel))
            counts = torch.bincount(comp[nonzero].cpu(), minlength=st.num_components).double()
            u_row.append((counts / nnz).numpy() if nnz else np.full(st.num_components, np.nan))
        sparsity.append(s_row)
        bits.append(b_row)
        ent.append(e_row)
        usage.append(_padded(u_row, max_k))
        if data is not None:
            x, y = data
            chunks = [pointwise_predictive(model, draw.weights, _rows(x, i, batch_size), y[i : i + batch_size])
                      for i in range(0, len(y), batch_size)]
            row = torch.cat([c[0] for c in chunks]).double().cpu()
            ll.append(row.numpy())
            ll_tot.append(float(row.sum()))
            if predictive:
                y_rep.append(torch.cat([c[1] for c in chunks]).cpu().numpy())

    groups = {
        "posterior": {
            "theta": torch.stack(theta).double().numpy(),
            "sparsity": np.asarray(sparsity),
            "bits": np.asarray(bits),
            "entropy_bits": np.asarray(ent),
        },
        "log_prior": {"theta": torch.stack(lp_theta).double().numpy()},
        "sample_stats": {"log_prior": np.asarray(lp_tot), "log_q": np.asarray(lq_tot),
                         "component_usage": np.stack(usage)},
    }
    dims = {"theta": ["weight"], "sparsity": ["layer"], "bits": ["layer"], "entropy_bits": ["layer"],
            "component_usage": ["layer", "component"], "obs": ["obs_id"]}
    coords = {"weight": labels, "layer": names, "component": np.arange(max_k)}
    if data is not None:
        groups["log_likelihood"] = {"obs": np.stack(ll)}
        groups["sample_stats"]["log_likelihood"] = np.asarray(ll_tot)
        y = data[1]
        obs = y.detach().cpu().numpy() if torch.is_tensor(y) else np.asarray(y)
        groups["observed_data"] = {"obs": obs}
        if y_rep and y_rep[0].shape == obs.shape:
            groups["posterior_predictive"] = {"obs": np.stack(y_rep)}
        if obs.ndim > 1:
            dims["obs"] = ["obs_id"] + [f"obs_dim_{i}" for i in range(1, obs.ndim)]
    return groups, dims, coords, weight_layer
