r"""
The consistency claim, checked by simulation (method.md §9).

A sparse, quantized ReLU *teacher* ``f0`` (``p = 10`` inputs of which 4 are
relevant, two hidden layers of width 8, about 85% exactly-zero weights, every
nonzero weight one of 4 levels) generates regression data
``y = f0(x) + eps``, ``eps ~ N(0, sigma^2)``, ``x ~ N(0, I_p)``. For every
replicate seed and every sample size ``n`` of a grid, an over-parameterised
*student* (hidden width 16) is first trained by Adam on the squared error --
the pretrained network whose weights are the anchors, as SQS is used in
practice -- and then fitted by SVI with the proper SQS ELBO (``kl_weight = 1``,
Gaussian likelihood with the true ``sigma``, spike-and-slab prior, the
likelihood at relaxed draws from ``q``). Each seed draws its own teacher, data
and students. The theory of Bai, Song & Cheng (2020), which the SQS paper's
consistency result follows, bounds the variational posterior's expected
squared Hellinger distance to the truth by ``O(eps_n^2 + r_n + xi_n)`` with
``eps_n^2 ~ (s*/n) log n``: on a log-log plot the error should fall with slope
near ``-1`` until the approximation error ``xi_n`` (a floor, large when ``K``
is too small) or the optimisation error takes over.

**The student's variational family.** Learned gates ``gamma_i`` (the spike,
whose inclusion probabilities the theory is about) and, by default,
straight-through anchors (``anchors="straight-through"``): the anchor ``w_i``
is the variational parameter that selects weight ``i``'s component (``phi_i``
is one-hot at ``tau = 1e-3``); the ELBO is unchanged, and its gradient in
``w_i`` -- zero almost everywhere, since ``phi`` is piecewise constant -- is
replaced by the straight-through estimate (the drawn gate). With frozen anchors
(``anchors="frozen"``, the earlier student and an ablation) the assignments are
those of the pretrained weights and can change only where the codebook moves
across them.

**The fit is the compress verb's.** The student is fitted by
:func:`~sqs_pyro.run.fit.fit_model` (the fit under
:func:`~sqs_pyro.run.fit.fit_sqs`) on an :class:`~sqs_pyro.models.SQSModel`
and :class:`~sqs_pyro.guides.SQSGuide` built as fit_sqs builds them (here, so
that the stopping rule can read the ELBO before the first step), with a
:class:`~sqs_pyro.run.config.CompressConfig` of the paper's recipe with learned
gates, the study's anchors, no pruning schedule, ``kl_weight = 1``, constant
learning rates ``lr`` / ``gate_lr`` / ``anchor_lr`` and the step cap as its
length; the stopping rule below is the verb's ``stop``, and the trainer's log and its one checkpoint
(``checkpoint_every`` = the cap) go to a temporary directory. What this changes
against the SVI loop of its own that the study had before (issue 15):
minibatches (``n > batch_size``) are the trainer's, ``n //
batch_size`` batches per shuffled epoch, not independent draws with
replacement; the loss is the ELBO's total, not divided by ``n`` (Adam is
invariant to the scale, up to its ``eps``); a non-finite loss stops the fit
with :class:`~sqs_pyro.run.trainer.NonFiniteLossError`. The greedy export is
:func:`~sqs_pyro.guides.compressed_weights`, the export of every other path
(nothing is written to a file).

**Convergence before measurement.** SVI runs with constant learning rates;
every ``check_every`` steps the full-data ELBO is evaluated at
``monitor_particles`` fixed draws (common random numbers, so that successive
checks differ by the fit, not by the draws). When the mean of the last
``patience`` checks exceeds the mean of the ``patience`` before by less than
``elbo_tol * n / 1000`` nats (the ELBO is a sum over ``n`` examples), the
learning rates are multiplied by ``lr_decay``; a run has *converged* when this
happens at the last of ``1 + max_decays`` learning-rate levels. A run that reaches its step
cap (``max_steps * max(1, n / steps_reference_n) ** steps_growth``) first is
flagged ``converged = False``, and the summaries leave it out and say so.

Measured for each run (on fresh test inputs, exactly, not through noisy ``y``):

- the excess risk ``E_x (f(x) - f0(x))^2`` (= test MSE minus ``sigma^2``) of the
  pretrained dense network, the posterior-mean network (weights
  ``gamma * sum_k phi_k mu_k``), the greedy export (:func:`~sqs_pyro.guides.compressed_weights`),
  and its average over draws from the variational posterior ``q`` (the
  quantity the theorem bounds);
- the squared Hellinger distance between ``N(f(x), sigma^2)`` and
  ``N(f0(x), sigma^2)``, ``1 - exp(-(f - f0)^2 / (8 sigma^2))``, averaged over ``x``;
- the inclusion probability of every input, ``1 - prod_j (1 - gamma_jk)`` over
  the first-layer weights leaving it;
- codebook recovery. A ReLU network is unchanged when layer ``l``'s weights and
  biases are multiplied by ``c_l > 0`` and the next layer's weights by
  ``1 / c_l``, and a shared per-layer codebook keeps exactly this per-layer
  symmetry, so the levels are compared after the best per-layer scale: for
  each layer, ``min_c max_v min_u |v - c u|`` over the teacher's levels ``v``
  and the codebook values ``u`` the export uses (every teacher level is
  matched), and the reverse distance (no spurious level), at the same ``c``.

:mod:`sqs_pyro.analysis.consistency_config` holds the settings
(:class:`ConsistencyConfig`, :data:`ABLATIONS`);
:mod:`sqs_pyro.analysis.consistency_result` summarises the runs (means and
95% bands over seeds, slopes with their uncertainty) and writes the tables
and the figure.

Example::

    >>> cfg = ConsistencyConfig.smoke(sizes=(200, 400), seeds=(0,), max_steps=100, pretrain_steps=60,
    ...                               ablations=(), num_test=500, workers=1)
    >>> result = run_consistency(cfg)
    >>> [(r["seed"], r["n"]) for r in result.runs]
    [(0, 200), (0, 400)]
    >>> sorted(result.slopes)[:2]
    ['excess_risk.anchor', 'excess_risk.greedy']

**References**

[1] Z. Wang, N. Jiang, G. Lin, Q. Song, "SQS: Bayesian DNN Compression through
    Sparse Quantized Sub-distributions", arXiv:2510.08999 (2025).
[2] J. Bai, Q. Song, G. Cheng, "Efficient Variational Inference for Sparse Deep
    Learning with Theoretical Guarantee", NeurIPS (2020).
[3] Y. Bengio, N. Léonard, A. Courville, "Estimating or Propagating Gradients
    Through Stochastic Neurons for Conditional Computation", arXiv:1308.3432 (2013).
"""

import copy
import math
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from torch import nn

from sqs_pyro.elbo import SQSELBO
from sqs_pyro.guides import SQSGuide, compressed_weights
from sqs_pyro.models import Gaussian, SQSModel
from sqs_pyro.run.config import CompressConfig
from sqs_pyro.run.fit import fit_model
from sqs_pyro.run.trainer import TensorData

from .consistency_config import ABLATIONS, ConsistencyConfig
from .consistency_result import ConsistencyResult

__all__ = ["ABLATIONS", "ConsistencyConfig", "ConsistencyResult", "codebook_recovery", "make_teacher",
           "run_consistency"]

# ---------------------------------------------------------------------------
# the teacher and the data


def _seed(*parts):
    # A deterministic 63-bit seed from integers (independent of the process and of PYTHONHASHSEED).
    s = 0x9E3779B97F4A7C15
    for p in parts:
        s = (s * 6364136223846793005 + int(p) + 1442695040888963407) % (1 << 63)
    return s


def make_teacher(config, seed=None, max_tries=100):
    """
    The sparse, quantized ReLU teacher of ``config`` and ``seed`` (default: the first of ``config.seeds``).

    Every hidden unit of the first layer reads one relevant input (each relevant
    input is read at least once) and, with probability 1/4, a second one; half
    the units of the second layer (rounded up) read two first-layer units each,
    together covering all of them, at least one through a positive weight (a
    ReLU unit fed only negative weights by ReLU units is dead), and feed the
    output; every other weight is exactly zero. Nonzero weights are drawn from
    ``teacher_levels``; biases are small and dense (biases are not compressed).
    Teachers in which some relevant input explains less than 5% of the variance
    of ``f0`` (the rest held fixed) are redrawn, so that "relevant" means it.

    :returns: ``(net, relevant)``: an ``nn.Sequential`` with frozen parameters
        and the sorted indices of the relevant inputs.
    """
    seed = config.seeds[0] if seed is None else seed
    g = torch.Generator().manual_seed(_seed(seed, 1))
    for _ in range(max_tries):
        net, relevant = _draw_teacher(config, g)
        if min(_importance(net, relevant, config.num_inputs)) >= 0.05:
            break
    return net, relevant


def _draw_teacher(config, g):
    p, s = config.num_inputs, config.num_relevant
    h1, h2 = config.teacher_widths
    levels = torch.tensor(config.teacher_levels)
    positive = levels[levels > 0] if (levels > 0).any() else levels

    def draw(k, among=levels):
        return among[torch.randint(len(among), (k,), generator=g)]

    relevant = torch.randperm(p, generator=g)[:s].sort().values
    w1 = torch.zeros(h1, p)
    order = relevant[torch.randperm(s, generator=g)]
    for j in range(h1):
        cols = [int(order[j % s])]
        if torch.rand((), generator=g) < 0.25:
            others = [int(c) for c in relevant if int(c) != cols[0]]
            if others:
                cols.append(others[int(torch.randint(len(others), (), generator=g))])
        w1[j, cols] = draw(len(cols))
    alive = min(h2, math.ceil(h1 / 2))
    w2 = torch.zeros(h2, h1)
    for i, j in enumerate(torch.randperm(h1, generator=g).tolist()):
        unit = i % alive
        w2[unit, j] = draw(1, levels if (w2[unit] > 0).any() else positive)
    w3 = torch.zeros(1, h2)
    w3[0, :alive] = draw(alive)
    net = nn.Sequential(nn.Linear(p, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 1))
    with torch.no_grad():
        for layer, w in zip((net[0], net[2], net[4]), (w1, w2, w3)):
            layer.weight.copy_(w)
            layer.bias.copy_(0.2 * torch.randn(layer.bias.shape, generator=g))
    net.requires_grad_(False)
    return net, relevant


@torch.no_grad()
def _importance(net, relevant, num_inputs, num_points=2000, num_redraws=16):
    """Fraction of ``Var f0`` each relevant input explains: ``E (f0 - E[f0 | x_-j])^2 / Var f0``."""
    g = torch.Generator().manual_seed(12345)
    x = torch.randn(num_points, num_inputs, generator=g)
    f = net(x).squeeze(-1)
    var = float(f.var())
    if var <= 0:
        return [0.0] * len(relevant)
    out = []
    for j in relevant.tolist():
        xs = x.repeat(num_redraws, 1)
        xs[:, j] = torch.randn(len(xs), generator=g)
        cond = net(xs).squeeze(-1).reshape(num_redraws, num_points).mean(0)
        out.append(float((f - cond).pow(2).mean()) / var)
    return out


def _teacher_summary(teacher, relevant, x_test):
    weights = [m.weight for m in teacher if isinstance(m, nn.Linear)]
    nonzero = [int((w != 0).sum()) for w in weights]
    total = sum(w.numel() for w in weights)
    f0 = teacher(x_test).squeeze(-1)
    return {
        "relevant_inputs": relevant.tolist(),
        "nonzero_per_layer": nonzero,
        "nonzero": sum(nonzero),
        "weights": total,
        "zero_fraction": 1 - sum(nonzero) / total,
        "levels_per_layer": [sorted(set(w[w != 0].tolist())) for w in weights],
        "signal_std": float(f0.std()),
        "input_importance": [round(v, 4) for v in _importance(teacher, relevant, x_test.shape[-1])],
    }


def _data(config, seed, teacher, n, tag):
    g = torch.Generator().manual_seed(_seed(seed, 2, tag, n))
    x = torch.randn(n, config.num_inputs, generator=g)
    y = teacher(x).squeeze(-1) + config.noise_std * torch.randn(n, generator=g)
    return x, y


# ---------------------------------------------------------------------------
# one fit


@dataclass(frozen=True)
class _Job:
    seed: int
    n: int
    setting: str = "default"  # "default" or a key of ABLATIONS

    def settings(self, config):
        """The fit's settings: the config's, with the ablation's changes."""
        base = {"num_components": config.num_components, "inclusion_prob": config.inclusion_prob,
                "plug_in": config.plug_in, "anchors": config.anchors}
        base.update(ABLATIONS.get(self.setting, {}))
        return base


def _student(config, seed):
    torch.manual_seed(seed)
    w = config.student_width
    return nn.Sequential(nn.Linear(config.num_inputs, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 1))


def _pretrain(config, seed, x, y, n):
    """Adam on the squared error (cosine learning rate): the pretrained student whose weights are the anchors."""
    net = _student(config, _seed(seed, 3, n))
    g = torch.Generator().manual_seed(_seed(seed, 4, n))
    opt = torch.optim.Adam(net.parameters(), lr=config.pretrain_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.pretrain_steps)
    b = min(config.pretrain_batch_size, n)
    for _ in range(config.pretrain_steps):
        idx = torch.randint(n, (b,), generator=g) if b < n else slice(None)
        opt.zero_grad()
        loss = (net(x[idx]).squeeze(-1) - y[idx]).pow(2).mean()
        loss.backward()
        opt.step()
        sched.step()
    net.requires_grad_(True)
    return net


def _monitor(elbo, model, guide, x, y, particles, seed):
    """The full-data ELBO (nats) averaged over ``particles`` fixed draws (common random numbers)."""
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        return -float(np.mean([elbo.loss(model, guide, x, y) for _ in range(particles)]))


class _Plateau:
    """
    The stopping rule of a fit, the ``stop`` of :func:`~sqs_pyro.run.fit.fit_model`
    (asked by :meth:`~sqs_pyro.run.trainer.SQSTrainer.run` after each step): every ``check_every`` steps
    ``elbo_at()`` is recorded; on a plateau (module docstring) the learning rates
    fall by ``lr_decay`` (each group's ``base_lr``), and the plateau after
    ``max_decays`` decays ends the run, converged.
    """

    def __init__(self, config, n, elbo_at):
        self.config, self.elbo_at = config, elbo_at
        self.tol = config.elbo_tol * n / 1000  # nats of the total ELBO
        self.history = [(0, elbo_at())]
        self.decays, self.converged, self._level_start, self._base = 0, False, 1, None

    def __call__(self, trainer):
        c, step = self.config, trainer.state.step
        if step % c.check_every:
            return False
        self.history.append((step, self.elbo_at()))
        values = [v for _, v in self.history[self._level_start:]]  # the checks at this learning rate
        w = c.patience
        if len(values) < 2 * w or np.mean(values[-w:]) - np.mean(values[-2 * w:-w]) >= self.tol:
            return False
        if self.decays == c.max_decays:
            self.converged = True
            return True
        groups = trainer.optimizer.param_groups
        self._base = self._base or [g["base_lr"] for g in groups]
        self.decays, self._level_start = self.decays + 1, len(self.history)
        for group, lr in zip(groups, self._base):
            group["base_lr"] = lr * c.lr_decay**self.decays
        return False

    def record(self, steps, cap):
        """The convergence record of the fit (the run's ``fit`` entry)."""
        values = [v for _, v in self.history]
        return {"steps": steps, "step_cap": cap, "converged": self.converged, "lr_decays": self.decays,
                "elbo_tol": self.tol, "elbo": values[-1], "elbo_best": max(values), "elbo_start": values[0],
                "elbo_history": self.history}


def _compress_config(config, settings, steps, steps_per_epoch):
    """The :class:`~sqs_pyro.run.config.CompressConfig` of a fit: the proper ELBO, learned gates, no pruning
    schedule, constant learning rates (the plateau rule lowers them), at most ``steps`` steps."""
    epochs = steps / steps_per_epoch
    while math.ceil(epochs * steps_per_epoch) > steps:  # the trainer runs ceil(epochs * steps_per_epoch) steps
        epochs = math.nextafter(epochs, 0.0)
    return CompressConfig(recipe="paper", gates="learned", anchors=settings["anchors"], pruning="none",
                          lr_schedule="constant", kl_weight=1.0, plug_in=settings["plug_in"], lr=config.lr,
                          gate_lr=config.gate_lr, anchor_lr=config.anchor_lr, epochs=epochs,
                          checkpoint_every=steps, log_every=config.check_every)


def _fit(config, job, pretrained, x, y):
    """
    SVI with the SQS ELBO on a copy of the pretrained student, by
    :func:`~sqs_pyro.run.fit.fit_model`, until the ELBO stops improving (:class:`_Plateau`) or the step cap.
    Returns ``(model, guide, fit)`` with ``fit`` the convergence record.
    """
    n, s = job.n, job.settings(config)
    spec = {"_default": {"num_components": s["num_components"], "inclusion_prob": s["inclusion_prob"],
                         "slab_scale": config.slab_scale, "tau": config.tau}}
    data = TensorData(x, y)
    batch_size, cap = min(config.batch_size, n), config.steps_cap(n)
    compress = _compress_config(config, s, cap, len(data) // batch_size)
    # the model and guide are built here (as fit_sqs builds them) because the plateau rule reads the ELBO
    # before the first step
    model = SQSModel(copy.deepcopy(pretrained), spec, Gaussian(config.noise_std), num_data=n)
    guide = SQSGuide(model)
    monitor = SQSELBO(plug_in=s["plug_in"], kl_weight=1.0)
    plateau = _Plateau(config, n, lambda: _monitor(monitor, model, guide, x, y, config.monitor_particles,
                                                   _seed(job.seed, 8, n)))
    with tempfile.TemporaryDirectory(prefix="sqs-consistency-") as out_dir:
        fit = fit_model(model, data, compress, guide=guide, out_dir=out_dir, batch_size=batch_size,
                        seed=_seed(job.seed, 5, n) % (1 << 31), progress=False, stop=plateau)
    return model, guide, plateau.record(fit.state.step, cap)


# ---------------------------------------------------------------------------
# metrics


def _risks(f, f0, sigma):
    d2 = (f - f0).pow(2)
    return float(d2.mean()), float((1 - torch.exp(-d2 / (8 * sigma**2))).mean())


def _scale_grid():
    return np.exp(np.linspace(math.log(1 / 16), math.log(16), 2401))


def codebook_recovery(levels, values):
    """
    How well codebook ``values`` recover ``levels`` up to a positive scale.

    :returns: dict with ``raw`` (``max_v min_u |v - u|``, no rescaling), ``scale``
        (the ``c > 0`` minimising ``max_v min_u |v - c u|``), ``error`` (that
        minimum: every level is within it of a rescaled value) and ``spurious``
        (``max_u min_v |c u - v|`` at that ``c``: every used value is within it of a level).

    Example::

        >>> r = codebook_recovery([-1.0, -0.5, 0.5, 1.0], [-2.0, -1.0, 1.0, 2.0])
        >>> round(r["scale"], 2), round(r["error"], 3), r["raw"]
        (0.5, 0.0, 0.5)
    """
    levels, values = np.asarray(levels, float), np.asarray(values, float)
    if levels.size == 0 or values.size == 0:
        nan = float("nan")
        return {"raw": nan, "scale": nan, "error": nan, "spurious": nan}
    raw = float(np.abs(levels[:, None] - values[None, :]).min(1).max())
    cs = _scale_grid()
    scaled = cs[:, None, None] * values[None, None, :]  # (C, 1, U)
    err = np.abs(levels[None, :, None] - scaled).min(2).max(1)  # (C,)
    i = int(np.argmin(err))
    spurious = float(np.abs(cs[i] * values[:, None] - levels[None, :]).min(1).max())
    return {"raw": raw, "scale": float(cs[i]), "error": float(err[i]), "spurious": spurious}


@torch.no_grad()
def _evaluate(config, job, model, guide, pretrained, teacher, relevant, x_test, f0):
    sigma = config.noise_std
    names = list(model.sites)
    excess, hell = {}, {}
    excess["anchor"], hell["anchor"] = _risks(pretrained(x_test).squeeze(-1), f0, sigma)
    mean_weights = {name: guide.posterior(name).mean for name in names}
    excess["posterior_mean"], hell["posterior_mean"] = _risks(
        model.run_net(mean_weights, x_test).squeeze(-1), f0, sigma)
    compressed, greedy = compressed_weights(model, guide)  # the export: codebooks, codes, masks, and its network
    excess["greedy"], hell["greedy"] = _risks(greedy(x_test).squeeze(-1), f0, sigma)
    draws = [_risks(model.run_net({nm: guide.posterior(nm).sample() for nm in names}, x_test).squeeze(-1), f0, sigma)
             for _ in range(config.posterior_draws)]
    excess["posterior"] = float(np.mean([d[0] for d in draws]))
    hell["posterior"] = float(np.mean([d[1] for d in draws]))

    first = guide.params_of(names[0]).gate_probs()  # (width, p)
    input_incl = (1 - torch.prod(1 - first, dim=0)).tolist()
    column_gate = first.mean(0).tolist()
    rel = set(relevant.tolist())
    irr = [j for j in range(config.num_inputs) if j not in rel]

    teacher_layers = [m.weight for m in teacher if isinstance(m, nn.Linear)]
    codebooks, recovery, nonzero = [], [], []
    for name, tw in zip(names, teacher_layers):
        ct = compressed[name]
        used = sorted(set(ct.codebook[ct.codes.unique()].tolist())) if ct.codes.numel() else []
        codebooks.append(used)
        recovery.append(codebook_recovery(sorted(set(tw[tw != 0].tolist())), used))
        nonzero.append(int(ct.mask.sum()))
    total = sum(site.anchor.numel() for site in model.sites.values())
    gates = torch.cat([guide.params_of(nm).gate_probs().reshape(-1) for nm in names])
    finite = lambda vs: [v for v in vs if math.isfinite(v)]  # noqa: E731
    return {
        "seed": job.seed,
        "n": job.n,
        "setting": job.setting,
        **job.settings(config),
        "excess_risk": excess,
        "hellinger2": hell,
        "input_inclusion": input_incl,
        "input_mean_gate": column_gate,
        "inclusion_relevant": float(np.mean([input_incl[j] for j in rel])),
        "inclusion_irrelevant": float(np.mean([input_incl[j] for j in irr])) if irr else float("nan"),
        "inclusion_irrelevant_max": float(max(input_incl[j] for j in irr)) if irr else float("nan"),
        "gate_relevant": float(np.mean([column_gate[j] for j in rel])),
        "gate_irrelevant": float(np.mean([column_gate[j] for j in irr])) if irr else float("nan"),
        "nonzero_per_layer": nonzero,
        "nonzero": sum(nonzero),
        "weights": total,
        "sparsity": 1 - sum(nonzero) / total,
        "ambiguous_gates": int(((gates > 0.1) & (gates < 0.9)).sum()),
        "codebook_used": codebooks,
        "codebook_recovery": recovery,
        "codebook_error_raw": max(finite([r["raw"] for r in recovery]), default=float("nan")),
        "codebook_error_scaled": max(finite([r["error"] for r in recovery]), default=float("nan")),
        "codebook_spurious_scaled": max(finite([r["spurious"] for r in recovery]), default=float("nan")),
        "codebook_scale_product": float(np.prod([r["scale"] for r in recovery])),
    }


_PRETRAINED = {}


def _run_job(config, job):
    """Pretrain (cached per seed and ``n`` in this process), fit and evaluate one job; returns its metrics."""
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the numbers do not depend on the process that runs the job
    try:
        with torch.random.fork_rng(), pyro.validation_enabled(False), \
                pyro.settings.context(module_local_params=True):
            torch.manual_seed(_seed(job.seed, 6, job.n))
            teacher, relevant = make_teacher(config, job.seed)
            x, y = _data(config, job.seed, teacher, job.n, 0)
            key = (config, job.seed, job.n)
            if key not in _PRETRAINED:
                _PRETRAINED.clear()
                _PRETRAINED[key] = _pretrain(config, job.seed, x, y, job.n)
            pretrained = _PRETRAINED[key]
            x_test, _ = _data(config, job.seed, teacher, config.num_test, 1)
            f0 = teacher(x_test).squeeze(-1)
            torch.manual_seed(_seed(job.seed, 7, job.n, list(ABLATIONS).index(job.setting) + 1
                                    if job.setting in ABLATIONS else 0))
            model, guide, fit = _fit(config, job, pretrained, x, y)
            row = _evaluate(config, job, model, guide, pretrained, teacher, relevant, x_test, f0)
    finally:
        torch.set_num_threads(threads)
    row["fit"] = fit
    row["seconds"] = time.perf_counter() - t0
    return row


def _init_worker():
    torch.set_num_threads(1)


def _jobs(config):
    largest = max(config.sizes)
    jobs = [_Job(seed, n) for seed in config.seeds for n in config.sizes]
    jobs += [_Job(seed, largest, name) for name in config.ablations for seed in config.seeds[:config.ablation_seeds]]
    return jobs


def run_consistency(config=None, *, progress=None):
    """
    Run the simulation: for every seed and ``n`` pretrain a student, fit SQS
    to convergence, evaluate; then the ablations at the largest ``n``.

    :param ConsistencyConfig config: settings (default: :class:`ConsistencyConfig`).
    :param callable progress: optional ``progress(row)`` called as each fit finishes.
    :rtype: ConsistencyResult
    """
    config = config or ConsistencyConfig()
    t0 = time.perf_counter()
    jobs = _jobs(config)
    # Largest n first, so that the slowest fits start first (the results do not depend on the order).
    order = sorted(range(len(jobs)), key=lambda i: (-jobs[i].n, jobs[i].seed))
    rows = [None] * len(jobs)
    if config.workers <= 1:
        for i in order:
            rows[i] = _run_job(config, jobs[i])
            if progress:
                progress(rows[i])
    else:
        # fork (where there is one) needs no importable __main__ and starts at once; the
        # workers run one torch thread each, so no OpenMP pool is inherited in use.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        ctx = multiprocessing.get_context(method)
        with ProcessPoolExecutor(config.workers, mp_context=ctx, initializer=_init_worker) as pool:
            futures = {pool.submit(_run_job, config, jobs[i]): i for i in order}
            for fut in as_completed(futures):
                rows[futures[fut]] = fut.result()
                if progress:
                    progress(rows[futures[fut]])
    teachers = {}
    for seed in config.seeds:
        teacher, relevant = make_teacher(config, seed)
        x_test, _ = _data(config, seed, teacher, config.num_test, 1)
        teachers[str(seed)] = _teacher_summary(teacher, relevant, x_test)
    return ConsistencyResult.from_runs(config, teachers, rows, time.perf_counter() - t0)
