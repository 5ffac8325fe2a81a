r"""
Plots of a fitted SQS posterior and of a compression run (matplotlib).

Every function returns a :class:`matplotlib.figure.Figure` built without
pyplot (no global state, no display needed) and, given ``path``, saves it as
PNG *and* SVG (``path`` with its suffix replaced by ``.png`` and ``.svg``).

- :func:`plot_weight_histogram`: per layer, the pretrained weights with the
  fitted mixture components over them, beside the exported weights with the
  spike mass and the posterior's components (SQS paper, Fig. 2 style [1]);
- :func:`plot_gate_histograms`: the gate probabilities ``gamma`` per layer;
- :func:`plot_codebook_usage`: how many exported weights use each codebook value;
- :func:`plot_layer_sizes`: sparsity and bits per weight per layer (paper,
  stored, entropy bound) from a compressed file's size report;
- :func:`plot_elbo_trace`: the loss split into data term and per-layer KL, from
  a run's ``log.jsonl`` or a plain SVI history (panels without data are left
  out; the data term is labelled with its estimator, see :data:`DATA_TERM_LABELS`);
- :func:`plot_predictive`: posterior predictive intervals against the observed
  targets (regression);
- :func:`plot_accuracy_vs_k`: greedy MAP vs Bayesian averaging against ``K``
  (SQS paper, Fig. 3 style [1]);
- :func:`plot_window_errors`: reconstruction error vs ``K`` for one codebook per
  layer, equal windows and outlier-aware windows.

Example::

    >>> import torch
    >>> from sqs_pyro.models import SQSModel, Categorical
    >>> from sqs_pyro.guides import SQSGuide
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> model = SQSModel(net, {"_default": {"num_components": 4}}, Categorical(), num_data=10)
    >>> fig = plot_weight_histogram(model, SQSGuide(model))
    >>> len(fig.axes)
    4

**References**

[1] Z. Wang, N. Jiang, G. Lin, Q. Song,
    "SQS: Bayesian DNN Compression through Sparse Quantized Sub-distributions",
    arXiv:2510.08999 (2025).
"""

import json
import math
import os
import pathlib

import numpy as np
import torch

from sqs_pyro.export import SizeReport, size_report
from sqs_pyro.guides import Grouping, greedy_weights, hard_assignment
from sqs_pyro.guides.windows import equal_windows, outlier_windows, window_reconstruction_error

__all__ = [
    "DATA_TERM_LABELS",
    "load_log",
    "plot_accuracy_vs_k",
    "plot_codebook_usage",
    "plot_elbo_trace",
    "plot_gate_histograms",
    "plot_layer_sizes",
    "plot_predictive",
    "plot_weight_histogram",
    "plot_window_errors",
    "save_figure",
]

_C = {"data": "#1f77b4", "kl": "#d62728", "loss": "#222222", "spike": "#d62728", "comp": "#ff7f0e",
      "greedy": "#1f77b4", "bma": "#2ca02c", "base": "#555555"}


def _figure(nrows=1, ncols=1, width=None, height=None, **kwargs):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width or 4.2 * ncols, height or 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def save_figure(fig, path, formats=("png", "svg"), dpi=120):
    """
    Save ``fig`` as ``path`` with each suffix in ``formats`` (the suffix of
    ``path`` itself is replaced). Returns the written paths.
    """
    path = pathlib.Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        target = path.with_suffix("." + fmt)
        fig.savefig(target, format=fmt, dpi=dpi)
        out.append(str(target))
    return out


def _finish(fig, path, formats=("png", "svg")):
    if path is not None:
        save_figure(fig, path, formats)
    return fig


def _layers(model, layers, max_layers):
    names = list(model.sites)
    if layers is None:
        return names[:max_layers]
    if isinstance(layers, str):
        layers = [layers]
    bad = [n for n in layers if n not in model.sites]
    if bad:
        raise ValueError(f"unknown layer(s) {bad}: compressed layers are {names}")
    return list(layers)


def _np(t):
    return t.detach().double().cpu().numpy()


def _normal_pdf(x, loc, scale):
    return np.exp(-0.5 * ((x - loc) / scale) ** 2) / (scale * math.sqrt(2 * math.pi))


def _component_curves(ax, xs, weights, locs, scales, group_frac, label, style="--"):
    """Draw each component ``w N(mu, sigma^2)`` (dashed) and their sum (solid); arrays (G, K)."""
    total = np.zeros_like(xs)
    for g in range(locs.shape[0]):
        for k in range(locs.shape[1]):
            w = group_frac[g] * weights[g, k]
            if w <= 0:
                continue
            y = w * _normal_pdf(xs, locs[g, k], max(scales[g, k], 1e-12))
            total += y
            ax.plot(xs, y, style, color=_C["comp"], lw=0.8, alpha=0.7)
    ax.plot(xs, total, "-", color=_C["comp"], lw=1.4, label=label)


@torch.no_grad()
def plot_weight_histogram(model, guide, layers=None, *, log_y=True, bins=120, max_layers=4, path=None):
    """
    Weight histograms before and after compression, one row per layer.

    Left: the pretrained (anchor) weights with the mixture that the guide fits
    to them, ``pi_k N(mu_k, sigma_k^2)`` per component (dashed) and in total.
    Right: the exported greedy weights (exact zeros included) with the spike:
    a red bar at 0 labelled with the spike mass of the posterior
    (``1 - mean gamma``) and the export's fraction of zeros; the orange curves
    are the posterior's slab components, weighted by their posterior mass
    ``mean_i gamma_i phi_ik``. Both panels are densities on the same bins.

    :param layers: a layer name or list (default: the first ``max_layers``).
    :param bool log_y: logarithmic density axis (the spike dwarfs the rest).
    """
    names = _layers(model, layers, max_layers)
    greedy = greedy_weights(model, guide)
    fig, axes = _figure(len(names), 2, width=10, height=2.8 * len(names))
    for row, name in enumerate(names):
        p = guide.params_of(name)
        anchor = _np(model.sites[name].anchor).reshape(-1)
        after = _np(greedy[name]).reshape(-1)
        locs, scales = _np(p.locs), _np(p.scales)
        pis = _np(torch.softmax(p.logits, -1))
        lo = min(anchor.min(), after.min(), locs.min())
        hi = max(anchor.max(), after.max(), locs.max())
        pad = 0.05 * (hi - lo + 1e-12)
        edges = np.linspace(lo - pad, hi + pad, bins + 1)
        xs = np.linspace(edges[0], edges[-1], 800)
        if p.grouping.index is None:
            group_frac = np.ones(1)
        else:
            group_frac = np.bincount(_np(p.grouping.index).astype(int).reshape(-1), minlength=locs.shape[0]) / anchor.size
        ax = axes[row, 0]
        ax.hist(anchor, bins=edges, density=True, color="#9ecae1", edgecolor="none", label="pretrained")
        _component_curves(ax, xs, pis, locs, scales, group_frac, "fitted mixture")
        ax.set_title(f"{name}: before ({anchor.size:,} weights, K={locs.shape[1]}"
                     + (f", {locs.shape[0]} windows)" if locs.shape[0] > 1 else ")"), fontsize=9)
        ax = axes[row, 1]
        ax.hist(after, bins=edges, density=True, color="#a1d99b", edgecolor="none", label="exported (greedy)")
        gate = p.gate_probs()
        phi = p.component_probs(model.sites[name].anchor.detach())
        mass = (gate.unsqueeze(-1) * phi).reshape(-1, phi.shape[-1])
        if p.grouping.index is None:
            post_w = _np(mass.sum(0)).reshape(1, -1) / anchor.size
        else:
            idx = p.grouping.index.reshape(-1)
            post_w = np.stack([_np(mass[idx == g].sum(0)) for g in range(locs.shape[0])]) / anchor.size
        # weights already include the group shares: pass a group fraction of 1
        _component_curves(ax, xs, post_w, locs, scales, np.ones(locs.shape[0]), "posterior slab")
        spike = 1.0 - float(gate.double().mean())
        zeros = float((after == 0).mean())
        ax.axvline(0.0, color=_C["spike"], lw=2.0, label=f"spike: q mass {spike:.2f}, export zeros {zeros:.2f}")
        ax.set_title(f"{name}: after (sparsity {zeros:.1%})", fontsize=9)
        for a in axes[row]:
            if log_y:
                a.set_yscale("log")
            a.set_xlabel("weight", fontsize=8)
            a.set_ylabel("density", fontsize=8)
            a.tick_params(labelsize=7)
            a.legend(fontsize=7, loc="upper right")
        if log_y:  # limits from the bars, not from the far tails of the curves
            dens = np.concatenate([np.histogram(v, bins=edges, density=True)[0] for v in (anchor, after)])
            positive = dens[dens > 0]
            if positive.size:
                for a in axes[row]:
                    a.set_ylim(0.3 * positive.min(), 2.0 * positive.max())
    return _finish(fig, path)


def _grid(n, ncols=3):
    ncols = min(ncols, n)
    return math.ceil(n / ncols), ncols


@torch.no_grad()
def plot_gate_histograms(model, guide, layers=None, *, bins=50, log_y=True, max_layers=12, path=None):
    """
    Histograms of the gate probabilities ``gamma_i`` per layer. Masked weights
    (gate exactly 0) fall in the first bin; the dashed line is the export's
    pruning threshold ``gamma = 0.5``. A well-separated fit puts nearly all
    gates near 0 or 1; mass in between is weights the posterior is unsure about.
    """
    names = _layers(model, layers, max_layers)
    nrows, ncols = _grid(len(names))
    fig, axes = _figure(nrows, ncols, width=3.6 * ncols, height=2.6 * nrows)
    for i, name in enumerate(names):
        ax = axes.flat[i]
        p = guide.params_of(name)
        gate = _np(p.gate_probs()).reshape(-1)
        masked = int((~p.mask).sum())
        ax.hist(gate, bins=np.linspace(0, 1, bins + 1), color="#6baed6", edgecolor="none")
        ax.axvline(0.5, ls="--", color="#444444", lw=1)
        if log_y:
            ax.set_yscale("log")
        ax.set_title(f"{name}\nmean γ {gate.mean():.3f}, masked {masked / gate.size:.1%}", fontsize=8)
        ax.set_xlabel("gate probability γ", fontsize=8)
        ax.set_ylabel("weights", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    return _finish(fig, path)


@torch.no_grad()
def plot_codebook_usage(model, guide, layers=None, *, max_layers=12, path=None):
    """
    Bars: the number of exported (greedy, unpruned) weights that take each
    codebook value, per layer; colours mark windows. Unused components are
    wasted codebook entries; a dominant one means ``K`` could shrink.
    """
    names = _layers(model, layers, max_layers)
    hard = hard_assignment(model, guide)
    nrows, ncols = _grid(len(names))
    fig, axes = _figure(nrows, ncols, width=3.8 * ncols, height=2.8 * nrows)
    cmap = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    for i, name in enumerate(names):
        ax = axes.flat[i]
        ct = hard[name]
        g, k = guide.params_of(name).locs.shape
        counts = np.bincount(ct.codebook_index().numpy().astype(int), minlength=g * k)
        colors = [cmap[(c // k) % len(cmap)] for c in range(g * k)]
        ax.bar(np.arange(g * k), counts, color=colors)
        labels = [f"{v:.2g}" for v in ct.codebook.numpy()]
        ax.set_xticks(np.arange(g * k))
        ax.set_xticklabels(labels, rotation=90, fontsize=6 if g * k > 16 else 7)
        nnz = int(ct.mask.sum())
        ax.set_title(f"{name}: {nnz:,} nonzero, {int((counts > 0).sum())}/{g * k} values used", fontsize=8)
        ax.set_ylabel("weights", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    return _finish(fig, path)


def _as_size_report(report):
    if isinstance(report, SizeReport):
        return report
    return size_report(os.fspath(report) if isinstance(report, (str, os.PathLike)) else report)


def plot_layer_sizes(report, *, path=None):
    """
    Per-layer sparsity and bits per weight of a compressed file.

    :param report: a :class:`~sqs_pyro.export.SizeReport`, a path to a
        compressed ``.safetensors`` file, or its manifest.

    Bits per weight: the paper's ``log2 K x nonzero fraction`` (its compression
    rate is ``32 / bits``), the bits actually stored (codebook, codes, mask) and
    the empirical entropy bound of codes and mask.
    """
    rep = _as_size_report(report)
    layers = list(rep.layers.values())
    names = [l.name for l in layers]
    x = np.arange(len(layers))
    fig, axes = _figure(1, 2, width=max(8, 0.9 * len(layers) + 5), height=3.6)
    ax = axes[0, 0]
    ax.bar(x, [l.sparsity for l in layers], color="#6baed6")
    ax.set_ylim(0, 1)
    ax.set_ylabel("sparsity (fraction of zeros)", fontsize=8)
    ax.set_title(f"sparsity: {rep.sparsity:.1%} overall", fontsize=9)
    ax = axes[0, 1]
    paper = [math.log2(l.num_components) * l.nnz / l.numel if l.numel else 0 for l in layers]
    stored = [l.bits_per_weight for l in layers]
    bound = [8 * l.entropy_bound_bytes / l.numel if l.numel else 0 for l in layers]
    w = 0.27
    ax.bar(x - w, paper, w, label="paper (log2 K × nonzero)", color="#9ecae1")
    ax.bar(x, stored, w, label="stored", color="#3182bd")
    ax.bar(x + w, bound, w, label="entropy bound", color="#fdae6b")
    ax.set_ylabel("bits per weight", fontsize=8)
    cr = "∞" if rep.cr_fp32 is None else f"{rep.cr_fp32:.1f}×"
    ax.set_title(f"bits per weight (fp32 = 32); compressed layers {cr} vs fp32", fontsize=9)
    ax.legend(fontsize=7)
    for ax in axes[0]:
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    return _finish(fig, path)


def load_log(log):
    """
    Rows of a run's ``log.jsonl`` (a path), a list of row dicts as they are, or
    a plain SVI history (a list of losses, as ``svi.step`` returns them: rows
    ``{"step": i, "loss": loss}``); a torn last line is skipped.
    """
    if isinstance(log, (str, os.PathLike)):
        rows = []
        with open(log) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break
        return rows
    rows = list(log)
    if rows and not isinstance(rows[0], dict):
        rows = [{"step": i, "loss": float(v)} for i, v in enumerate(rows, 1)]
    return rows


#: Labels of the data term under each plug-in (:class:`~sqs_pyro.SQSELBO`).
DATA_TERM_LABELS = {
    "mean": "−log p(D|θ̄) at the posterior mean θ̄ (mean plug-in; not −E_q log p(D|θ))",
    "sample": "−log p(D|θ), θ ~ q (sampled plug-in: estimates −E_q log p(D|θ))",
    None: "−data term (plug-in not recorded)",
}


def plot_elbo_trace(log, *, per_example=True, plug_in=None, path=None):
    """
    The training objective from a run's log: the loss (the negative objective)
    and, where the log has them, its data term and total KL, the KL of each
    layer (log scale), and the mask, posterior and target sparsity. Panels
    without data in the log are left out: a plain SVI history (a list of
    losses) gives one panel.

    The data term is labelled with the estimator that produced it: under the
    posterior-mean plug-in it is ``-log p(D | theta_bar)``, not
    ``-E_q log p(D | theta)``, and the loss is then not a negative ELBO.

    :param log: path to ``log.jsonl``, a list of its rows (keys ``step``,
        ``loss``, ``loss_per_example``, ``data``, ``kl_total``, ``kl``,
        ``sparsity``, ``posterior_sparsity``, ``target_sparsity``,
        optionally ``plug_in``) or a list of losses.
    :param str plug_in: ``"mean"`` or ``"sample"``, when the rows do not say
        (e.g. from the run's config).
    """
    rows = load_log(log)
    if not rows:
        raise ValueError("the log is empty: nothing to plot")
    plug_in = rows[-1].get("plug_in", plug_in)
    step = np.array([r.get("step", i) for i, r in enumerate(rows, 1)], dtype=float)
    n = 1.0
    if per_example and rows[-1].get("loss_per_example"):
        n = rows[-1]["loss"] / rows[-1]["loss_per_example"]
    unit = " per example" if n != 1.0 else ""
    has_terms = all(r.get("data") is not None and r.get("kl_total") is not None for r in rows)
    has_layers = bool(rows[-1].get("kl"))
    sparsity_keys = [k for k in ("sparsity", "posterior_sparsity", "target_sparsity") if k in rows[-1]]
    panels = ["loss"] + (["layers"] if has_layers else []) + (["sparsity"] if sparsity_keys else [])
    fig, axes = _figure(len(panels), 1, width=8, height=2.7 * len(panels) + 0.4, sharex=True)
    axes = {name: axes[i, 0] for i, name in enumerate(panels)}
    ax = axes["loss"]
    objective = {"mean": "posterior-mean surrogate objective", "sample": "ELBO"}.get(plug_in, "objective")
    if has_terms:
        # the KL weight beta is not logged: loss = -(data - beta * KL) gives it back
        betas = [(r["loss"] + r["data"]) / r["kl_total"] for r in rows if r.get("kl_total")]
        beta = float(np.median(betas)) if betas else 1.0
        beta = 1.0 if abs(beta - 1.0) < 1e-3 else beta
        ax.plot(step, [-r["data"] / n for r in rows], color=_C["data"], label=DATA_TERM_LABELS.get(plug_in,
                DATA_TERM_LABELS[None]))
        kl_label = "KL (Jensen bound)" if beta == 1.0 else f"β·KL (Jensen bound), β = {beta:.3g}"
        ax.plot(step, [beta * r["kl_total"] / n for r in rows], color=_C["kl"], label=kl_label)
        ax.set_title(f"negative {objective} = −data + β·KL", fontsize=9)
    else:
        ax.set_title(f"negative {objective} (loss)", fontsize=9)
    ax.plot(step, [r["loss"] / n for r in rows], color=_C["loss"], lw=1.6, label=f"−{objective} (loss)")
    ax.set_ylabel("nats" + unit, fontsize=8)
    ax.legend(fontsize=7)
    if has_layers:
        ax = axes["layers"]
        sites = list(rows[-1].get("kl", {}))
        for name in sites:
            ax.plot(step, [max(r.get("kl", {}).get(name, np.nan) / n, 1e-12) for r in rows], lw=1, label=name)
        ax.set_yscale("log")
        ax.set_ylabel("KL" + unit, fontsize=8)
        ax.set_title("KL per layer (before the weight β)", fontsize=9)
        if len(sites) <= 12:
            ax.legend(fontsize=6, ncol=2)
    if sparsity_keys:
        ax = axes["sparsity"]
        for key, style in zip(sparsity_keys, ("-", "--", ":")):
            ax.plot(step, [r.get(key, np.nan) for r in rows], style, label=key.replace("_", " "))
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("sparsity", fontsize=8)
        ax.legend(fontsize=7)
    axes[panels[-1]].set_xlabel("step", fontsize=8)
    for a in axes.values():
        a.tick_params(labelsize=7)
    return _finish(fig, path)


def _get(d, *keys):
    for key in keys:
        if isinstance(d, dict) and d.get(key) is not None:
            return d[key]
        if isinstance(d, dict) and isinstance(d.get("sqs"), dict) and d["sqs"].get(key) is not None:
            return d["sqs"][key]
    return None


def plot_accuracy_vs_k(results, *, path=None, percent=True):
    """
    Test accuracy against the codebook size ``K``: greedy MAP export vs
    Bayesian averaging (SQS paper, Fig. 3 style), one pair of lines per
    target sparsity when the results have several, and the base (full
    precision) accuracy as a dashed line.

    :param results: a list of dicts with ``K`` (or ``num_components``),
        ``greedy_accuracy``, ``bma_accuracy`` and optionally
        ``base_accuracy`` and ``sparsity`` (top level or under ``"sqs"``, as in
        a run's ``results.json``).
    """
    rows = []
    for r in results:
        k = _get(r, "K", "num_components")
        if k is None:
            raise ValueError(f"a result has no K / num_components: {sorted(r)}")
        rows.append({"K": int(k), "greedy": _get(r, "greedy_accuracy"), "bma": _get(r, "bma_accuracy"),
                     "base": _get(r, "base_accuracy"), "sparsity": _get(r, "target_sparsity", "sparsity_target")})
    if not rows:
        raise ValueError("no results to plot")
    scale = 100.0 if percent else 1.0
    fig, axes = _figure(1, 1, width=5.5, height=3.8)
    ax = axes[0, 0]
    groups = sorted({r["sparsity"] for r in rows}, key=lambda s: -1 if s is None else s)
    markers = "osD^v<>"
    for j, s in enumerate(groups):
        sub = sorted((r for r in rows if r["sparsity"] == s), key=lambda r: r["K"])
        ks = [r["K"] for r in sub]
        tag = "" if s is None else f" ({s:.0%} sparse)"
        for key, label in (("greedy", "greedy MAP"), ("bma", "Bayesian averaging")):
            ys = [np.nan if r[key] is None else scale * r[key] for r in sub]
            ax.plot(ks, ys, marker=markers[j % len(markers)], color=_C[key], ls="-" if key == "bma" else "--",
                    label=label + tag)
    bases = [r["base"] for r in rows if r["base"] is not None]
    if bases:
        ax.axhline(scale * float(np.mean(bases)), color=_C["base"], ls=":", label="base (full precision)")
    ks = sorted({r["K"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("codebook size K", fontsize=8)
    ax.set_ylabel("test accuracy" + (" (%)" if percent else ""), fontsize=8)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    return _finish(fig, path)


def plot_window_errors(weights, num_components=(4, 8, 16, 32, 64), *, blocks=4, factor=5.0, max_weights=200_000,
                       seed=0, path=None):
    """
    Mean squared quantization error against ``K`` for one k-means codebook per
    layer, equal windows and outlier-aware windows (docs/method.md §5), measured with
    :func:`~sqs_pyro.guides.windows.window_reconstruction_error`.

    :param weights: a tensor, or a dict ``name -> tensor`` (one panel each).
    :param int max_weights: larger tensors are subsampled (uniformly, seeded)
        to keep k-means fast; the tails stay represented in proportion.
    """
    if torch.is_tensor(weights):
        weights = {"weights": weights}
    names = list(weights)
    nrows, ncols = _grid(len(names))
    fig, axes = _figure(nrows, ncols, width=4.2 * ncols, height=3.2 * nrows)
    gen = torch.Generator().manual_seed(int(seed))
    ks = [int(k) for k in num_components]
    for i, name in enumerate(names):
        w = weights[name].detach().reshape(-1).float().cpu()
        if w.numel() > max_weights:
            w = w[torch.randperm(w.numel(), generator=gen)[:max_weights]]
        strategies = {"one codebook per layer": Grouping.layer(w.shape), f"equal windows ({blocks})": equal_windows(w, blocks)}
        try:
            strategies[f"outlier-aware ({blocks}, {factor:g}·IQR)"] = outlier_windows(w, blocks, factor)
        except ValueError:
            pass
        ax = axes.flat[i]
        for (label, grouping), style in zip(strategies.items(), ("o:", "s--", "D-")):
            errs = [window_reconstruction_error(w, grouping, k) for k in ks]
            ax.plot(ks, [max(e, 1e-30) for e in errs], style, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.set_xlabel("K per group", fontsize=8)
        ax.set_ylabel("mean squared error", fontsize=8)
        ax.set_title(f"{name} ({weights[name].numel():,} weights)", fontsize=8)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    return _finish(fig, path)


def plot_predictive(pp, y, *, max_points=200, path=None):
    """
    Posterior predictive of a regression against the observed targets:
    each example's ``prob`` interval of ``y*`` (observation noise included)
    and of the mean function, sorted by the predictive mean, with the observed
    ``y`` (red where it falls outside the interval) and the coverage in the title.

    :param pp: a :class:`~sqs_pyro.analysis.predictive.PosteriorPredictive` (regression).
    :param y: the observed targets of the same examples.
    """
    if pp.kind != "regression":
        raise ValueError("plot_predictive draws regression intervals; this is a " + pp.kind)
    yv = np.asarray(y.detach().cpu() if torch.is_tensor(y) else y, dtype=float).reshape(-1)
    order = np.argsort(pp.mean)
    if order.size > max_points:
        order = order[np.linspace(0, order.size - 1, max_points).astype(int)]
    i = np.arange(order.size)
    fig, axes = _figure(1, 1, width=7.5, height=3.6)
    ax = axes[0, 0]
    ax.fill_between(i, pp.lower[order], pp.upper[order], color="#c6dbef", step="mid",
                    label=f"{pp.prob:.0%} predictive interval of y*")
    ax.fill_between(i, pp.f_lower[order], pp.f_upper[order], color="#6baed6", step="mid",
                    label=f"{pp.prob:.0%} interval of the mean f(x)")
    ax.plot(i, pp.mean[order], color="#08519c", lw=1, label="predictive mean")
    inside = (yv[order] >= pp.lower[order]) & (yv[order] <= pp.upper[order])
    ax.scatter(i[inside], yv[order][inside], s=6, color="#222222", label="observed y", zorder=3)
    ax.scatter(i[~inside], yv[order][~inside], s=8, color=_C["spike"], label="observed y, outside", zorder=3)
    title = f"posterior predictive: coverage {pp.coverage:.2f} at {pp.prob:.0%}" if pp.coverage is not None else \
        "posterior predictive"
    if pp.fit_plug_in == "mean":
        title += " (mean plug-in fit: not calibrated)"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("examples, sorted by predictive mean", fontsize=8)
    ax.set_ylabel("y", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    ax.tick_params(labelsize=7)
    return _finish(fig, path)
