r"""
Did the variational fit work? Two diagnostics for an SQS posterior.

**PSIS k-hat of the importance ratios** (Yao, Vehtari, Simpson & Gelman [1]).
Draw ``theta_s ~ q`` exactly from the guide and form the log importance ratios

.. math::

    \log r_s = \log p(\theta_s, y) - \log q(\theta_s)
             = \log p(y \mid \theta_s) + \log \pi(\theta_s) - \log q(\theta_s).

Both ``pi`` (spike and slab) and ``q`` (spike and Gaussian mixture) put an atom
at 0, so both densities are taken with respect to ``delta_0 + Lebesgue``
(:mod:`~sqs_pyro.analysis.posterior_draws`): an exact zero contributes
``log(1 - lambda_0) - log(1 - gamma)``, a nonzero value the ratio of the slab
densities. The ratio is then well defined; with a spike-free prior it is not,
and these diagnostics refuse such models. Pareto-smoothed importance
sampling [2] fits a generalized Pareto distribution to the largest ratios; its
shape ``k-hat`` says how heavy the right tail of ``r`` is, i.e. how badly ``q``
misses mass that the posterior has:

- ``k-hat < 0.5``: good. ``q`` is close to the posterior; importance-weighted
  expectations converge quickly and the variational summaries can be trusted.
- ``0.5 <= k-hat < 0.7``: ok. The ratios have infinite variance but PSIS
  estimates are still usable; treat plain ``q`` summaries with some caution.
- ``k-hat >= 0.7``: unreliable. ``q`` is far from the posterior in the sense
  that matters (too narrow or in the wrong place); neither ``q`` nor PSIS
  corrections can be trusted as the Bayesian posterior. This is the usual
  outcome for a deep network: a factorized, quantized ``q`` of thousands of
  weights is a *compression device*, and ``k-hat`` says honestly that it is not
  the exact posterior. Its predictive accuracy is judged on held-out data.

When the weights are degenerate (``k-hat > 0.7`` or an effective sample size
below :data:`MIN_ESS`), :class:`PSISDiagnostic` says so (``reliable`` is
False, :meth:`PSISDiagnostic.summary` prints the verdict and a plain next
step instead of bare numbers) and the Monte Carlo estimates built on the
weights are not to be read as results. k-hat is that of arviz-stats'
PSIS (:func:`arviz_stats.base.array_stats.psislw`, whose argument is the
*negated* log ratio, LOO's convention); arviz-stats'
``pareto_khat(..., log_weights=True)`` on the 0.8 line fits the Pareto tail to
the log ratios themselves, not to the weights, and is not this diagnostic.

Beside ``k-hat`` we report the effective sample size of the smoothed weights
(``1 / sum w_s^2``; a few out of hundreds means the same), the Monte Carlo
ELBO ``mean(log r_s)`` (the *exact* KL, not the Jensen bound the training
uses, and the likelihood at random draws, not at the posterior mean), and the
importance-sampling estimate ``log mean exp(log r_s)`` of ``log p(y)``. Point
parameters (biases, norms) stay at their fitted values: the target is the
posterior of the compressed weights given them. The log joint needs the
likelihood of the *whole* training set at every draw, so this is for models
small enough to evaluate it; with a subset of ``b`` of the ``n`` examples the
log-likelihood is scaled by ``n / b``, which adds noise that itself inflates
``k-hat``.

**Prior sensitivity by power scaling** (Kallioinen, Paananen, Bürkner &
Vehtari [3]). Raising the prior to a power ``alpha`` gives the posterior
``p_alpha(theta | y) ∝ pi(theta)^alpha p(y | theta)``; its expectations are
estimated from the same draws with importance weights ``pi(theta_s)^(alpha - 1)``
(Pareto smoothed). :func:`prior_sensitivity` reports, for a few ``alpha``, how
posterior summaries (per-layer sparsity, bits per weight, weight scale) move,
with the ``k-hat`` of each set of weights (``> 0.7``: that ``alpha`` is too far
to be estimated by reweighting), and arviz-stats' local sensitivity
(:func:`arviz_stats.psense`, the cumulative Jensen-Shannon distance per unit
of ``log alpha``). Read them as: a sensitivity above ``0.05`` means the prior
(``lambda_0``, ``sigma_0``) visibly shapes that summary; summaries that move a lot
between ``alpha = 0.5`` and ``2`` are set by the prior rather than by the data.
The draws come from ``q``, not the exact posterior, so this measures the
sensitivity of the variational posterior, and it is only as reliable as the
``k-hat`` values say; with many weights the log prior varies so much across
draws that even small ``alpha - 1`` gives degenerate weights, which ``k-hat``
flags: then arviz-stats' ``psense`` (which power-scales by ``alpha`` in
``[0.99, 1.01]``) is **withheld** (reported as the reason, not as numbers),
because its value would measure the degeneracy of the weights, not the prior.

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=1000)                      # draws from q = N(0, 1)
    >>> log_r = -0.5 * (x / 0.5) ** 2 + 0.5 * x ** 2   # target N(0, 0.5^2), up to a constant
    >>> psis_from_log_ratios(log_r).label
    'good'

**References**

[1] Y. Yao, A. Vehtari, D. Simpson, A. Gelman, "Yes, but did it work?:
    Evaluating variational inference", ICML 2018.
[2] A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry, "Pareto smoothed
    importance sampling", JMLR 25 (2024).
[3] N. Kallioinen, T. Paananen, P.-C. Bürkner, A. Vehtari, "Detecting and
    diagnosing prior and likelihood sensitivity with power-scaling",
    Statistics and Computing 34, 57 (2024).
"""

import math
from dataclasses import dataclass, field

import numpy as np

from .posterior_draws import atomless_sites
from .to_arviz import SAMPLE_DIMS, flat_draws, to_datatree

__all__ = [
    "KHAT_GOOD",
    "KHAT_OK",
    "MIN_ESS",
    "PSENSE_ALPHAS",
    "PSISDiagnostic",
    "PriorSensitivity",
    "khat_label",
    "prior_sensitivity",
    "psis_diagnostic",
    "psis_from_datatree",
    "psis_from_log_ratios",
]

#: Below this k-hat, importance sampling from ``q`` is reliable.
KHAT_GOOD = 0.5
#: Below this (and above :data:`KHAT_GOOD`) it is usable; above it unreliable.
KHAT_OK = 0.7

DEFAULT_ALPHAS = (0.5, 0.8, 1.25, 2.0)

#: Below this effective sample size of the smoothed weights (or 1% of the draws,
#: whichever is larger), importance-weighted estimates rest on a handful of draws.
MIN_ESS = 10

#: The power-scaling range of arviz-stats' ``psense`` (its default).
PSENSE_ALPHAS = (0.99, 1.01)


def _min_ess(num_draws):
    return max(MIN_ESS, 0.01 * num_draws)


def khat_label(khat):
    """``"good"`` (< 0.5), ``"ok"`` (< 0.7), ``"unreliable"`` or ``"undefined"`` (NaN)."""
    if khat is None or math.isnan(khat):
        return "undefined"
    return "good" if khat < KHAT_GOOD else "ok" if khat < KHAT_OK else "unreliable"


def _clean(v):
    """A JSON-ready value: floats (None when not finite), strings, nested dicts."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, str) or v is None:
        return v
    v = float(v)
    return v if math.isfinite(v) else None


def _logsumexp(a):
    m = np.max(a)
    return float(m + np.log(np.sum(np.exp(a - m))))


def _psis(log_ratios):
    """PSIS through arviz-stats: ``(normalized smoothed log weights, k-hat)`` of the weights ``exp(log_ratios)``."""
    from arviz_stats.base import array_stats

    a = np.asarray(log_ratios, dtype=float).reshape(-1)
    if np.ptp(a) == 0:  # identical ratios: uniform weights, nothing to fit
        return np.full(a.shape, -math.log(a.size)), float("nan")
    # arviz-stats' psislw smooths the log weights ``-input`` (its LOO convention: input = log-likelihood)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lw, khat = array_stats.psislw(-a, r_eff=1.0)
    return np.asarray(lw, dtype=float), float(khat)


def next_step(khat, ess, num_draws, fit_plug_in=None):
    """A plain next step for a PSIS result (None when the weights are usable)."""
    if khat_label(khat) in ("good", "ok") and ess >= _min_ess(num_draws):
        return None
    steps = []
    if fit_plug_in == "mean":
        steps.append("this fit used the posterior-mean plug-in, whose objective is not an ELBO: refit with "
                     "SQSELBO(plug_in='sample') before reading q as a posterior")
    steps.append("do not use importance-weighted (PSIS) estimates or q's own uncertainty as the Bayesian posterior; "
                 "judge the fit by held-out predictive checks instead (sqs_pyro.analysis.posterior_predictive: "
                 "RMSE or accuracy, interval coverage)")
    steps.append("to bring q closer: fewer compressed weights or a smaller network, more SVI steps, "
                 "several particles (SQSELBO(num_particles=...)), or a less extreme prior")
    return "; ".join(steps)


@dataclass
class PSISDiagnostic:
    """
    PSIS diagnostic of a variational approximation (see the module docstring).

    ``khat``: Pareto shape of the ratios' tail; ``label``: good / ok / unreliable;
    ``ess``: effective sample size of the smoothed weights; ``elbo``:
    ``mean(log r)`` (a Monte Carlo ELBO with the exact KL, valid whatever the
    weights); ``log_evidence_is``: ``log mean exp(log r)`` (meaningless when
    the weights are degenerate). ``reliable`` is False when ``k-hat > 0.7`` or
    the ESS is tiny, and ``advice`` then gives a plain next step.
    """

    khat: float
    ess: float
    num_draws: int
    elbo: float
    log_evidence_is: float
    log_ratios: np.ndarray = field(repr=False)
    log_weights: np.ndarray = field(repr=False)
    terms: dict = field(default_factory=dict, repr=False)
    fit_plug_in: str = None

    @property
    def label(self):
        return khat_label(self.khat)

    @property
    def reliable(self):
        """False when the importance weights are degenerate (``k-hat > 0.7`` or a tiny ESS)."""
        return self.label in ("good", "ok") and self.ess >= _min_ess(self.num_draws)

    @property
    def advice(self):
        """A plain next step when the weights are degenerate, else None."""
        return next_step(self.khat, self.ess, self.num_draws, self.fit_plug_in)

    def summary(self):
        """A few lines for people: the verdict first, numbers after, the next step when there is one."""
        ess = f"{self.ess:.1f} of {self.num_draws} draws"
        if self.reliable:
            head = f"PSIS k-hat {self.khat:.2f} ({self.label}); effective sample size {ess}."
        else:
            khat = "undefined" if math.isnan(self.khat) else (f"{self.khat:.2f}" if self.khat < 1.5 else "> 1.5")
            head = (f"DEGENERATE importance weights (k-hat {khat}, effective sample size {ess}): q is far from the "
                    "posterior where it matters; importance-weighted estimates and log p(y) are not usable.")
        lines = [head, f"Monte Carlo ELBO (exact KL, likelihood at draws): {self.elbo:.6g}."]
        if self.advice:
            lines.append("Next step: " + self.advice + ".")
        return "\n".join(lines)

    def __str__(self):
        return self.summary()

    def to_dict(self):
        """JSON-ready summary (no per-draw arrays; non-finite numbers become None)."""
        return {"khat": _clean(self.khat), "label": self.label, "ess": _clean(self.ess), "num_draws": self.num_draws,
                "reliable": self.reliable, "advice": self.advice, "elbo": _clean(self.elbo),
                "log_evidence_is": _clean(self.log_evidence_is) if self.reliable else None,
                "terms_mean": {k: _clean(np.mean(v)) for k, v in self.terms.items()}}


def psis_from_log_ratios(log_ratios, terms=None, fit_plug_in=None):
    """
    :class:`PSISDiagnostic` of log importance ratios ``log p - log q`` at draws from ``q``.

    :param log_ratios: 1-d array, one value per draw (at least ~20 draws; 100+ advised).
    :param dict terms: optional per-draw components to keep (e.g. ``log_likelihood``).
    :param str fit_plug_in: the plug-in the fit used (``guide.fit_plug_in``), for the advice.
    """
    a = np.asarray(log_ratios, dtype=float).reshape(-1)
    if a.size < 5:
        raise ValueError(f"PSIS needs more draws, got {a.size}")
    if not np.all(np.isfinite(a)):
        raise ValueError("non-finite log ratios: q puts mass where the target has none (check the prior's spike)")
    lw, khat = _psis(a)
    w = np.exp(lw)
    return PSISDiagnostic(
        khat=khat, ess=float(1.0 / np.sum(w**2)), num_draws=int(a.size), elbo=float(a.mean()),
        log_evidence_is=_logsumexp(a) - math.log(a.size), log_ratios=a, log_weights=lw,
        terms={k: np.asarray(v, dtype=float) for k, v in (terms or {}).items()}, fit_plug_in=fit_plug_in,
    )


def psis_from_datatree(tree, num_data=None, fit_plug_in=None):
    """
    :class:`PSISDiagnostic` from a :func:`~sqs_pyro.analysis.to_arviz.to_datatree`
    tree built with ``data``: its ``sample_stats`` (``log_prior``, ``log_q``) and
    ``log_likelihood`` groups. The batch log-likelihood is scaled by
    ``num_data / batch size`` when ``num_data`` is given.
    """
    stats = tree["sample_stats"]
    if "log_likelihood" not in tree.children:
        raise ValueError("the tree has no log_likelihood group: build it with to_datatree(..., data=(x, y))")
    ll = tree["log_likelihood"]["obs"]
    obs_dims = [d for d in ll.dims if d not in SAMPLE_DIMS]
    n_obs = int(np.prod([ll.sizes[d] for d in obs_dims]))
    ll_sum = flat_draws(ll.sum(obs_dims)).astype(float)
    scale = 1.0 if num_data is None else float(num_data) / n_obs
    log_prior = flat_draws(stats["log_prior"]).astype(float)
    log_q = flat_draws(stats["log_q"]).astype(float)
    ratios = scale * ll_sum + log_prior - log_q
    return psis_from_log_ratios(ratios, {"log_likelihood": scale * ll_sum, "log_prior": log_prior, "log_q": log_q},
                                fit_plug_in=fit_plug_in)


def _check_spikes(model):
    bad = atomless_sites(model)
    if bad:
        raise ValueError(
            f"sites {bad[:5]} have a prior without a spike (spike=False): q has an atom at 0 that the prior lacks, "
            "so log p - log q is undefined; the PSIS and power-scaling diagnostics need the spike-and-slab prior"
        )


def psis_diagnostic(model, guide, x, y, *, num_draws=200, num_data=None, seed=0, batch_size=1024, tau=None):
    """
    PSIS k-hat of ``log p(theta, y) - log q(theta)`` for a fitted model (module docstring).

    :param x, y: the training data (all of it for the exact log joint).
    :param int num_data: the size ``n`` of the training set; defaults to
        ``model.num_data``. When ``len(y) < n`` the log-likelihood is scaled by
        ``n / len(y)`` (a noisy estimate of the full log-likelihood).
    :param int num_draws: draws from ``q`` (200 is a sensible minimum for k-hat).
    :rtype: PSISDiagnostic
    """
    _check_spikes(model)
    n = model.num_data if num_data is None else int(num_data)
    tree = to_datatree(model, guide, num_draws=num_draws, weights_per_layer=1, data=(x, y), seed=seed,
                       batch_size=batch_size, tau=tau, predictive=False)
    return psis_from_datatree(tree, num_data=n, fit_plug_in=getattr(guide, "fit_plug_in", None))


@dataclass
class PriorSensitivity:
    """
    Power-scaling prior sensitivity (module docstring).

    ``summaries[alpha][summary][layer]``: importance-weighted posterior means
    (``alpha = 1`` is the plain mean over draws); ``khat[alpha]`` and
    ``ess[alpha]`` of the weights of each ``alpha``; ``psense[summary][layer]``:
    arviz-stats' local prior sensitivity (and ``psense_likelihood`` when the
    tree has a likelihood), or ``{"withheld": reason}`` when the power-scaling
    weights at ``alpha`` in :data:`PSENSE_ALPHAS` are degenerate
    (``psense_khat`` holds their k-hat).
    """

    alphas: list
    summaries: dict
    khat: dict
    ess: dict
    psense: dict
    psense_likelihood: dict
    num_draws: int
    psense_khat: dict = field(default_factory=dict)

    @property
    def reliable(self):
        """``alpha -> bool``: are the re-weighted summaries at that ``alpha`` usable?"""
        return {a: a == 1.0 or (khat_label(self.khat[a]) in ("good", "ok") and self.ess[a] >= _min_ess(self.num_draws))
                for a in self.alphas}

    def summary(self):
        """A few lines for people: which alphas and which psense values can be read."""
        bad = [a for a, ok in self.reliable.items() if not ok]
        lines = []
        if bad:
            lines.append(f"Power-scaling weights are degenerate at alpha = {', '.join(f'{a:g}' for a in bad)} "
                         "(k-hat > 0.7 or tiny ESS): the re-weighted summaries there are not estimates.")
        for label, ps in (("prior", self.psense), ("likelihood", self.psense_likelihood)):
            if "withheld" in ps:
                lines.append(f"psense ({label}) withheld: {ps['withheld']}")
            elif ps:
                values = "; ".join(f"{s} " + ", ".join(f"{layer} {v:.3f}" for layer, v in ps[s].items())
                                   for s in _SUMMARIES if s in ps)
                lines.append(f"psense ({label}; > 0.05: visibly shaped by the {label}): {values}")
        if not lines:
            lines.append("Power-scaling weights are usable at every alpha; psense > 0.05 flags a summary the prior "
                         "visibly shapes.")
        return "\n".join(lines)

    def to_dict(self):
        return {"alphas": list(self.alphas), "num_draws": self.num_draws, "khat": _clean(self.khat),
                "label": {str(a): khat_label(k) for a, k in self.khat.items()}, "ess": _clean(self.ess),
                "reliable": {str(a): ok for a, ok in self.reliable.items()},
                "summaries": _clean(self.summaries), "psense": _clean(self.psense),
                "psense_likelihood": _clean(self.psense_likelihood), "psense_khat": _clean(self.psense_khat)}


_SUMMARIES = ("sparsity", "bits", "weight_rms")


def _degenerate(log_scale, num_draws):
    """Worst k-hat of the power-scaling weights ``(alpha - 1) * log_scale`` over :data:`PSENSE_ALPHAS`, and a verdict."""
    worst, bad = float("nan"), False
    for alpha in PSENSE_ALPHAS:
        lw, k = _psis((alpha - 1.0) * log_scale)
        ess = float(1.0 / np.sum(np.exp(lw) ** 2))
        if not math.isnan(k):
            worst = k if math.isnan(worst) else max(worst, k)
        bad = bad or khat_label(k) == "unreliable" or ess < _min_ess(num_draws)
    return worst, bad


def prior_sensitivity(model=None, guide=None, *, tree=None, data=None, alphas=DEFAULT_ALPHAS, num_draws=200, seed=0,
                      tau=None):
    """
    Power-scaling sensitivity of per-layer posterior summaries to the prior.

    Give either a fitted ``model`` and ``guide`` (draws are taken here; ``data``
    adds the likelihood sensitivity) or a ``tree`` from
    :func:`~sqs_pyro.analysis.to_arviz.to_datatree`. Summaries per layer:
    ``sparsity`` (fraction of exact zeros of a draw), ``bits`` (the paper's
    bits per weight, ``log2 K`` x nonzero fraction) and ``weight_rms`` (root mean
    square of the drawn subset of the layer's weights, a scale summary).
    arviz-stats' ``psense`` is withheld (``{"withheld": reason}``) when its
    power-scaling weights are degenerate.

    :rtype: PriorSensitivity
    """
    import arviz_stats
    from arviz_base import from_dict


    if tree is None:
        if model is None or guide is None:
            raise ValueError("give a model and guide, or a tree")

        tree = to_datatree(model, guide, num_draws=num_draws, weights_per_layer=64, data=data, seed=seed, tau=tau,
                           predictive=False)
    if model is not None:
        _check_spikes(model)
    post = tree["posterior"]
    layers = [str(v) for v in post["layer"].values]
    theta = flat_draws(post["theta"])
    weight_layer = np.asarray(tree["variational"]["weight_layer"].values).astype(str)
    rms = np.stack([np.sqrt((theta[:, weight_layer == name] ** 2).mean(-1))
                    for name in layers], axis=-1)
    values = {"sparsity": flat_draws(post["sparsity"]), "bits": flat_draws(post["bits"]), "weight_rms": rms}
    log_prior = flat_draws(tree["sample_stats"]["log_prior"]).astype(float)
    n = int(log_prior.size)
    summaries, khat, ess = {}, {}, {}
    for alpha in sorted({1.0, *map(float, alphas)}):
        if alpha == 1.0:
            w = np.full(log_prior.shape, 1.0 / n)
            khat[alpha], ess[alpha] = float("nan"), float(n)
        else:
            lw, k = _psis((alpha - 1.0) * log_prior)
            w = np.exp(lw)
            khat[alpha], ess[alpha] = k, float(1.0 / np.sum(w**2))
        summaries[alpha] = {s: dict(zip(layers, (w[:, None] * values[s]).sum(0).tolist())) for s in _SUMMARIES}
    groups = {"posterior": {s: values[s][None] for s in _SUMMARIES}, "log_prior": {"total": log_prior[None]}}
    scales = {"prior": log_prior}
    has_lik = "log_likelihood" in tree.children
    if has_lik:
        ll = tree["log_likelihood"]["obs"]
        ll_draws = flat_draws(ll)
        groups["log_likelihood"] = {"obs": ll_draws[None]}
        scales["likelihood"] = ll_draws.reshape(n, -1).sum(-1)
    small = from_dict(groups, sample_dims=list(SAMPLE_DIMS), dims={s: ["layer"] for s in _SUMMARIES},
                      coords={"layer": layers})
    psense_khat = {}

    def sense(group):
        worst, bad = _degenerate(scales[group], n)
        psense_khat[group] = worst
        if bad:
            return {"withheld": (
                f"the power-scaling weights at alpha in {list(PSENSE_ALPHAS)} are degenerate (k-hat "
                f"{'undefined' if math.isnan(worst) else f'{worst:.2f}'}; > 0.7 or a tiny ESS): the {group} term "
                "varies so much across the draws of q that psense would measure the degeneracy, not the "
                f"{group}'s influence. Read the held-out predictive checks instead, or reduce the number of "
                "compressed weights.")}
        try:
            with np.errstate(divide="ignore", invalid="ignore"):
                ds = arviz_stats.psense(small, group=group, sample_dims=list(SAMPLE_DIMS))
        except (ValueError, FloatingPointError) as e:  # degenerate weights (e.g. a constant log prior)
            return {"withheld": str(e)}
        return {s: dict(zip(layers, np.asarray(ds[s].values, dtype=float).tolist())) for s in _SUMMARIES}

    return PriorSensitivity(
        alphas=list(summaries), summaries=summaries, khat=khat, ess=ess, psense=sense("prior"),
        psense_likelihood=sense("likelihood") if has_lik else {}, num_draws=n, psense_khat=psense_khat,
    )
