"""
A self-contained HTML report of a compression run.

:func:`write_report` reads a run directory (see
:class:`~sqs_pyro.analysis.run_dir.RunDir`) and writes one HTML file with
every figure embedded (base64 PNG, or inline SVG) and the tables inline, so it
opens in a browser with no network and can be mailed or archived as it is:

- accuracy (base, greedy MAP export, Bayesian averaging, reloaded file) from ``results.json``;
- sizes per layer (paper CR, honest bits per weight, bytes) from the compressed file;
- the posterior per layer (gates, expected and exported sparsity, bits);
- the ELBO trace, weight histograms before/after, gates, codebook usage, bits and
  sparsity, window reconstruction errors, accuracy vs ``K`` for a folder of runs;
- VI diagnostics (PSIS k-hat, prior sensitivity) from ``diagnostics.json``, or
  computed on request (``diagnostics=True``).

Every missing or failing piece becomes a note in the report, never an error.

Example::

    >>> path = write_report("runs/default")  # doctest: +SKIP
    >>> path                                 # doctest: +SKIP
    'runs/default/report.html'
"""

import base64
import datetime
import html
import io
import json
import math
import os
import traceback

from . import plots
from .diagnostics import prior_sensitivity, psis_from_datatree
from .run_dir import DIAGNOSTICS_NAME, RunDir
from .to_arviz import layer_summary, to_datatree

__all__ = ["compute_diagnostics", "write_report"]

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;
line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em;margin:.6em 0;font-size:.9em}
.error{background:#fdecea;border-left:4px solid #d93025}
figure{margin:1em 0}figure img,figure svg{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
.good{color:#137333;font-weight:bold}.ok{color:#b06000;font-weight:bold}.unreliable{color:#c5221f;font-weight:bold}
"""


def _esc(x):
    return html.escape(str(x))


def _fmt(v, digits=4):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "∞" if v > 0 else "–"
        return f"{v:,.{digits}g}" if abs(v) >= 1e4 or abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return _esc(v)


def _table(header, rows):
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _note(text, error=False):
    return f'<div class="note{" error" if error else ""}">{text}</div>'


def _embed(fig, caption, fmt="png"):
    buf = io.BytesIO()
    if fmt == "svg":
        fig.savefig(buf, format="svg")
        svg = buf.getvalue().decode("utf-8")
        svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype
        body = svg
    else:
        fig.savefig(buf, format="png", dpi=110)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        body = f'<img alt="{_esc(caption)}" src="data:image/png;base64,{data}">'
    return f"<figure>{body}<figcaption>{_esc(caption)}</figcaption></figure>"


class _Report:
    def __init__(self, fmt):
        self.parts = []
        self.fmt = fmt

    def add(self, s):
        self.parts.append(s)

    def section(self, title):
        self.add(f"<h2>{_esc(title)}</h2>")

    def attempt(self, what, fn):
        """Run ``fn() -> html``; a failure becomes a note naming ``what``."""
        try:
            out = fn()
            if out:
                self.add(out)
        except Exception as e:  # noqa: BLE001 - a report shows what failed and goes on
            last = traceback.format_exception_only(type(e), e)[-1].strip()
            self.add(_note(f"Could not make {_esc(what)}: <code>{_esc(last)}</code>", error=True))

    def figure(self, what, make, caption):
        def fn():
            fig = make()
            return _embed(fig, caption, self.fmt)

        self.attempt(what, fn)


def _accuracy_html(results):
    sqs = results.get("sqs", {}) if isinstance(results.get("sqs"), dict) else {}
    rows = []

    def add(label, value):
        if value is not None:
            rows.append([_esc(label), _fmt(100 * value if isinstance(value, float) and value <= 1 else value, 4)])

    add("base network (full precision)", results.get("base_accuracy"))
    add("SQS greedy MAP (exported weights)", sqs.get("greedy_accuracy", results.get("greedy_accuracy")))
    add("SQS Bayesian averaging", sqs.get("bma_accuracy", results.get("bma_accuracy")))
    add("greedy, codebook rounded as stored", sqs.get("greedy_accuracy_rounded_codebook"))
    for kind, f in (sqs.get("files") or {}).items():
        add(f"reloaded from the {kind} file", f.get("reloaded_accuracy"))
    out = _table(["model", "test accuracy (%)"], rows) if rows else _note("results.json has no accuracies.")
    extra = []
    if sqs.get("sparsity") is not None:
        extra.append(f"sparsity of the export: {_fmt(100 * sqs['sparsity'], 4)}%")
    if isinstance(results.get("seconds"), dict):
        extra.append("time: " + ", ".join(f"{_esc(k)} {_fmt(float(v), 3)} s" for k, v in results["seconds"].items()))
    if isinstance(results.get("dataset"), dict):
        d = results["dataset"]
        extra.append("data: " + ", ".join(f"{_esc(k)}={_esc(v)}" for k, v in d.items() if not isinstance(v, (list, dict))))
    if extra:
        out += "<p>" + "<br>".join(extra) + "</p>"
    out += f"<details><summary>results.json</summary><pre>{_esc(json.dumps(results, indent=2, default=str))}</pre></details>"
    return out


def _sizes_html(rep, title):
    rows = []
    for l in rep.layers.values():
        rows.append([_esc(l.name), "×".join(map(str, l.shape)), _fmt(l.num_components), f"{100 * l.sparsity:.1f}%",
                     _fmt(l.paper_cr, 3), _fmt(l.bits_per_weight, 3), _fmt(l.stored_bytes), _fmt(l.dense_fp32_bytes),
                     _fmt(l.dense_fp16_bytes), _fmt(round(l.entropy_bound_bytes)), _esc(l.codes_encoding),
                     _esc(l.mask_encoding)])
    rows.append(["<b>compressed layers</b>", f"{rep.numel:,} weights", "", f"{100 * rep.sparsity:.1f}%",
                 _fmt(rep.paper_cr, 3), _fmt(rep.bits_per_weight, 3), _fmt(rep.stored_bytes), _fmt(rep.dense_fp32_bytes),
                 _fmt(rep.dense_fp16_bytes), _fmt(round(rep.entropy_bound_bytes)), "", ""])
    t = _table(["tensor", "shape", "K", "sparsity", "paper CR", "bits/weight", "stored B", "fp32 B", "fp16 B",
                "entropy bound B", "codes", "mask"], rows)
    summary = (f"<p><b>{_esc(title)}</b>: {_fmt(rep.file_bytes)} bytes on disk "
               f"({rep.num_dense_tensors} dense tensors, {_fmt(rep.dense_bytes)} B). Compressed layers: "
               f"{_fmt(rep.stored_bytes)} B vs {_fmt(rep.dense_fp32_bytes)} B fp32 (CR {_fmt(rep.cr_fp32, 3)}×) and "
               f"{_fmt(rep.dense_fp16_bytes)} B fp16 (CR {_fmt(rep.cr_fp16, 3)}×); the paper's CR counts "
               f"{_fmt(rep.paper_cr, 3)}×. Whole model: {_fmt(rep.model_fp32_bytes)} B fp32 → file "
               f"CR {_fmt(rep.model_cr, 3)}× (fp16: {_fmt(rep.model_cr_fp16, 3)}×).</p>")
    return summary + t


def _posterior_html(model, guide):
    data, coords, _ = layer_summary(model, guide)
    rows = []
    for i, name in enumerate(coords["layer"]):
        q = data["gate_quantile"][i]
        rows.append([_esc(name), _fmt(int(data["num_weights"][i])), _fmt(int(data["num_components"][i])),
                     _fmt(int(data["num_windows"][i])), _fmt(float(data["gate_mean"][i]), 3),
                     " / ".join(f"{v:.2f}" for v in q), f"{100 * data['expected_sparsity'][i]:.1f}%",
                     f"{100 * data['mask_sparsity'][i]:.1f}%", f"{100 * data['export_sparsity'][i]:.1f}%",
                     _fmt(float(data["export_bits"][i]), 3)])
    qs = "/".join(f"{q:g}" for q in coords["quantile"])
    return _table(["layer", "weights", "K", "windows", "mean γ", f"γ quantiles {qs}", "1 − mean γ", "masked",
                   "exported zeros", "paper bits/weight"], rows)


def _diagnostics_html(diag):
    out = []
    psis = diag.get("psis")
    if psis:
        label = psis.get("label", "undefined")
        reliable = psis.get("reliable", label in ("good", "ok"))
        if reliable:
            out.append(
                f"<p>PSIS k̂ of log p(θ, y) − log q(θ): <span class=\"{_esc(label)}\">{_fmt(psis.get('khat'), 3)} "
                f"({_esc(label)})</span> from {psis.get('num_draws')} exact draws of q; effective sample size "
                f"{_fmt(psis.get('ess'), 3)}; Monte Carlo ELBO {_fmt(psis.get('elbo'), 6)}, importance-sampling "
                f"log p(y) ≈ {_fmt(psis.get('log_evidence_is'), 6)}.</p>"
            )
        else:
            khat = psis.get("khat")
            shown = "undefined" if khat is None else (_fmt(khat, 3) if khat < 1.5 else "&gt; 1.5")
            out.append(
                f"<p><span class=\"unreliable\">Degenerate importance weights</span> (PSIS k̂ {shown}, effective "
                f"sample size {_fmt(psis.get('ess'), 3)} of {psis.get('num_draws')} exact draws of q): q is far from "
                "the posterior where it matters, and importance-weighted estimates (log p(y) among them) are not "
                f"reported. Monte Carlo ELBO (exact KL, likelihood at draws): {_fmt(psis.get('elbo'), 6)}.</p>"
            )
            if psis.get("advice"):
                out.append(f"<p>Next step: {_esc(psis['advice'])}.</p>")
        if psis.get("note"):
            out.append(f"<p>{_esc(psis['note'])}</p>")
        out.append(
            "<p>Read k̂ as: &lt; 0.5 good (q is close to the posterior), 0.5–0.7 usable with care, &gt; 0.7 "
            "unreliable (q misses posterior mass; its summaries are a compression device, not the exact "
            "posterior). See <code>sqs_pyro.analysis.diagnostics</code>.</p>")
    sens = diag.get("prior_sensitivity")
    if sens:
        alphas = [a for a in sens["summaries"]]
        layers = list(next(iter(sens["summaries"].values()))["sparsity"])
        rows = []
        for name in layers:
            for s in ("sparsity", "bits", "weight_rms"):
                row = [_esc(name), s] + [_fmt(sens["summaries"][a][s].get(name), 3) for a in alphas]
                ps = sens.get("psense", {}).get(s, {}) if isinstance(sens.get("psense", {}).get(s), dict) else {}
                row.append(_fmt(ps.get(name), 3))
                rows.append(row)
        rows.append(["<i>k̂ of the weights</i>", ""] + [_fmt(sens["khat"].get(a), 3) for a in alphas] + [""])
        rows.append(["<i>ESS</i>", ""] + [_fmt(sens["ess"].get(a), 3) for a in alphas] + [""])
        out.append("<p>Prior power-scaling: posterior means re-weighted by π(θ)<sup>α−1</sup>; the last column is "
                   "arviz-stats' local sensitivity (psense; &gt; 0.05: the prior visibly shapes that summary). "
                   "Columns whose weights have k̂ &gt; 0.7 are not estimates.</p>")
        withheld = sens.get("psense", {}).get("withheld") if isinstance(sens.get("psense"), dict) else None
        if withheld:
            out.append(f"<p>psense withheld: {_esc(withheld)}</p>")
        out.append(_table(["layer", "summary"] + [f"α = {a}" for a in alphas] + ["psense"], rows))
    return "".join(out) if out else _note("diagnostics.json has no PSIS or sensitivity entries.")


def compute_diagnostics(run, model, guide, data, *, num_draws=200, max_examples=2000, seed=0):
    """
    PSIS k-hat and prior sensitivity of a loaded run, saved to
    ``diagnostics.json`` in the run directory; returns the dict. The training
    set is used up to ``max_examples`` examples (the log-likelihood then
    scaled by ``n / max_examples``, which the note says).
    """
    import torch


    train = data[0]
    x, y = train.tensors
    n = len(y)
    if max_examples and n > max_examples:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_examples]
        x, y = x[idx], y[idx]
    device = next(iter(model.sites.values())).anchor.device
    tree = to_datatree(model, guide, num_draws=num_draws, weights_per_layer=64, data=(x.to(device), y.to(device)),
                       seed=seed, predictive=False)
    try:
        plug_in = run.config().compress.plug_in
    except Exception:  # noqa: BLE001  (no or unreadable config: no plug-in advice)
        plug_in = None
    psis = psis_from_datatree(tree, num_data=n, fit_plug_in=plug_in).to_dict()
    psis["note"] = (f"log-likelihood over all {n} training examples" if len(y) == n else
                    f"log-likelihood of {len(y)} of the {n} training examples, scaled by n/{len(y)} "
                    "(a noisy estimate of the full log joint, which inflates k̂)")
    sens = prior_sensitivity(tree=tree, model=model).to_dict()
    out = {"psis": psis, "prior_sensitivity": sens, "num_draws": num_draws, "num_examples": len(y), "seed": seed}
    with open(os.path.join(run.path, DIAGNOSTICS_NAME), "w") as f:
        json.dump(out, f, indent=2)
    return out


def write_report(run_dir, out=None, *, diagnostics=False, num_draws=200, max_examples=2000, image_format="png",
                 device="cpu", max_layers=4):
    """
    Write the HTML report of ``run_dir`` and return its path.

    :param out: output file (default ``run_dir/report.html``).
    :param bool diagnostics: compute PSIS k-hat and prior sensitivity now
        (``num_draws`` draws, up to ``max_examples`` training examples) and
        save them to ``diagnostics.json``; otherwise an existing
        ``diagnostics.json`` is shown.
    :param str image_format: ``"png"`` (base64 ``<img>``) or ``"svg"`` (inline).
    :param int max_layers: layers shown in the per-layer weight figures.
    """
    if image_format not in ("png", "svg"):
        raise ValueError(f"image_format must be 'png' or 'svg', got {image_format!r}")
    run = RunDir(run_dir)
    out = os.fspath(out) if out is not None else os.path.join(run.path, "report.html")
    r = _Report(image_format)
    r.add(f"<h1>SQS compression report</h1><p>Run directory <code>{_esc(os.path.abspath(run.path))}</code>, "
          f"written {datetime.datetime.now().isoformat(timespec='seconds')}.</p>")

    cfg = None
    try:
        cfg = run.config()
    except Exception as e:  # noqa: BLE001
        r.add(_note(f"config.toml could not be read: <code>{_esc(e)}</code>", error=True))
    if cfg is not None:
        r.add(f"<p>Model <b>{_esc(cfg.model.arch)}</b> on <b>{_esc(cfg.data.dataset)}</b>; target sparsity "
              f"{_fmt(cfg.compress.sparsity)}, pruning {_esc(cfg.compress.pruning)}, KL weight "
              f"{_fmt(cfg.compress.kl_weight)}, plug-in {_esc(cfg.compress.plug_in)}"
              + {"mean": " (the likelihood at the posterior-mean weights: a compression surrogate, not an ELBO; "
                         "q's spread is not fitted to the data)",
                 "sample": " (the likelihood at draws from q: a Monte Carlo ELBO)"}.get(cfg.compress.plug_in, "")
              + ".</p>")
        r.add(f"<details><summary>config.toml</summary><pre>{_esc(run.config_path.read_text())}</pre></details>")
    elif run.config_path is None:
        r.add(_note("No config.toml in this directory: the model cannot be rebuilt."))

    r.section("Accuracy")
    results = None
    try:
        results = run.results()
    except Exception as e:  # noqa: BLE001
        r.add(_note(f"results.json could not be read: <code>{_esc(e)}</code>", error=True))
    if results is not None:
        r.attempt("the accuracy table", lambda: _accuracy_html(results))
    elif run.file("results.json") is None:
        r.add(_note("No results.json yet: the run has not been evaluated (<code>sqs-pyro evaluate</code> / "
                    "<code>sqs-pyro run</code> write it)."))
    sweep = []
    try:
        sweep = run.sweep_results()
    except Exception:  # noqa: BLE001 - a sweep is optional
        sweep = []
    if len({s.get("K") for s in sweep}) >= 2:
        r.figure("the accuracy-vs-K figure", lambda: plots.plot_accuracy_vs_k(sweep),
                 "Test accuracy against K: greedy MAP export (dashed) vs Bayesian averaging (solid), runs in this folder.")

    r.section("Size on disk")
    rep = None
    if run.export_path is None:
        r.add(_note("No compressed.safetensors yet: export the run (<code>sqs-pyro export</code>)."))
    else:
        try:
            rep = run.size_report()
        except Exception as e:  # noqa: BLE001
            r.add(_note(f"The compressed file could not be read: <code>{_esc(e)}</code>", error=True))
    if rep is not None:
        r.attempt("the size table", lambda: _sizes_html(rep, "compressed.safetensors (bit-packed)"))
        if run.export_ec_path is not None:
            r.attempt("the entropy-coded size table",
                      lambda: _sizes_html(run.size_report(entropy_coded=True), "compressed.ec.safetensors (entropy coded)"))
        r.figure("the bits/sparsity figure", lambda: plots.plot_layer_sizes(rep),
                 "Sparsity and bits per weight per layer: the paper's count, the bytes stored, and the entropy bound.")

    r.section("Training")
    rows = None
    try:
        rows = run.log()
    except Exception as e:  # noqa: BLE001
        r.add(_note(f"log.jsonl could not be read: <code>{_esc(e)}</code>", error=True))
    if rows:
        try:
            cfg = run.config()
            plug_in = cfg.compress.plug_in if cfg is not None else None
        except Exception:  # noqa: BLE001  (the config is reported elsewhere)
            plug_in = None
        what = {"mean": "the data term at the posterior-mean weights (mean plug-in: a surrogate, not "
                        "−E log p(D|θ))", "sample": "the data term at draws from q (a Monte Carlo ELBO)"}
        r.figure("the ELBO trace", lambda: plots.plot_elbo_trace(rows, plug_in=plug_in),
                 f"The loss split into {what.get(plug_in, 'the data term')} and the KL (Jensen bound), KL per "
                 "layer, and sparsity.")
    elif rows is None:
        r.add(_note("No log.jsonl: the run has not been compressed yet."))
    else:
        r.add(_note("log.jsonl is empty."))

    r.section("Posterior")
    model = guide = data = None
    try:
        model, guide, data = run.load(device)
    except Exception as e:  # noqa: BLE001
        r.add(_note(f"The fitted model could not be rebuilt ({_esc(e)}); posterior figures are left out."))
    if model is not None:
        r.attempt("the posterior table", lambda: _posterior_html(model, guide))
        r.figure("the weight histograms", lambda: plots.plot_weight_histogram(model, guide, max_layers=max_layers),
                 "Weights before (pretrained, with the fitted mixture) and after compression (exported, with the "
                 "spike mass and the posterior's components); log density.")
        r.figure("the gate histograms", lambda: plots.plot_gate_histograms(model, guide),
                 "Gate probabilities γ per layer; the dashed line is the export's pruning threshold 0.5.")
        r.figure("the codebook usage", lambda: plots.plot_codebook_usage(model, guide),
                 "Exported weights per codebook value.")
        anchors = {n: s.anchor for n, s in list(model.sites.items())[:max_layers]}
        r.figure("the window comparison", lambda: plots.plot_window_errors(anchors, (2, 4, 8, 16, 32)),
                 "Quantization error of the pretrained weights against K: one codebook per layer, equal windows, "
                 "outlier-aware windows.")

    r.section("VI diagnostics")
    diag = None
    if diagnostics and model is not None:
        try:
            diag = compute_diagnostics(run, model, guide, data, num_draws=num_draws, max_examples=max_examples)
        except Exception as e:  # noqa: BLE001
            r.add(_note(f"Diagnostics could not be computed: <code>{_esc(e)}</code>", error=True))
    if diag is None:
        try:
            diag = run.diagnostics()
        except Exception as e:  # noqa: BLE001
            r.add(_note(f"diagnostics.json could not be read: <code>{_esc(e)}</code>", error=True))
    if diag is not None:
        r.attempt("the diagnostics", lambda: _diagnostics_html(diag))
    else:
        r.add(_note("No diagnostics yet: <code>sqs-pyro report RUN_DIR --diagnostics</code> computes PSIS k̂ and "
                    "prior sensitivity (for models small enough to evaluate the log joint)."))

    doc = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<title>SQS report: {_esc(os.path.basename(os.path.abspath(run.path)))}</title>"
           f"<style>{_CSS}</style></head><body>{''.join(r.parts)}</body></html>")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(doc)
    os.replace(tmp, out)
    return out
