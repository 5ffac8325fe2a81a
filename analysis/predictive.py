r"""
The posterior predictive of a fitted SQS model: draws, intervals, coverage.

:func:`posterior_predictive` runs :class:`pyro.infer.Predictive` on the model
and its :class:`~sqs_pyro.guides.SQSGuide` (exact draws of whole networks:
exact zeros from the spike, a component from ``phi``, a value from its
Gaussian; vectorised over draws with ``parallel=True``) and summarizes
``p(y* | x*, D) = E_q p(y* | x*, theta)``:

regression (:class:`~sqs_pyro.models.Gaussian` likelihood)
    the predictive mean (``E_q f(x*)``), equal-tailed intervals of ``y*`` at
    level ``prob`` (observation noise included) and of the mean function
    ``f(x*)`` (the spread of ``q`` alone); with ``y``: RMSE of the predictive
    mean, the coverage of the ``y*`` intervals (the share of ``y`` inside;
    calibrated intervals cover about ``prob``), their mean width, and the
    log pointwise predictive density ``sum_j log mean_s p(y_j | x_j, theta_s)``.
classification (:class:`~sqs_pyro.models.Categorical`)
    the predictive class probabilities (averaged over draws), the credible
    *prediction set* of each example (the most probable classes until their
    predictive probability reaches ``prob``); with ``y``: accuracy of the
    most probable class, the coverage of the sets and their mean size, the
    log pointwise predictive density.

Intervals from a fit made with the posterior-mean plug-in are not calibrated:
such a fit gives a :class:`~sqs_pyro.elbo.MeanPlugInWarning`. Called inside
``with sqs_pyro.handlers.CodebookDraws():``, the draws are the compressed
networks (every weight 0 or exactly a codebook value) instead.

Example::

    >>> import torch, pyro
    >>> from sqs_pyro import SQSELBO
    >>> from sqs_pyro.models import SQSModel, Gaussian
    >>> from sqs_pyro.guides import SQSGuide
    >>> x = torch.randn(40, 3); y = x[:, 0] + 0.1 * torch.randn(40)
    >>> net = torch.nn.Linear(3, 1)
    >>> model = SQSModel(net, {"_default": {"num_components": 2}}, Gaussian(scale=0.1), num_data=40)
    >>> guide = SQSGuide(model)
    >>> pp = posterior_predictive(model, guide, x, y, num_samples=50)
    >>> pp.lower.shape, pp.draws.shape
    ((40,), (50, 40))
    >>> 0.0 <= pp.coverage <= 1.0
    True
"""

import math
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch

from sqs_pyro.elbo import warn_if_mean_plug_in
from sqs_pyro.models import Categorical, Gaussian
from sqs_pyro.models.sqs_model import _logits

from .posterior_draws import eval_mode

__all__ = ["PosteriorPredictive", "posterior_predictive"]


@dataclass
class PosteriorPredictive:
    """
    Summaries of the posterior predictive at ``x*`` (module docstring).
    Arrays are numpy; metrics that need ``y`` are None without it.

    ``draws`` (S, n): replicates ``y* ~ p(y | x*, theta_s)``; ``mean``: the
    predictive mean (regression) or class probabilities (n, C) (classification);
    ``lower``/``upper``: the ``prob`` intervals of ``y*`` (regression);
    ``f_lower``/``f_upper``: those of the mean function; ``sets`` (n, C) bool:
    the prediction sets (classification); ``weights``: ``name -> (S, *shape)``
    tensor of the drawn compressed weights (with ``return_weights=True``).
    """

    kind: str
    prob: float
    num_samples: int
    draws: np.ndarray = field(repr=False)
    mean: np.ndarray = field(repr=False)
    lower: np.ndarray = field(default=None, repr=False)
    upper: np.ndarray = field(default=None, repr=False)
    f_lower: np.ndarray = field(default=None, repr=False)
    f_upper: np.ndarray = field(default=None, repr=False)
    sets: np.ndarray = field(default=None, repr=False)
    rmse: float = None
    accuracy: float = None
    coverage: float = None
    width: float = None
    set_size: float = None
    lppd: float = None
    fit_plug_in: str = None
    weights: dict = field(default=None, repr=False)

    def to_dict(self):
        """The scalar summaries, JSON-ready."""
        keys = ("kind", "prob", "num_samples", "rmse", "accuracy", "coverage", "width", "set_size", "lppd",
                "fit_plug_in")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    def summary(self):
        """One line for people."""
        parts = [f"{self.kind}, {self.num_samples} draws"]
        if self.rmse is not None:
            parts.append(f"RMSE {self.rmse:.4g}")
        if self.accuracy is not None:
            parts.append(f"accuracy {self.accuracy:.4g}")
        if self.coverage is not None:
            what = "interval" if self.kind == "regression" else "prediction-set"
            parts.append(f"{self.prob:.0%} {what} coverage {self.coverage:.3f}")
        if self.width is not None:
            parts.append(f"mean width {self.width:.4g}")
        if self.set_size is not None:
            parts.append(f"mean set size {self.set_size:.3g}")
        if self.lppd is not None:
            parts.append(f"lppd {self.lppd:.5g}")
        if self.fit_plug_in == "mean":
            parts.append("(mean plug-in fit: intervals not calibrated)")
        return "; ".join(parts)


def _kind(model):
    if isinstance(model.likelihood, Gaussian):
        return "regression"
    if isinstance(model.likelihood, Categorical):
        return "classification"
    raise ValueError(f"posterior_predictive handles Gaussian and Categorical likelihoods, not {model.likelihood!r}")


def _logmeanexp(a, axis=0):
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.mean(np.exp(a - m), axis=axis))


@torch.no_grad()
def posterior_predictive(model, guide, x, y=None, *, num_samples=200, prob=0.9, parallel=True, seed=0,
                         return_weights=False):
    """
    Posterior predictive draws and summaries at ``x`` (see the module docstring).

    :param model: an :class:`~sqs_pyro.models.SQSModel` with a
        :class:`~sqs_pyro.models.Gaussian` or :class:`~sqs_pyro.models.Categorical` likelihood.
    :param guide: its fitted :class:`~sqs_pyro.guides.SQSGuide`.
    :param x: inputs; ``y`` (optional) the observed targets, for coverage and errors.
    :param int num_samples: networks drawn from ``q``.
    :param float prob: level of the intervals / prediction sets.
    :param bool parallel: vectorise over the draws (``Predictive(..., parallel=True)``).
    :param int seed: seeds the draws (the global RNG is restored afterwards).
    :param bool return_weights: keep the drawn compressed weights (``result.weights``).
    :rtype: PosteriorPredictive
    """
    if not 0.0 < prob < 1.0:
        raise ValueError(f"prob must lie in (0, 1), got {prob}")
    kind = _kind(model)
    warn_if_mean_plug_in(guide)
    sites = list(model.sites)
    with torch.random.fork_rng(), eval_mode(model.net):
        torch.manual_seed(int(seed))
        out = pyro.infer.Predictive(model, guide=guide, num_samples=int(num_samples), parallel=parallel,
                                    return_sites=sites + ["obs", "_RETURN"])(x)
    s = int(num_samples)
    draws = out["obs"].reshape(s, -1).double().cpu().numpy()
    output = _logits(out["_RETURN"]).reshape((s,) + tuple(_logits(out["_RETURN"]).shape[-2:])).double()
    result = PosteriorPredictive(kind=kind, prob=float(prob), num_samples=s, draws=draws, mean=None,
                                 fit_plug_in=getattr(guide, "fit_plug_in", None))
    if return_weights:
        result.weights = {n: out[n].reshape((s,) + tuple(model.sites[n].shape)) for n in sites}
    tail = (1.0 - prob) / 2
    yv = None if y is None else torch.as_tensor(y).reshape(-1).double().cpu().numpy()
    if kind == "regression":
        f = output.reshape(s, -1).cpu().numpy()
        result.mean = f.mean(0)
        result.lower, result.upper = np.quantile(draws, [tail, 1 - tail], axis=0)
        result.f_lower, result.f_upper = np.quantile(f, [tail, 1 - tail], axis=0)
        if yv is not None:
            scale = model.likelihood.scale
            if model.likelihood.learn_scale:
                scale = float(pyro.param("obs_scale").detach())
            result.rmse = float(np.sqrt(np.mean((result.mean - yv) ** 2)))
            result.coverage = float(np.mean((yv >= result.lower) & (yv <= result.upper)))
            result.width = float(np.mean(result.upper - result.lower))
            log_lik = -0.5 * ((yv - f) / scale) ** 2 - math.log(scale) - 0.5 * math.log(2 * math.pi)
            result.lppd = float(_logmeanexp(log_lik).sum())
    else:
        log_p = torch.log_softmax(output, -1).cpu().numpy()  # (S, n, C)
        probs = np.exp(log_p).mean(0)
        result.mean = probs
        order = np.argsort(-probs, axis=-1)
        sorted_p = np.take_along_axis(probs, order, -1)
        before = np.cumsum(sorted_p, -1) - sorted_p  # mass of the classes ranked above
        keep_sorted = before < prob
        sets = np.zeros_like(keep_sorted)
        np.put_along_axis(sets, order, keep_sorted, -1)
        result.sets = sets
        result.set_size = float(sets.sum(-1).mean())
        if yv is not None:
            yi = yv.astype(int)
            result.accuracy = float(np.mean(probs.argmax(-1) == yi))
            result.coverage = float(np.mean(sets[np.arange(len(yi)), yi]))
            picked = np.take_along_axis(log_p, yi[None, :, None].repeat(s, 0), -1)[..., 0]
            result.lppd = float(_logmeanexp(picked).sum())
    return result
