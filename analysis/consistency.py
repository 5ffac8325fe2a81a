r"""
The consistency claim, checked by simulation (method.md §9).

A sparse, quantized ReLU *teacher* ``f0`` (``p = 10`` inputs of which 4 are
relevant, two hidden layers of width 8, about 85% exactly-zero weights, every
nonzero weight one of 4 levels) generates regression data
``y = f0(x) + eps``, ``eps ~ N(0, sigma^2)``, ``x ~ N(0, I_p)``. For every
sample size ``n`` of a grid, an over-parameterised *student* (hidden width 16)
is first trained by Adam on the squared error — the pretrained network whose
weights are the anchors, as SQS is used in practice — and then compressed by
SVI with the proper SQS ELBO (``kl_weight = 1``, Gaussian likelihood with the
true ``sigma``, spike-and-slab prior). The theory of Bai, Song & Cheng (2020),
which the SQS paper's consistency result follows, bounds the variational
posterior's expected squared Hellinger distance to the truth by
``O(eps_n^2 + r_n + xi_n)`` with ``eps_n^2 ~ (s*/n) log n``: on a log-log plot
the error should fall with slope near ``-1`` until the approximation error
``xi_n`` of the student (a floor, large when ``K`` is too small) takes over.

Measured for each ``n`` (on fresh test inputs, exactly, not through noisy ``y``):

- the excess risk ``E_x (f(x) - f0(x))^2`` (= test MSE minus ``sigma^2``) of the
  pretrained dense network, the posterior-mean network (weights
  ``gamma * sum_k phi_k mu_k``), the greedy export (:func:`~sqs_pyro.guides.greedy_map`),
  and its average over draws from the variational posterior ``q`` (the
  quantity the theorem bounds);
- the squared Hellinger distance between ``N(f(x), sigma^2)`` and
  ``N(f0(x), sigma^2)``, ``1 - exp(-(f - f0)^2 / (8 sigma^2))``, averaged over ``x``;
- the inclusion probability of every input, ``1 - prod_j (1 - gamma_jk)`` over
  the first-layer weights leaving it (the probability under ``q`` that the
  input is used at all): it should go to 1 for the relevant inputs and to 0
  for the others;
- codebook recovery: for each level of the teacher's layer, the distance to
  the nearest value of the student's codebook that the export uses. ReLU
  networks are invariant to rescaling a unit's incoming weights by ``c > 0``
  and its outgoing weights by ``1 / c``, so levels are identified only up to
  such scales; the distances are reported as they are.

Ablations at the largest ``n``: ``K`` too small (the floor ``xi_n``), ``lambda_0``
too large (sparsity lost or weakened) and the other likelihood plug-in.

The default plug-in is ``"sample"``: the likelihood sees (relaxed) draws from
``q``, so the objective is a Monte Carlo estimate of the proper ELBO and a gate
strictly between 0 and 1 costs likelihood (it adds noise). With ``"mean"`` the
likelihood sees only ``gamma * mu``: a gate of 0.2 acts as a continuous
multiplier on a codebook value, the posterior-mean network is then not a
quantized network at all, and the greedy export (which drops gates below 0.5)
departs from it. The ablation row shows it.

Example::

    >>> cfg = ConsistencyConfig.smoke(sizes=(200, 400), steps=60, pretrain_steps=60,
    ...                               small_components=(), large_inclusion_probs=(),
    ...                               compare_plug_in=False, num_test=500, workers=1)
    >>> result = run_consistency(cfg)
    >>> [row["n"] for row in result.grid]
    [200, 400]
    >>> sorted(result.slopes)[:2]
    ['excess_risk.anchor', 'excess_risk.greedy']

**References**

[1] Z. Wang, N. Jiang, G. Lin, Q. Song, "SQS: Bayesian DNN Compression through
    Sparse Quantized Sub-distributions", arXiv:2510.08999 (2025).
[2] J. Bai, Q. Song, G. Cheng, "Efficient Variational Inference for Sparse Deep
    Learning with Theoretical Guarantee", NeurIPS (2020).
"""

import copy
import dataclasses
import math
import os
import pathlib
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
from torch import nn

__all__ = ["ConsistencyConfig", "ConsistencyResult", "make_teacher", "run_consistency"]

#: The metrics of a fit that are fitted against ``n`` on a log-log scale.
PREDICTORS = ("anchor", "posterior_mean", "greedy", "posterior")
_LABELS = {
    "anchor": "pretrained (dense)",
    "posterior_mean": "posterior mean",
    "greedy": "greedy export",
    "posterior": "E_q (posterior draws)",
}


@dataclass(frozen=True)
class ConsistencyConfig:
    """
    Settings of the simulation; every field has a default, and
    :meth:`smoke` gives a version of about half a minute.

    :param int seed: seeds the teacher, the data, the students and SVI.
    :param tuple sizes: the grid of training-set sizes ``n``.
    :param tuple teacher_widths: hidden widths of the teacher.
    :param tuple teacher_levels: the teacher's 4-level codebook.
    :param float noise_std: ``sigma`` of the Gaussian noise (the student's
        likelihood uses the true value).
    :param int student_width: hidden width of both student layers.
    :param int num_components: ``K`` of every student layer.
    :param float inclusion_prob: the prior's ``lambda_0``.
    :param str plug_in: ``"sample"`` or ``"mean"`` (see the module docstring).
    :param int steps: SVI steps (Adam, cosine-decayed learning rates, minibatches
        of ``batch_size`` scaled by ``n / b`` in the model's data plate) for
        ``n <= steps_reference_n``; larger ``n`` get
        ``steps * (n / steps_reference_n) ** steps_growth`` (the likelihood
        sharpens with ``n``, and the fit needs more steps to reach its optimum).
    :param float gate_lr: learning rate of the gate logits ``rho``.
    :param int posterior_draws: networks drawn from ``q`` for the ``E_q`` columns.
    :param tuple small_components: ``K`` values refitted at the largest ``n``.
    :param tuple large_inclusion_probs: ``lambda_0`` values refitted at the largest ``n``.
    :param bool compare_plug_in: also fit the other plug-in at the largest ``n``.
    :param int workers: processes (one torch thread each); 1 runs in this process.
    """

    seed: int = 0
    sizes: tuple = (500, 1000, 2000, 4000, 8000, 16000)
    num_inputs: int = 10
    num_relevant: int = 4
    teacher_widths: tuple = (8, 8)
    teacher_levels: tuple = (-1.0, -0.5, 0.5, 1.0)
    noise_std: float = 0.5
    student_width: int = 16
    num_components: int = 4
    inclusion_prob: float = 0.01
    slab_scale: float = 3.0
    tau: float = 1e-3
    train_anchors: bool = False
    plug_in: str = "sample"
    pretrain_steps: int = 1500
    pretrain_batch_size: int = 512
    pretrain_lr: float = 1e-2
    steps: int = 1200
    steps_growth: float = 0.5
    steps_reference_n: int = 1000
    batch_size: int = 1024
    lr: float = 3e-3
    gate_lr: float = 1e-3
    num_test: int = 20000
    posterior_draws: int = 16
    small_components: tuple = (2,)
    large_inclusion_probs: tuple = (0.9,)
    compare_plug_in: bool = True
    workers: int = 2

    def __post_init__(self):
        for name in ("sizes", "teacher_widths", "teacher_levels", "small_components", "large_inclusion_probs"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.plug_in not in ("sample", "mean"):
            raise ValueError(f"plug_in must be 'sample' or 'mean', got {self.plug_in!r}")
        if not self.sizes or min(self.sizes) < 2:
            raise ValueError(f"sizes must be a non-empty tuple of sample sizes >= 2, got {self.sizes!r}")
        if not 0 < self.num_relevant <= self.num_inputs:
            raise ValueError(f"num_relevant must be in [1, num_inputs], got {self.num_relevant}")
        if len(self.teacher_widths) != 2:
            raise ValueError(f"the teacher has two hidden layers, got widths {self.teacher_widths!r}")

    @classmethod
    def smoke(cls, **overrides):
        """A small version (about half a minute on two cores): fewer, smaller ``n``, fewer steps."""
        base = dict(sizes=(250, 500, 1000), pretrain_steps=300, steps=300, steps_growth=0.0, batch_size=512,
                    num_test=4000,
                    posterior_draws=4, small_components=(2,), large_inclusion_probs=(0.9,), compare_plug_in=False)
        base.update(overrides)
        return cls(**base)

    def steps_for(self, n):
        """The number of SVI steps of a fit on ``n`` examples."""
        return int(round(self.steps * max(1.0, n / self.steps_reference_n) ** self.steps_growth))

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# ---------------------------------------------------------------------------
# the teacher and the data


def _seed(*parts):
    # A deterministic 63-bit seed from integers (independent of the process and of PYTHONHASHSEED).
    s = 0x9E3779B97F4A7C15
    for p in parts:
        s = (s * 6364136223846793005 + int(p) + 1442695040888963407) % (1 << 63)
    return s


def make_teacher(config, max_tries=100):
    """
    The sparse, quantized ReLU teacher of ``config``.

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
    g = torch.Generator().manual_seed(_seed(config.seed, 1))
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


def _data(config, teacher, n, tag):
    g = torch.Generator().manual_seed(_seed(config.seed, 2, tag, n))
    x = torch.randn(n, config.num_inputs, generator=g)
    y = teacher(x).squeeze(-1) + config.noise_std * torch.randn(n, generator=g)
    return x, y


# ---------------------------------------------------------------------------
# one fit


@dataclass(frozen=True)
class _Job:
    kind: str  # "grid", "components", "inclusion" or "plug_in"
    n: int
    num_components: int
    inclusion_prob: float
    plug_in: str

    @property
    def label(self):
        if self.kind == "components":
            return f"K = {self.num_components}"
        if self.kind == "inclusion":
            return f"lambda0 = {self.inclusion_prob:g}"
        if self.kind == "plug_in":
            return f"plug_in = {self.plug_in}"
        return "default"


def _student(config, seed):
    torch.manual_seed(seed)
    w = config.student_width
    return nn.Sequential(nn.Linear(config.num_inputs, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 1))


def _pretrain(config, x, y, n):
    """Adam on the squared error (cosine learning rate): the pretrained student whose weights are the anchors."""
    net = _student(config, _seed(config.seed, 3, n))
    g = torch.Generator().manual_seed(_seed(config.seed, 4, n))
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


def _fit(config, job, pretrained, x, y):
    """SVI with the SQS ELBO on a copy of the pretrained student."""
    from sqs_pyro import SQSELBO
    from sqs_pyro.guides import SQSGuide
    from sqs_pyro.models import Gaussian, SQSModel

    n = job.n
    net = copy.deepcopy(pretrained)
    spec = {"_default": {"num_components": job.num_components, "inclusion_prob": job.inclusion_prob,
                         "slab_scale": config.slab_scale, "tau": config.tau,
                         "train_anchors": config.train_anchors}}
    model = SQSModel(net, spec, Gaussian(config.noise_std), num_data=n)
    guide = SQSGuide(model)
    elbo = SQSELBO(plug_in=job.plug_in, kl_weight=1.0)
    gates, others = [], []
    for name, p in guide.named_parameters():
        (gates if name.endswith("rho_unconstrained") or name.endswith(".rho") else others).append(p)
    others += [p for _, p in model.point_parameters()]
    opt = torch.optim.Adam([{"params": others, "lr": config.lr}, {"params": gates, "lr": config.gate_lr}])
    base = [config.lr, config.gate_lr]
    g = torch.Generator().manual_seed(_seed(config.seed, 5, n))
    b = min(config.batch_size, n)
    steps = config.steps_for(n)
    for t in range(steps):
        decay = 0.5 * (1 + math.cos(math.pi * t / steps))
        for group, lr in zip(opt.param_groups, base):
            group["lr"] = lr * decay
        idx = torch.randint(n, (b,), generator=g) if b < n else None
        xb, yb = (x, y) if idx is None else (x[idx], y[idx])
        opt.zero_grad()
        loss = elbo.differentiable_loss(model, guide, xb, yb, subsample=idx) / n
        loss.backward()
        opt.step()
    return model, guide, elbo.last_terms


# ---------------------------------------------------------------------------
# metrics


def _risks(f, f0, sigma):
    d2 = (f - f0).pow(2)
    return float(d2.mean()), float((1 - torch.exp(-d2 / (8 * sigma**2))).mean())


@torch.no_grad()
def _evaluate(config, job, model, guide, pretrained, teacher, relevant, x_test, f0):
    from sqs_pyro.guides import greedy_map, hard_assignment

    sigma = config.noise_std
    names = list(model.sites)
    excess, hell = {}, {}
    excess["anchor"], hell["anchor"] = _risks(pretrained(x_test).squeeze(-1), f0, sigma)
    mean_weights = {name: guide.posterior(name).mean for name in names}
    excess["posterior_mean"], hell["posterior_mean"] = _risks(
        model.run_net(mean_weights, x_test).squeeze(-1), f0, sigma)
    excess["greedy"], hell["greedy"] = _risks(greedy_map(model, guide)(x_test).squeeze(-1), f0, sigma)
    draws = [_risks(model.run_net({nm: guide.posterior(nm).sample() for nm in names}, x_test).squeeze(-1), f0, sigma)
             for _ in range(config.posterior_draws)]
    excess["posterior"] = float(np.mean([d[0] for d in draws]))
    hell["posterior"] = float(np.mean([d[1] for d in draws]))

    first = guide.params_of(names[0]).gate_probs()  # (width, p)
    input_incl = (1 - torch.prod(1 - first, dim=0)).tolist()
    column_gate = first.mean(0).tolist()
    rel = set(relevant.tolist())
    irr = [j for j in range(config.num_inputs) if j not in rel]

    hard = hard_assignment(model, guide)
    teacher_layers = [m.weight for m in teacher if isinstance(m, nn.Linear)]
    codebooks, errors, nonzero = [], [], []
    for name, tw in zip(names, teacher_layers):
        ct = hard[name]
        used = sorted(set(ct.codebook[ct.codes.unique()].tolist())) if ct.codes.numel() else []
        levels = sorted(set(tw[tw != 0].tolist()))
        err = [min(abs(v - u) for u in used) if used else float("nan") for v in levels]
        codebooks.append(used)
        errors.append(err)
        nonzero.append(int(ct.mask.sum()))
    total = sum(site.anchor.numel() for site in model.sites.values())
    gates = torch.cat([guide.params_of(nm).gate_probs().reshape(-1) for nm in names])
    return {
        "kind": job.kind,
        "setting": job.label,
        "n": job.n,
        "num_components": job.num_components,
        "inclusion_prob": job.inclusion_prob,
        "plug_in": job.plug_in,
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
        "codebook_error": errors,
        "codebook_error_max": float(np.nanmax([e for layer in errors for e in layer] or [float("nan")])),
        "codebook_error_mean": float(np.nanmean([e for layer in errors for e in layer] or [float("nan")])),
    }


_PRETRAINED = {}


def _run_job(config, job):
    """Pretrain (cached per ``n`` in this process), fit and evaluate one job; returns its metrics."""
    t0 = time.perf_counter()
    with torch.random.fork_rng(), pyro.validation_enabled(False), pyro.settings.context(module_local_params=True):
        torch.manual_seed(_seed(config.seed, 6, job.n))
        teacher, relevant = make_teacher(config)
        x, y = _data(config, teacher, job.n, 0)
        key = (config, job.n)
        if key not in _PRETRAINED:
            _PRETRAINED.clear()
            _PRETRAINED[key] = _pretrain(config, x, y, job.n)
        pretrained = _PRETRAINED[key]
        x_test, _ = _data(config, teacher, config.num_test, 1)
        f0 = teacher(x_test).squeeze(-1)
        torch.manual_seed(_seed(config.seed, 7, job.n, job.num_components, round(job.inclusion_prob * 1e6),
                                job.plug_in == "mean"))
        model, guide, terms = _fit(config, job, pretrained, x, y)
        row = _evaluate(config, job, model, guide, pretrained, teacher, relevant, x_test, f0)
    row["final_elbo_terms"] = {"data": terms["data"], "kl_total": terms["kl_total"]} if terms else None
    row["seconds"] = time.perf_counter() - t0
    return row


def _init_worker():
    torch.set_num_threads(1)


def _jobs(config):
    largest = max(config.sizes)
    base = dict(num_components=config.num_components, inclusion_prob=config.inclusion_prob, plug_in=config.plug_in)
    jobs = [_Job("grid", n, **base) for n in config.sizes]
    for k in config.small_components:
        jobs.append(_Job("components", largest, **{**base, "num_components": int(k)}))
    for lam in config.large_inclusion_probs:
        jobs.append(_Job("inclusion", largest, **{**base, "inclusion_prob": float(lam)}))
    if config.compare_plug_in:
        other = "mean" if config.plug_in == "sample" else "sample"
        jobs.append(_Job("plug_in", largest, **{**base, "plug_in": other}))
    return jobs


# ---------------------------------------------------------------------------
# the result


def _slope(ns, values):
    ns, values = np.asarray(ns, float), np.asarray(values, float)
    ok = np.isfinite(values) & (values > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(ns[ok]), np.log(values[ok]), 1)[0])


def _fmt(v, digits=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-2 or abs(v) >= 1e3 else f"{v:.{digits}f}"
    return str(v)


@dataclass
class ConsistencyResult:
    """
    Everything the simulation measured: :attr:`grid` (one row per ``n``),
    :attr:`ablations` (rows at the largest ``n``), the fitted log-log
    :attr:`slopes` and a description of the :attr:`teacher`.
    """

    config: ConsistencyConfig
    teacher: dict
    grid: list
    ablations: list
    slopes: dict
    reference_slope: float
    wall_time_s: float
    extras: dict = field(default_factory=dict)

    def to_dict(self):
        """A JSON-serializable dict."""
        return {
            "config": self.config.to_dict(),
            "teacher": self.teacher,
            "grid": self.grid,
            "ablations": self.ablations,
            "slopes": self.slopes,
            "reference_slope_log_n_over_n": self.reference_slope,
            "wall_time_s": self.wall_time_s,
            **self.extras,
        }

    def series(self, metric, predictor):
        """``(n, values)`` of one metric (``"excess_risk"`` or ``"hellinger2"``) and predictor."""
        return [r["n"] for r in self.grid], [r[metric][predictor] for r in self.grid]

    def to_markdown(self):
        """The tables: the grid, the slopes, the ablations, and the teacher."""
        c, t = self.config, self.teacher
        lines = [
            "### Consistency simulation (method.md §9)",
            "",
            f"Teacher: {c.num_inputs} inputs ({c.num_relevant} relevant: {t['relevant_inputs']}), hidden widths "
            f"{list(c.teacher_widths)}, {t['nonzero']} of {t['weights']} weights nonzero "
            f"({100 * t['zero_fraction']:.0f}% zero), levels {list(c.teacher_levels)}, signal std "
            f"{t['signal_std']:.3f}, noise sigma = {c.noise_std:g}. Student: widths {c.student_width}x2, "
            f"K = {c.num_components}, lambda0 = {c.inclusion_prob:g}, plug_in = {c.plug_in}, "
            f"{c.steps_for(min(c.sizes))}-{c.steps_for(max(c.sizes))} SVI steps (minibatch {c.batch_size}) after "
            f"{c.pretrain_steps} Adam steps of pretraining; seed {c.seed}.",
            "",
            "Excess risk = E(f - f0)^2 (test MSE minus sigma^2); H2 = mean squared Hellinger distance; "
            "P(incl) = probability under q that an input is used (mean over relevant / irrelevant inputs); "
            "codebook error = max distance from a teacher level to the nearest used student codebook value.",
            "",
            "| n | excess risk: pretrained | post. mean | greedy | E_q | H2: post. mean | greedy | E_q "
            "| P(incl) relevant | irrelevant | nonzero | codebook err |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.grid:
            e, h = r["excess_risk"], r["hellinger2"]
            lines.append(
                f"| {r['n']} | {_fmt(e['anchor'])} | {_fmt(e['posterior_mean'])} | {_fmt(e['greedy'])} | "
                f"{_fmt(e['posterior'])} | {_fmt(h['posterior_mean'])} | {_fmt(h['greedy'])} | {_fmt(h['posterior'])} | "
                f"{r['inclusion_relevant']:.3f} | {r['inclusion_irrelevant']:.3f} | {r['nonzero']}/{r['weights']} | "
                f"{_fmt(r['codebook_error_max'])} |")
        lines += ["", f"Fitted log-log slopes against n (reference: (log n)/n over this grid has slope "
                      f"{self.reference_slope:.2f}):", "",
                  "| predictor | excess risk | H2 |", "|---|---:|---:|"]
        for p in PREDICTORS:
            lines.append(f"| {_LABELS[p]} | {self.slopes[f'excess_risk.{p}']:.2f} | "
                         f"{self.slopes[f'hellinger2.{p}']:.2f} |")
        if self.ablations:
            ref = [r for r in self.grid if r["n"] == max(c.sizes)]
            lines += ["", f"Ablations at n = {max(c.sizes)}:", "",
                      "| setting | excess risk: post. mean | greedy | E_q | H2 greedy | P(incl) relevant | irrelevant "
                      "| mean gate relevant | irrelevant | nonzero | sparsity | codebook err |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for r in ref + self.ablations:
                e = r["excess_risk"]
                lines.append(
                    f"| {r['setting']} | {_fmt(e['posterior_mean'])} | {_fmt(e['greedy'])} | {_fmt(e['posterior'])} | "
                    f"{_fmt(r['hellinger2']['greedy'])} | {r['inclusion_relevant']:.3f} | "
                    f"{r['inclusion_irrelevant']:.3f} | {r['gate_relevant']:.3f} | {r['gate_irrelevant']:.3f} | "
                    f"{r['nonzero']} | {r['sparsity']:.3f} | {_fmt(r['codebook_error_max'])} |")
        last = self.grid[-1]
        lines += ["", f"Codebooks at n = {last['n']} (values the greedy export uses) vs the teacher's levels:", ""]
        for i, (used, levels) in enumerate(zip(last["codebook_used"], t["levels_per_layer"])):
            lines.append(f"- layer {i + 1}: teacher {levels}; student {[round(u, 3) for u in used]}")
        lines += ["", f"Wall time {self.wall_time_s:.0f} s ({c.workers} worker process(es))."]
        return "\n".join(lines) + "\n"

    def plot(self, path=None):
        """
        The log-log figure: excess risk and squared Hellinger distance against
        ``n`` with a ``(log n) / n`` reference line, and the inputs' inclusion
        probabilities. Given ``path``, saves it as PNG and SVG (``path`` with
        its suffix replaced). Returns the :class:`matplotlib.figure.Figure`.
        """
        from matplotlib.figure import Figure

        fig = Figure(figsize=(14, 4.2), layout="constrained")
        axes = fig.subplots(1, 3)
        ns = np.array([r["n"] for r in self.grid], float)
        ref = np.log(ns) / ns
        styles = {"anchor": ("#999999", "s", ":"), "posterior_mean": ("#1f77b4", "o", "-"),
                  "greedy": ("#d62728", "^", "-"), "posterior": ("#2ca02c", "v", "--")}
        largest = max(self.config.sizes)
        for ax, metric, title in ((axes[0], "excess_risk", "excess risk  E(f - f0)^2"),
                                  (axes[1], "hellinger2", "squared Hellinger distance")):
            for p in PREDICTORS:
                if metric == "hellinger2" and p == "anchor":
                    continue
                color, marker, ls = styles[p]
                _, vals = self.series(metric, p)
                ax.plot(ns, vals, color=color, marker=marker, ls=ls,
                        label=f"{_LABELS[p]} (slope {self.slopes[f'{metric}.{p}']:.2f})")
            _, greedy = self.series(metric, "greedy")
            g = np.asarray(greedy, float)
            if np.all(np.isfinite(g)) and np.all(g > 0):
                scale = np.exp(np.mean(np.log(g) - np.log(ref)))
                ax.plot(ns, scale * ref, color="black", lw=1, ls="-.", label="∝ (log n)/n")
            for r in self.ablations:
                if r["kind"] == "components":
                    ax.scatter([largest], [r[metric]["greedy"]], marker="x", color="#ff7f0e", zorder=5)
                    ax.annotate(f"K={r['num_components']}", (largest, r[metric]["greedy"]),
                                textcoords="offset points", xytext=(6, 0), fontsize=8, color="#ff7f0e")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("n (training examples)")
            ax.set_title(title)
            ax.legend(fontsize=7)
            ax.grid(True, which="both", alpha=0.3)
        ax = axes[2]
        ax.plot(ns, [r["inclusion_relevant"] for r in self.grid], "o-", color="#1f77b4",
                label="relevant inputs (mean)")
        ax.plot(ns, [r["inclusion_irrelevant"] for r in self.grid], "s-", color="#d62728",
                label="irrelevant inputs (mean)")
        ax.plot(ns, [r["inclusion_irrelevant_max"] for r in self.grid], "s:", color="#d62728", alpha=0.6,
                label="irrelevant inputs (max)")
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("n (training examples)")
        ax.set_title("P(input used) under q")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        if path is not None:
            path = pathlib.Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            for fmt in ("png", "svg"):
                fig.savefig(path.with_suffix("." + fmt), format=fmt, dpi=120)
        return fig


def run_consistency(config=None, *, progress=None):
    """
    Run the simulation: for every ``n`` pretrain a student, fit SQS, evaluate;
    then the ablations at the largest ``n``.

    :param ConsistencyConfig config: settings (default: :class:`ConsistencyConfig`).
    :param callable progress: optional ``progress(row)`` called as each fit finishes.
    :rtype: ConsistencyResult
    """
    config = config or ConsistencyConfig()
    t0 = time.perf_counter()
    jobs = _jobs(config)
    # Largest n first, so that the slowest fits start first.
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i].n)
    rows = [None] * len(jobs)
    if config.workers <= 1:
        for i in order:
            rows[i] = _run_job(config, jobs[i])
            if progress:
                progress(rows[i])
    else:
        import multiprocessing

        # fork (where there is one) needs no importable __main__ and starts at once; the
        # workers run one torch thread each, so no OpenMP pool is inherited in use.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        ctx = multiprocessing.get_context(method)
        with ProcessPoolExecutor(config.workers, mp_context=ctx, initializer=_init_worker) as pool:
            futures = {pool.submit(_run_job, config, jobs[i]): i for i in order}
            for fut in _as_completed(futures):
                rows[futures[fut]] = fut.result()
                if progress:
                    progress(rows[futures[fut]])
    teacher, relevant = make_teacher(config)
    x_test, _ = _data(config, teacher, config.num_test, 1)
    grid = sorted((r for r in rows if r["kind"] == "grid"), key=lambda r: r["n"])
    ablations = [r for r in rows if r["kind"] != "grid"]
    ns = [r["n"] for r in grid]
    slopes = {f"{m}.{p}": _slope(ns, [r[m][p] for r in grid]) for m in ("excess_risk", "hellinger2")
              for p in PREDICTORS}
    reference = _slope(ns, [math.log(n) / n for n in ns])
    return ConsistencyResult(config, _teacher_summary(teacher, relevant, x_test), grid, ablations, slopes,
                             reference, time.perf_counter() - t0)


def _as_completed(futures):
    from concurrent.futures import as_completed

    return as_completed(futures)
