"""
Posterior analysis: ArviZ conversion, plots, VI diagnostics, the consistency simulation, reports.

Submodules are imported on first use, so ``import sqs_pyro.analysis`` stays
fast (matplotlib, xarray and ArviZ load only when needed):

- :mod:`~sqs_pyro.analysis.to_arviz`: :func:`to_datatree`, :func:`layer_summary`;
- :mod:`~sqs_pyro.analysis.posterior_draws`: exact draws of whole networks and
  mixed-measure log densities;
- :mod:`~sqs_pyro.analysis.diagnostics`: :func:`psis_diagnostic` (PSIS k-hat),
  :func:`prior_sensitivity` (power scaling);
- :mod:`~sqs_pyro.analysis.predictive`: :func:`posterior_predictive`
  (intervals, prediction sets, coverage);
- :mod:`~sqs_pyro.analysis.plots`: ``plot_*`` figures (PNG + SVG);
- :mod:`~sqs_pyro.analysis.report`: :func:`write_report` (self-contained HTML);
- :mod:`~sqs_pyro.analysis.run_dir`: :class:`RunDir`, reading a run directory;
- :mod:`~sqs_pyro.analysis.cli`: the ``report`` and ``plot`` subcommands.

Example::

    >>> from sqs_pyro.analysis import to_datatree, write_report  # doctest: +SKIP
"""

import importlib

_EXPORTS = {
    "to_datatree": "to_arviz",
    "layer_summary": "to_arviz",
    "iter_draws": "posterior_draws",
    "log_densities": "posterior_draws",
    "psis_diagnostic": "diagnostics",
    "psis_from_datatree": "diagnostics",
    "psis_from_log_ratios": "diagnostics",
    "prior_sensitivity": "diagnostics",
    "khat_label": "diagnostics",
    "posterior_predictive": "predictive",
    "PosteriorPredictive": "predictive",
    "plot_weight_histogram": "plots",
    "plot_gate_histograms": "plots",
    "plot_codebook_usage": "plots",
    "plot_layer_sizes": "plots",
    "plot_elbo_trace": "plots",
    "plot_accuracy_vs_k": "plots",
    "plot_window_errors": "plots",
    "plot_predictive": "plots",
    "save_figure": "plots",
    "write_report": "report",
    "RunDir": "run_dir",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
