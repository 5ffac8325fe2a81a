"""
The SQS recipe against the baselines on Fashion-MNIST (issue 11): the ablation
of the default recipe, the K x sparsity grid with seeds, the budget curve and the
ResNet-18 comparison.

Every run starts from the same base network, gets the same budget of passes over
the training data, and is scored on the full test set from its reloaded file
(:func:`sqs_pyro.baselines.run_baselines` with one method). Each run's row is
saved in ``--out/rows/<tag>.json`` when it ends, so a killed study resumes where
it stopped; the tables go to ``benchmarks/results/<study>_<dataset>_<arch>.{json,md}``.

Usage::

    python benchmarks/recipe_study.py ablation --base runs/base/base.pt --train-subset 12000
    python benchmarks/recipe_study.py grid --base runs/base/base.pt
    python benchmarks/recipe_study.py budget --base runs/base/base.pt
    python benchmarks/recipe_study.py grid --arch resnet18 --train-subset 12000 -K 16 4 --sparsity 0.5 0.9
"""

import argparse
import copy
import json
import os
import pathlib
import statistics
import sys
import time

import torch

from _machine import machine_info

from sqs_pyro.baselines import run_baselines
from sqs_pyro.run.config import RunConfig
from sqs_pyro.io import atomic_write
from sqs_pyro.run.pipeline import base_network, load_data, resolve_device
from sqs_pyro.run.recipes import RECIPES

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

#: The ablation: each change of the default recipe alone on top of the paper's, then cumulatively.
CHANGES = [
    ("score", "anchor", "score = anchor magnitude (not rho)"),
    ("gates", "hard", "hard gates (survivors keep gamma = 1)"),
    ("anchors", "straight-through", "straight-through anchors"),
    ("refit_codebooks", True, "codebooks refit on the survivors"),
    ("prune_end", 0.3, "last mask at 30% of the run (prune from 0)"),
]
PAPER = {k: v for k, v in RECIPES["paper"].items()}


def variants():
    """``tag -> (label, compress overrides)`` of the ablation, paper first, the default last."""
    out = {"paper": ("paper recipe", {"recipe": "paper"})}
    for key, value, label in CHANGES:
        extra = {key: value, "prune_start": 0.0} if key == "prune_end" else {key: value}
        out[f"paper+{key}"] = (f"paper + {label}", {"recipe": "paper", **extra})
    cumulative = {"recipe": "paper"}
    for i, (key, value, label) in enumerate(CHANGES[1:-1], start=1):
        cumulative = {**cumulative, CHANGES[i - 1][0]: CHANGES[i - 1][1], key: value}
        if key == "prune_end":
            cumulative["prune_start"] = 0.0
        names = " + ".join(k for k, _, _ in CHANGES[: i + 1])
        out[f"cumulative:{i + 1}"] = (f"paper + {names}", dict(cumulative))
    # all five changes together are the default recipe (the paper's cosine lr is kept)
    out["sqs"] = ("paper + all five = default recipe (sqs)", {"recipe": "sqs"})
    return out


class Study:
    def __init__(self, args):
        self.args = args
        torch.set_num_threads(args.threads)
        self.device = resolve_device("cpu")
        self.cfg = RunConfig().override([f"model.arch={args.arch}", f"data.dataset={args.dataset}",
                                         f"model.base_checkpoint={args.base}", "eval.num_samples=2"])
        self.train, self.test, self.info = load_data(self.cfg)
        if args.train_subset:  # one fixed subset for every seed and method
            g = torch.Generator().manual_seed(0)
            idx = torch.randperm(len(self.train), generator=g)[: args.train_subset]
            self.train = torch.utils.data.TensorDataset(*(t[idx] for t in self.train.tensors))
        self.net, self.base_acc = base_network(self.cfg, self.train, self.test, self.info, self.device, progress=False)
        # one cache per training set: rows of a subset never stand in for full-data rows
        self.rows_dir = pathlib.Path(args.out) / "rows" / (f"train{args.train_subset}" if args.train_subset else "full")
        self.rows_dir.mkdir(parents=True, exist_ok=True)

    def run(self, tag, method, k, sparsity, seed, epochs, compress=None):
        """One method at one point; cached in ``rows/<tag>.json``."""
        path = self.rows_dir / f"{tag.replace(':', '_').replace('/', '_')}.json"
        if path.exists():
            return json.loads(path.read_text())
        sets = [f"prior._default.num_components={k}", f"compress.sparsity={sparsity}", f"compress.epochs={epochs}"]
        sets += [f"compress.{key}={json.dumps(v)}" for key, v in (compress or {}).items()]
        cfg = copy.deepcopy(self.cfg).override(sets)
        cfg = type(cfg).from_dict({**cfg.to_dict(), "seed": seed, "out_dir": str(pathlib.Path(self.args.out) / "runs" / path.stem)})
        if cfg.prior is None:
            from sqs_pyro.run.config import default_prior_for

            cfg = cfg.replace_prior(default_prior_for(cfg.model.arch, k))
        t0 = time.time()
        rows, _ = run_baselines(cfg, self.net, self.base_acc, self.train, self.test, self.info, self.device,
                                progress=False, methods=[method], results_dir=None)
        row = {k_: v for k_, v in rows[-1].items() if k_ not in ("notes", "path", "entropy_coded_path")}
        row.update(tag=tag, seed=seed, epochs=epochs, compress=compress or {}, wall_seconds=time.time() - t0)
        with atomic_write(path, "w") as f:
            json.dump(row, f, indent=1)
        print(f"[{tag}] accuracy {row['accuracy']:.4f} sparsity {row['sparsity']:.4f} "
              f"honest CR {row['honest_cr']:.2f} ({row['wall_seconds']:.0f} s)", flush=True)
        return row


def mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values, scale=100, digits=2):
    m, s = mean_sd(values)
    if m is None:
        return "—"
    if len(values) == 1:
        return f"{scale * m:.{digits}f}"
    return f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


def header(study, args, base_acc, train_size):
    info = machine_info("cpu", args.threads)
    return [
        f"Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, {args.threads} torch threads, no GPU, "
        f"torch {info['torch']}, Python {info['python']}.",
        f"Command: `python benchmarks/recipe_study.py {' '.join(sys.argv[1:])}`.",
        f"Data: Fashion-MNIST, {train_size:,} training images, the full 10,000-image test set; base {args.arch} "
        f"{100 * base_acc:.2f}% (`{args.base}`). Accuracy is that of the network reloaded from its exported file; "
        "mean ± sd over seeds (the seed changes the minibatch order and the method's own randomness, not the base "
        "network). Fashion-MNIST substitutes for the paper's benchmarks: these are not the paper's numbers.",
    ]


def write(stem, payload, lines):
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_write(RESULTS / f"{stem}.json", "w") as f:
        json.dump(payload, f, indent=1)
    with atomic_write(RESULTS / f"{stem}.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def ablation(study, args):
    table = {}
    points = [tuple(float(v) for v in e.split(":")) for e in args.points]
    points = [(int(k), s) for k, s in points]
    for k, s in points:
        for tag, (label, compress) in variants().items():
            # the default recipe's runs are the grid's (same tag, same cache)
            where = f"grid/{args.arch}/K{k}_s{round(100 * s)}/sqs" if tag == "sqs" else f"ablation/K{k}_s{round(100 * s)}/{tag}"
            rows = [study.run(f"{where}/seed{seed}", "sqs", k, s, seed, args.epochs,
                              None if tag == "sqs" else compress) for seed in args.seeds]
            table[(k, s, tag)] = (label, rows)
        rows = [study.run(f"grid/{args.arch}/K{k}_s{round(100 * s)}/deep-compression/seed{seed}", "deep-compression",
                          k, s, seed, args.epochs) for seed in args.seeds]
        table[(k, s, "deep-compression")] = ("Deep Compression (reference)", rows)
    lines = [f"# Ablation of the SQS recipe ({args.arch}, Fashion-MNIST)", ""] + header(
        "ablation", args, study.base_acc, len(study.train)) + [
        f"Budget: {args.epochs:g} epoch(s) for every run; seeds {args.seeds}.", "",
        "| variant | " + " | ".join(f"K = {k}, {100 * s:.0f}%: accuracy (%) | sparsity (%)" for k, s in points) + " |",
        "| --- | " + " | ".join("--- | ---" for _ in points) + " |"]
    for tag, (label, _) in list(variants().items()) + [("deep-compression", ("Deep Compression (reference)", None))]:
        cells = []
        for k, s in points:
            rows = table[(k, s, tag)][1]
            cells += [fmt([r["accuracy"] for r in rows]), fmt([r["sparsity"] for r in rows], digits=1)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Reading the rows: the paper recipe's learned gates let the Bernoulli KL close survivors' gates, so its "
              "export is sparser than the target where the score works (the `paper + score` row); hard gates alone "
              "leave `rho` untrained, every score ties and the global top-k masks whole layers in order (chance "
              "accuracy): they only make sense with a score that is not `rho`."]
    payload = {"machine": machine_info("cpu", args.threads), "base_accuracy": study.base_acc,
               "train_size": len(study.train), "epochs": args.epochs, "seeds": args.seeds,
               "rows": [r for (_, _, _), (_, rows) in table.items() for r in rows]}
    write(f"ablation_{args.dataset}_{args.arch}" + (f"_{args.train_subset}" if args.train_subset else ""), payload, lines)


def grid(study, args):
    results = []
    points = [(k, s) for k in args.K for s in args.sparsity]
    points += [tuple(float(v) for v in e.split(":")) for e in args.extra]
    for k, s in points:
        k = int(k)
        for method in args.methods:
            seeds = args.seeds if method in args.seeded else args.seeds[:1]
            rows = [study.run(f"grid/{args.arch}/K{k}_s{round(100 * s)}/{method}/seed{seed}", method, k, s, seed,
                              args.epochs) for seed in seeds]
            results.append({"K": k, "target_sparsity": s, "method": method, "rows": rows})
    lines = [f"# SQS against the baselines: {args.arch} on Fashion-MNIST, K x target sparsity", ""] + header(
        "grid", args, study.base_acc, len(study.train)) + [
        f"Budget: {args.epochs:g} epoch(s) for every method (Deep Compression: fine-tune and centroid phases "
        "together). Honest CR = fp32 bytes of the compressed layers / their stored bytes in the file.", "",
        "| K | target | method | seeds | accuracy (%) | drop (pts) | sparsity (%) | honest CR | EC honest CR |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        rows = r["rows"]
        accs = [x["accuracy"] for x in rows]
        drop = [study.base_acc - a for a in accs]
        lines.append(f"| {r['K']} | {100 * r['target_sparsity']:.0f}% | {rows[0]['label']} | {len(rows)} | "
                     f"{fmt(accs)} | {fmt(drop)} | {fmt([x['sparsity'] for x in rows], digits=1)} | "
                     f"{mean_sd([x['honest_cr'] for x in rows])[0]:.2f}× | "
                     f"{(mean_sd([x.get('entropy_coded_honest_cr') for x in rows])[0] or float('nan')):.2f}× |")
    lines += ["", *verdicts(results, study.base_acc)]
    payload = {"machine": machine_info("cpu", args.threads), "base_accuracy": study.base_acc,
               "train_size": len(study.train), "epochs": args.epochs, "points": results}
    stem = f"{args.name}_{args.dataset}_{args.arch}" + (f"_{args.train_subset}" if args.train_subset else "")
    write(stem, payload, lines)


def verdicts(results, base_acc, max_drop=0.005):
    """Per point: SQS against the best baseline (a deficit larger than one sd counts as a loss); the CR goal."""
    out = ["## SQS against the best baseline at each point", "",
           "| K | target | SQS | best baseline | difference (pts) | verdict |", "| --- | --- | --- | --- | --- | --- |"]
    points = sorted({(r["K"], r["target_sparsity"]) for r in results})
    best_cr = {}
    for k, s in points:
        here = {r["method"]: r["rows"] for r in results if (r["K"], r["target_sparsity"]) == (k, s)}
        for method, rows in here.items():
            m = mean_sd([x["accuracy"] for x in rows])[0]
            if base_acc - m <= max_drop:
                cr = mean_sd([x["honest_cr"] for x in rows])[0]
                if cr > best_cr.get(method, (0.0, None))[0]:
                    best_cr[method] = cr, (k, s)
        if "sqs" not in here:
            continue
        others = {m: rows for m, rows in here.items() if m != "sqs"}
        if not others:
            continue
        best = max(others, key=lambda m: mean_sd([x["accuracy"] for x in others[m]])[0])
        sqs_m, sqs_sd = mean_sd([x["accuracy"] for x in here["sqs"]])
        b_m, b_sd = mean_sd([x["accuracy"] for x in others[best]])
        diff = sqs_m - b_m
        sd = max(sqs_sd, b_sd)
        verdict = "win" if diff > sd else ("loss" if diff < -sd else "tie (within one sd)")
        out.append(f"| {k} | {100 * s:.0f}% | {100 * sqs_m:.2f} | {others[best][0]['label']} "
                   f"{100 * b_m:.2f} | {100 * diff:+.2f} | {verdict} |")
    out += ["", f"Largest honest CR at a drop of at most {100 * max_drop:.1f} points (mean over seeds):", ""]
    for method, (cr, (k, s)) in sorted(best_cr.items(), key=lambda kv: -kv[1][0]):
        out.append(f"- {method}: {cr:.2f}× (K = {k}, {100 * s:.0f}%)")
    sqs = best_cr.get("sqs", (None,))[0]
    others = [v[0] for m, v in best_cr.items() if m != "sqs"]
    if sqs and others:
        out.append(f"- SQS / best baseline: {sqs / max(others):.2f}× (goal ≥ 1.5×: {'met' if sqs >= 1.5 * max(others) else 'not met'})")
    elif not sqs:
        out.append("- SQS reaches that drop at no point of this grid.")
    return out


def budget(study, args):
    k, s = 4, 0.9
    results = []
    for epochs in args.budgets:
        for method in ("sqs", "deep-compression"):
            tag = (f"grid/{args.arch}/K{k}_s{round(100 * s)}/{method}" if epochs == args.epochs
                   else f"budget/K{k}_s{round(100 * s)}/{method}/e{epochs:g}")
            rows = [study.run(f"{tag}/seed{seed}", method, k, s, seed, epochs) for seed in args.seeds]
            results.append({"epochs": epochs, "method": method, "rows": rows})
    lines = [f"# Budget curve: accuracy against passes over the data, K = {k}, {100 * s:.0f}% ({args.arch})", ""] + header(
        "budget", args, study.base_acc, len(study.train)) + ["",
        "| epochs | SQS accuracy (%) | Deep Compression accuracy (%) |", "| --- | --- | --- |"]
    for epochs in args.budgets:
        cells = [fmt([x["accuracy"] for x in r["rows"]]) for r in results if r["epochs"] == epochs]
        lines.append(f"| {epochs:g} | " + " | ".join(cells) + " |")
    payload = {"machine": machine_info("cpu", args.threads), "base_accuracy": study.base_acc,
               "train_size": len(study.train), "points": results}
    write(f"budget_{args.dataset}_{args.arch}" + (f"_{args.train_subset}" if args.train_subset else ""), payload, lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", choices=("ablation", "grid", "budget"))
    p.add_argument("--base", default="runs/base/base.pt", help="the base checkpoint every run starts from")
    p.add_argument("--out", default="runs/study", help="run directories and the cached rows")
    p.add_argument("--arch", default="small-cnn")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("-K", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    p.add_argument("--extra", nargs="*", default=["4:0.95", "4:0.97"], help="more K:sparsity points of the grid")
    p.add_argument("--methods", nargs="+", default=["sqs", "deep-compression", "dgms", "rtn"])
    p.add_argument("--seeded", nargs="+", default=["sqs", "deep-compression"],
                   help="methods run with every seed (the others with the first)")
    p.add_argument("--points", nargs="+", default=["4:0.9", "8:0.75"],
                   help="K:sparsity points of the ablation (run one per process to use both cores; the rows are cached)")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    p.add_argument("--name", default="grid", help="stem of the grid's results files")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if not os.path.exists(args.base) and args.arch == "small-cnn":
        p.error(f"--base {args.base} does not exist: train it with `sqs-pyro train-base --out runs/base`")
    study = Study(args)
    {"ablation": ablation, "grid": grid, "budget": budget}[args.study](study, args)


if __name__ == "__main__":
    main()
