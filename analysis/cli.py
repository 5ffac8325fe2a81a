"""
Command-line subcommands of the analysis: ``report`` and ``plot``.

The main CLI (:mod:`sqs_pyro.run.cli`) calls :func:`add_parser` with its
subparsers; each subcommand sets ``handler`` (``handler(args) -> exit code``).

Example::

    sqs-pyro report runs/default                      # runs/default/report.html
    sqs-pyro report runs/default --diagnostics        # also PSIS k-hat and prior sensitivity
    sqs-pyro plot weights runs/default --out figs --format svg
    sqs-pyro plot accuracy runs/sweep                 # accuracy vs K over the runs in runs/sweep/*
"""

import os

__all__ = ["PLOT_KINDS", "add_parser", "plot_command", "report_command"]

#: ``kind -> description`` of the figures ``sqs-pyro plot`` makes from a run directory.
PLOT_KINDS = {
    "weights": "weight histograms before/after with the spike and mixture components (needs the checkpoint)",
    "gates": "gate probability histograms (needs the checkpoint)",
    "codebook": "codebook usage bars (needs the checkpoint)",
    "sizes": "per-layer bits and sparsity (needs compressed.safetensors)",
    "elbo": "ELBO trace: data term and per-layer KL (needs log.jsonl)",
    "windows": "quantization error vs K of the pretrained weights: one codebook, equal and outlier-aware windows",
    "accuracy": "accuracy vs K, greedy vs Bayesian averaging (results.json of RUN_DIR and its subfolders)",
}


def add_parser(subparsers):
    """Add the ``report`` and ``plot`` subcommands to an argparse ``subparsers`` object."""
    p = subparsers.add_parser("report", help="write a self-contained HTML report of a run directory",
                              description="Write a self-contained HTML report (figures embedded) of a run directory.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory")
    p.add_argument("--out", metavar="FILE", help="output HTML file (default RUN_DIR/report.html)")
    p.add_argument("--diagnostics", action="store_true",
                   help="compute PSIS k-hat and prior sensitivity now (saved to RUN_DIR/diagnostics.json)")
    p.add_argument("--draws", type=int, default=200, help="posterior draws for the diagnostics (default 200)")
    p.add_argument("--examples", type=int, default=2000,
                   help="training examples for the log-likelihood of the diagnostics (default 2000; 0 = all)")
    p.add_argument("--format", choices=["png", "svg"], default="png", help="embedded image format (default png)")
    p.add_argument("--device", default="cpu", help="device for rebuilding the model (default cpu)")
    p.set_defaults(handler=report_command)

    p = subparsers.add_parser("plot", help="draw one figure of a run directory (PNG or SVG)",
                              description="Draw one figure of a run directory. Kinds: "
                              + "; ".join(f"{k}: {v}" for k, v in PLOT_KINDS.items()))
    p.add_argument("kind", metavar="KIND", choices=sorted(PLOT_KINDS), help="one of: " + ", ".join(PLOT_KINDS))
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory")
    p.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/figures)")
    p.add_argument("--format", choices=["png", "svg"], default="png", help="image format (default png)")
    p.add_argument("--layer", action="append", dest="layers", metavar="NAME",
                   help="compressed layer to show (repeatable; default: the first few)")
    p.add_argument("--linear-y", action="store_true", help="linear instead of logarithmic density axes")
    p.add_argument("--device", default="cpu", help="device for rebuilding the model (default cpu)")
    p.set_defaults(handler=plot_command)
    return subparsers


def report_command(args):
    from .report import write_report

    # errors reach sqs_pyro.run.cli.main, which prints one line and exits with the error's code
    path = write_report(args.run_dir, args.out, diagnostics=args.diagnostics, num_draws=args.draws,
                        max_examples=args.examples or None, image_format=args.format, device=args.device)
    print(path)
    return 0


def _make_figure(kind, run, args):
    from . import plots

    log_y = not args.linear_y
    if kind == "elbo":
        rows = run.log()
        if not rows:
            raise FileNotFoundError(f"{run.path} has no (non-empty) log.jsonl")
        cfg = run.config()
        return plots.plot_elbo_trace(rows, plug_in=cfg.compress.plug_in if cfg is not None else None)
    if kind == "sizes":
        if run.export_path is None:
            raise FileNotFoundError(f"{run.path} has no compressed.safetensors: export the run first")
        return plots.plot_layer_sizes(run.size_report())
    if kind == "accuracy":
        results = run.sweep_results()
        if not results:
            raise FileNotFoundError(f"no results.json with a known K in {run.path} or its subfolders")
        return plots.plot_accuracy_vs_k(results)
    model, guide, _ = run.load(args.device)
    if kind == "weights":
        return plots.plot_weight_histogram(model, guide, args.layers, log_y=log_y)
    if kind == "gates":
        return plots.plot_gate_histograms(model, guide, args.layers, log_y=log_y)
    if kind == "codebook":
        return plots.plot_codebook_usage(model, guide, args.layers)
    if kind == "windows":
        names = args.layers or list(model.sites)[:4]
        return plots.plot_window_errors({n: model.sites[n].anchor for n in names})
    raise ValueError(f"unknown plot kind {kind!r}: choose one of {sorted(PLOT_KINDS)}")


def plot_command(args):
    from .plots import save_figure
    from .run_dir import RunDir

    run = RunDir(args.run_dir)  # errors reach sqs_pyro.run.cli.main: one line and the error's exit code
    fig = _make_figure(args.kind, run, args)
    out_dir = args.out or os.path.join(run.path, "figures")
    (path,) = save_figure(fig, os.path.join(out_dir, args.kind), formats=(args.format,))
    print(path)
    return 0
