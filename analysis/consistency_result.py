r"""
The summary of a consistency simulation (:mod:`sqs_pyro.analysis.consistency`):
per-``n`` means with 95% bands over replicate seeds, log-log slopes with their
uncertainty, the convergence record of every run, the tables and the figure.

**How the uncertainty is computed.** A seed draws its own teacher, data and
students, so seeds are independent replicates; the ``n`` of one seed share a
teacher and are not. Hence:

- per ``n``: the geometric mean of a metric over the converged runs and the
  95% t-interval of the mean of ``log metric``, exponentiated (errors are
  compared on the log scale, as the slope is);
- the slope: one least-squares slope of ``log metric`` on ``log n`` per seed,
  then their mean with the 95% t-interval (``t_{0.975, S-1} sd / sqrt(S)``).
  The slope of all seed-level points pooled is reported beside it.

Runs that did not converge are left out of every mean and slope; the tables
count them (``converged k/S``) and list them.

Example::

    >>> [round(v, 2) for v in mean_band([0.01, 0.02, 0.04])]   # geometric mean, 95% band
    [0.02, 0.0, 0.11]
    >>> t_quantile(3)
    3.182
"""

import math
import pathlib
from dataclasses import dataclass, field

import numpy as np

from .consistency_config import ConsistencyConfig

__all__ = ["PREDICTORS", "ConsistencyResult", "mean_band", "seed_slopes", "t_quantile"]

#: The predictors whose errors are fitted against ``n`` on a log-log scale.
PREDICTORS = ("anchor", "posterior_mean", "greedy", "posterior")
LABELS = {
    "anchor": "pretrained (dense)",
    "posterior_mean": "posterior mean",
    "greedy": "greedy export",
    "posterior": "E_q (posterior draws)",
}
METRICS = ("excess_risk", "hellinger2")

#: Marks the end of the generated part of ``consistency.md``; text after it is written by hand.
HAND_WRITTEN = "<!-- generated above; written by hand below -->"

_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t_quantile(df):
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (tabulated; 1.96 beyond 30)."""
    if df < 1:
        return float("nan")
    if df in _T975:
        return _T975[df]
    keys = sorted(_T975)
    if df > keys[-1]:
        return 1.96
    lo = max(k for k in keys if k < df)
    hi = min(k for k in keys if k > df)
    return _T975[lo] + (_T975[hi] - _T975[lo]) * (df - lo) / (hi - lo)


def mean_band(values, log=True):
    """
    ``(mean, low, high)``: the (geometric, with ``log``) mean of ``values`` and its
    95% t-interval; the band is NaN with fewer than two values.

    Example::

        >>> [round(v, 2) for v in mean_band([1.0, 4.0], log=False)]   # arithmetic mean
        [2.5, -16.56, 21.56]
    """
    v = np.asarray([x for x in values if x is not None and math.isfinite(x) and (x > 0 or not log)], float)
    if v.size == 0:
        return (float("nan"),) * 3
    z = np.log(v) if log else v
    m = float(z.mean())
    if v.size < 2:
        lo = hi = float("nan")
    else:
        h = t_quantile(v.size - 1) * float(z.std(ddof=1)) / math.sqrt(v.size)
        lo, hi = m - h, m + h
    f = np.exp if log else (lambda x: x)
    return float(f(m)), float(f(lo)), float(f(hi))


def _slope(ns, values):
    ns, values = np.asarray(ns, float), np.asarray(values, float)
    ok = np.isfinite(values) & (values > 0)
    if ok.sum() < 2 or len(set(ns[ok])) < 2:
        return float("nan")
    return float(np.polyfit(np.log(ns[ok]), np.log(values[ok]), 1)[0])


def seed_slopes(runs, metric, predictor):
    """``{seed: slope}``: the log-log slope of ``metric`` of ``predictor`` against ``n`` of each seed's runs."""
    by_seed = {}
    for r in runs:
        by_seed.setdefault(r["seed"], []).append((r["n"], r[metric][predictor]))
    return {s: _slope(*zip(*pts)) for s, pts in sorted(by_seed.items())}


def _fmt(v, digits=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-2 or abs(v) >= 1e3 else f"{v:.{digits}f}"
    return str(v)


def _band(mlh, digits=3):
    m, lo, hi = mlh
    if not math.isfinite(lo):
        return _fmt(m, digits)
    return f"{_fmt(m, digits)} [{_fmt(lo, 2)}, {_fmt(hi, 2)}]"


@dataclass
class ConsistencyResult:
    """
    Everything the simulation measured: :attr:`runs` (one row per seed and
    ``n`` of the grid), :attr:`ablations` (rows at the largest ``n``), the
    teachers (per seed), the summaries derived from them, and
    :attr:`provenance` (commit, command, versions, machine; filled in by the CLI).
    """

    config: object
    teachers: dict
    runs: list
    ablations: list
    wall_time_s: float
    provenance: dict = field(default_factory=dict)

    @classmethod
    def from_runs(cls, config, teachers, rows, wall_time_s, provenance=None):
        runs = sorted((r for r in rows if r["setting"] == "default"), key=lambda r: (r["seed"], r["n"]))
        ablations = sorted((r for r in rows if r["setting"] != "default"), key=lambda r: (r["setting"], r["seed"]))
        return cls(config, teachers, runs, ablations, wall_time_s, dict(provenance or {}))

    # -- summaries (derived, never stored separately) --------------------------------------------
    @property
    def converged_runs(self):
        return [r for r in self.runs if r["fit"]["converged"]]

    @property
    def unconverged(self):
        """``(seed, n, setting)`` of every run that hit its step cap before the ELBO stopped improving."""
        return [(r["seed"], r["n"], r["setting"]) for r in self.runs + self.ablations if not r["fit"]["converged"]]

    @property
    def slopes(self):
        """``"metric.predictor" -> {"mean", "low", "high", "per_seed", "pooled"}`` over converged runs."""
        runs, out = self.converged_runs, {}
        for m in METRICS:
            for p in PREDICTORS:
                per_seed = seed_slopes(runs, m, p)
                mean, lo, hi = mean_band(list(per_seed.values()), log=False)
                pooled = _slope([r["n"] for r in runs], [r[m][p] for r in runs])
                out[f"{m}.{p}"] = {"mean": mean, "low": lo, "high": hi, "pooled": pooled,
                                   "per_seed": {str(k): v for k, v in per_seed.items()}}
        return out

    @property
    def reference_slope(self):
        """The log-log slope of ``(log n) / n`` over the grid."""
        ns = list(self.config.sizes)
        return _slope(ns, [math.log(n) / n for n in ns])

    def summary(self):
        """One row per ``n``: bands over the converged seeds of every metric."""
        rows = []
        for n in self.config.sizes:
            all_runs = [r for r in self.runs if r["n"] == n]
            ok = [r for r in all_runs if r["fit"]["converged"]]
            row = {"n": n, "converged": len(ok), "runs": len(all_runs)}
            for m in METRICS:
                row[m] = {p: mean_band([r[m][p] for r in ok]) for p in PREDICTORS}
            row["ratio_posterior_mean_to_dense"] = mean_band(
                [r["excess_risk"]["posterior_mean"] / r["excess_risk"]["anchor"] for r in ok])
            row["sqs_wins"] = sum(r["excess_risk"]["posterior_mean"] < r["excess_risk"]["anchor"] for r in ok)
            for key in ("inclusion_relevant", "inclusion_irrelevant", "nonzero", "codebook_error_raw",
                        "codebook_error_scaled", "codebook_spurious_scaled"):
                row[key] = mean_band([r[key] for r in ok], log=False)
            row["steps_median"] = float(np.median([r["fit"]["steps"] for r in all_runs])) if all_runs else float("nan")
            rows.append(row)
        return rows

    # -- serialization ---------------------------------------------------------------------------
    def to_dict(self):
        """A JSON-serializable dict (the runs and the derived summaries)."""
        return {
            "provenance": self.provenance,
            "config": self.config.to_dict(),
            "teachers": self.teachers,
            "summary": self.summary(),
            "slopes": self.slopes,
            "reference_slope_log_n_over_n": self.reference_slope,
            "unconverged": [list(u) for u in self.unconverged],
            "runs": self.runs,
            "ablations": self.ablations,
            "wall_time_s": self.wall_time_s,
        }

    @classmethod
    def from_dict(cls, d):
        """The result that :meth:`to_dict` wrote (summaries are recomputed from the runs)."""
        def tuples(row):  # JSON turns the ELBO history's pairs into lists
            row = dict(row)
            row["fit"] = {**row["fit"], "elbo_history": [tuple(h) for h in row["fit"]["elbo_history"]]}
            return row

        return cls(ConsistencyConfig.from_dict(d["config"]), d["teachers"], [tuples(r) for r in d["runs"]],
                   [tuples(r) for r in d["ablations"]], d["wall_time_s"], d.get("provenance", {}))

    # -- tables ----------------------------------------------------------------------------------
    def to_markdown(self):
        """The tables: provenance, settings, the grid, the slopes, convergence, ablations, codebooks."""
        c, pv = self.config, self.provenance
        largest = max(c.sizes)
        S = len(c.seeds)
        lines = ["### Consistency simulation (method.md §9)", ""]
        if pv:
            lines += [
                f"Command: `{pv.get('command', '?')}`. Code: commit `{pv.get('commit', '?')}`"
                f"{' (with uncommitted changes)' if pv.get('dirty') else ' (clean tree)'}. "
                f"Machine: {pv.get('machine', '?')}. Versions: "
                + ", ".join(f"{k} {v}" for k, v in sorted(pv.get("versions", {}).items())) + ".",
                "",
            ]
        lines += [
            "Settings (every field of `ConsistencyConfig`): "
            + ", ".join(f"`{k}={v}`" for k, v in c.to_dict().items()) + ".",
            "",
            f"Student: widths {c.student_width}x2, K = {c.num_components}, lambda0 = {c.inclusion_prob:g}; "
            f"learned gates, anchors {c.anchors}, the proper ELBO (kl_weight = 1, plug_in = {c.plug_in}). "
            f"Each of the {S} seeds draws its own teacher, data and students. Convergence: every {c.check_every} "
            f"steps the full-data ELBO at {c.monitor_particles} fixed draws; when the mean of the last "
            f"{c.patience} checks beats the mean of the {c.patience} before by less than {c.elbo_tol:g} nat per "
            f"1000 examples, the learning rates decay by {c.lr_decay:g}; converged = that happens after "
            f"{c.max_decays} decays; step cap {c.steps_cap(min(c.sizes))}-{c.steps_cap(largest)} "
            f"(grows as n^{c.steps_growth:g}).",
            "",
            "Teachers: " + "; ".join(
                f"seed {s}: relevant {t['relevant_inputs']}, {t['nonzero']}/{t['weights']} nonzero, "
                f"signal std {t['signal_std']:.2f}" for s, t in self.teachers.items()) + ".",
            "",
            "Excess risk = E(f - f0)^2 (test MSE minus sigma^2); H2 = mean squared Hellinger distance. Each cell: "
            "geometric mean over the converged seeds [95% band]; P(incl) = probability under q that an input is "
            "used (mean over relevant / irrelevant inputs; arithmetic mean over seeds); SQS/dense = ratio of the "
            "posterior mean's excess risk to the dense network's (wins: seeds where SQS is closer to f0).",
            "",
            "| n | converged | excess risk: dense | post. mean | greedy | E_q | H2: post. mean | greedy "
            "| P(incl) relevant | irrelevant | nonzero | SQS/dense (wins) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.summary():
            e, h = r["excess_risk"], r["hellinger2"]
            lines.append(
                f"| {r['n']} | {r['converged']}/{r['runs']} | {_band(e['anchor'])} | {_band(e['posterior_mean'])} | "
                f"{_band(e['greedy'])} | {_band(e['posterior'])} | {_band(h['posterior_mean'])} | "
                f"{_band(h['greedy'])} | {_fmt(r['inclusion_relevant'][0])} | {_fmt(r['inclusion_irrelevant'][0])} | "
                f"{_fmt(r['nonzero'][0], 3)} | {_fmt(r['ratio_posterior_mean_to_dense'][0])} "
                f"({r['sqs_wins']}/{r['converged']}) |")
        slopes = self.slopes
        lines += ["", f"Log-log slopes against n: mean of the {S} per-seed least-squares slopes [95% t-interval]; "
                      f"pooled = one fit to all seed-level points; reference: (log n)/n has "
                      f"{self.reference_slope:.2f} over this grid.", "",
                  "| predictor | excess risk | pooled | H2 | pooled | per-seed slopes (excess risk) |",
                  "|---|---:|---:|---:|---:|---|"]
        for p in PREDICTORS:
            e, h = slopes[f"excess_risk.{p}"], slopes[f"hellinger2.{p}"]
            per = ", ".join(f"{v:.2f}" for v in e["per_seed"].values())
            lines.append(f"| {LABELS[p]} | {_slope_band(e)} | {e['pooled']:.2f} | {_slope_band(h)} | "
                         f"{h['pooled']:.2f} | {per} |")
        bad = self.unconverged
        lines += ["", "Not converged (left out of every mean and slope): "
                  + (", ".join(f"seed {s} n = {n} ({st})" for s, n, st in bad) if bad else "none") + ".", ""]
        lines += ["Convergence of every run (steps / cap, learning-rate decays, full-data ELBO at the start and "
                  "the end, nats):", "",
                  "| seed | n | setting | steps | decays | converged | ELBO start | ELBO end | seconds |",
                  "|---:|---:|---|---:|---:|---|---:|---:|---:|"]
        for r in self.runs + self.ablations:
            f = r["fit"]
            lines.append(f"| {r['seed']} | {r['n']} | {r['setting']} | {f['steps']}/{f['step_cap']} | "
                         f"{f['lr_decays']} | {'yes' if f['converged'] else '**no**'} | {f['elbo_start']:.1f} | "
                         f"{f['elbo']:.1f} | {r['seconds']:.0f} |")
        if self.ablations:
            seeds = sorted({r["seed"] for r in self.ablations})
            lines += ["", f"Ablations at n = {largest} (seeds {seeds}; geometric means, converged runs only):", "",
                      "| setting | converged | excess risk: post. mean | greedy | E_q | P(incl) relevant | irrelevant "
                      "| nonzero | codebook err (scaled) |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            default = [r for r in self.runs if r["n"] == largest and r["seed"] in seeds]
            names = ["default"] + list(dict.fromkeys(r["setting"] for r in self.ablations))
            for name in names:
                rows = default if name == "default" else [r for r in self.ablations if r["setting"] == name]
                ok = [r for r in rows if r["fit"]["converged"]]
                gm = lambda key, p: _fmt(mean_band([r[key][p] for r in ok])[0])  # noqa: E731
                am = lambda key: _fmt(mean_band([r[key] for r in ok], log=False)[0])  # noqa: E731
                lines.append(f"| {name} | {len(ok)}/{len(rows)} | {gm('excess_risk', 'posterior_mean')} | "
                             f"{gm('excess_risk', 'greedy')} | {gm('excess_risk', 'posterior')} | "
                             f"{am('inclusion_relevant')} | {am('inclusion_irrelevant')} | {am('nonzero')} | "
                             f"{am('codebook_error_scaled')} |")
        lines += ["", f"Codebook recovery at n = {largest}, per seed and layer: the teacher's levels, the codebook "
                      "values the greedy export uses, the distance from every level to the nearest value as they "
                      "are (raw) and after the best per-layer scale c (scaled), and from every used value to the "
                      "nearest level at that scale (spurious):", "",
                  "| seed | layer | teacher levels | student values | raw | c | scaled | spurious |",
                  "|---:|---:|---|---|---:|---:|---:|---:|"]
        for r in (r for r in self.runs if r["n"] == largest):
            levels = self.teachers[str(r["seed"])]["levels_per_layer"]
            for i, (used, rec) in enumerate(zip(r["codebook_used"], r["codebook_recovery"])):
                lines.append(f"| {r['seed']} | {i + 1} | {levels[i]} | {[round(u, 3) for u in used]} | "
                             f"{_fmt(rec['raw'])} | {_fmt(rec['scale'])} | {_fmt(rec['error'])} | "
                             f"{_fmt(rec['spurious'])} |")
        lines += ["", f"Wall time {self.wall_time_s:.0f} s ({c.workers} worker process(es))."]
        return "\n".join(lines) + "\n"

    # -- figure ----------------------------------------------------------------------------------
    def plot(self, path=None, formats=("png", "svg")):
        """
        The log-log figure: excess risk and squared Hellinger distance against
        ``n`` (geometric means over seeds with 95% bands, seed-level points
        faint) with a ``(log n) / n`` reference line, and the inputs' inclusion
        probabilities. Given ``path``, saves it in ``formats`` (``path`` with
        its suffix replaced). Returns the :class:`matplotlib.figure.Figure`.
        """
        from matplotlib.figure import Figure

        fig = Figure(figsize=(14, 4.2), layout="constrained")
        axes = fig.subplots(1, 3)
        summary = self.summary()
        ns = np.array([r["n"] for r in summary], float)
        runs = self.converged_runs
        slopes = self.slopes
        styles = {"anchor": ("#999999", "s", ":"), "posterior_mean": ("#1f77b4", "o", "-"),
                  "greedy": ("#d62728", "^", "-"), "posterior": ("#2ca02c", "v", "--")}
        for ax, metric, title in ((axes[0], "excess_risk", "excess risk  E(f - f0)^2"),
                                  (axes[1], "hellinger2", "squared Hellinger distance")):
            for p in PREDICTORS:
                if metric == "hellinger2" and p == "anchor":
                    continue
                color, marker, ls = styles[p]
                m, lo, hi = (np.array([r[metric][p][i] for r in summary]) for i in range(3))
                s = slopes[f"{metric}.{p}"]
                ax.plot(ns, m, color=color, marker=marker, ls=ls,
                        label=f"{LABELS[p]} (slope {s['mean']:.2f} [{s['low']:.2f}, {s['high']:.2f}])")
                if np.isfinite(lo).any():
                    ax.fill_between(ns, lo, hi, color=color, alpha=0.15, lw=0)
                ax.scatter([r["n"] for r in runs], [r[metric][p] for r in runs], color=color, s=6, alpha=0.35)
            g = np.array([r[metric]["greedy"][0] for r in summary])
            ref = np.log(ns) / ns
            if np.all(np.isfinite(g)) and np.all(g > 0):
                scale = np.exp(np.mean(np.log(g) - np.log(ref)))
                ax.plot(ns, scale * ref, color="black", lw=1, ls="-.", label="∝ (log n)/n")
            ax.set_xscale("log")
            ax.set_xlim(ns.min() / 1.3, ns.max() * 1.3)  # also when every value is NaN (no run converged)
            if any(np.isfinite(y).any() and (y > 0).any() for y in (line.get_ydata() for line in ax.lines)):
                ax.set_yscale("log")  # (not when every run failed to converge)
            ax.set_xlabel("n (training examples)")
            ax.set_title(f"{title}  ({len(self.config.seeds)} seeds, 95% bands)")
            ax.legend(fontsize=7)
            ax.grid(True, which="both", alpha=0.3)
        ax = axes[2]
        for key, color, marker, label in (("inclusion_relevant", "#1f77b4", "o", "relevant inputs"),
                                          ("inclusion_irrelevant", "#d62728", "s", "irrelevant inputs")):
            m, lo, hi = (np.array([r[key][i] for r in summary]) for i in range(3))
            ax.plot(ns, m, marker=marker, color=color, label=f"{label} (mean over seeds)")
            if np.isfinite(lo).any():
                ax.fill_between(ns, np.clip(lo, 0, 1), np.clip(hi, 0, 1), color=color, alpha=0.15, lw=0)
        ax.set_xscale("log")
        ax.set_xlim(ns.min() / 1.3, ns.max() * 1.3)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("n (training examples)")
        ax.set_title("P(input used) under q")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        if path is not None:
            path = pathlib.Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            for fmt in formats:
                fig.savefig(path.with_suffix("." + fmt), format=fmt, dpi=120, metadata=_figure_metadata(fmt))
        return fig


def _figure_metadata(fmt):
    # No creation date in the files: the same result gives the same bytes.
    return {"svg": {"Date": None}, "png": {"Software": None}}.get(fmt)


def _slope_band(s):
    if not math.isfinite(s["low"]):
        return f"{s['mean']:.2f}"
    return f"{s['mean']:.2f} [{s['low']:.2f}, {s['high']:.2f}]"

