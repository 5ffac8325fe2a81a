"""
The compression grid of issue 3: the default job (SQS and every baseline) at
``K`` in {4, 8, 16} and target sparsity in {50, 75, 90}%, all from one base
network, then one table and the issue's goal check.

Each grid point is one ``sqs-pyro run`` in a subprocess (its own run directory
under ``--out``; a point whose results file exists is not run again, so a killed
grid resumes where it stopped). Every point writes
``benchmarks/results/baselines_<dataset>_<arch>_K<K>_s<sparsity>.{json,md}``;
this script collects them into ``benchmarks/results/grid_<dataset>_<arch>.{json,md}``.

The goal check: for each method, the largest honest compression ratio (fp32
bytes of the compressed layers over their stored bytes) among the grid points
whose accuracy drop from the base network is at most ``--max-drop`` points; the
goal is met when SQS's is at least 1.5x the best baseline's.

Usage::

    python benchmarks/compression_grid.py --base runs/default/base.pt          # the whole grid
    python benchmarks/compression_grid.py --base runs/default/base.pt -K 4 --sparsity 0.9
    python benchmarks/compression_grid.py --collect-only                       # just the table
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

from _machine import cpu_name

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BASELINES = ("rtn", "deep-compression", "dgms", "sqs-gaussian")


def _stem(dataset, arch, k, sparsity):
    return f"baselines_{dataset}_{arch}_K{k}_s{round(100 * sparsity)}"


def run_point(args, k, sparsity):
    """Run one grid point in a subprocess (skipped when its results file exists)."""
    stem = _stem(args.dataset, args.arch, k, sparsity)
    if (RESULTS / f"{stem}.json").exists() and not args.force:
        print(f"[grid] K={k} s={sparsity:.2f}: {stem}.json exists, skipped", flush=True)
        return
    out = os.path.join(args.out, f"K{k}_s{round(100 * sparsity)}")
    cmd = [sys.executable, "-m", "sqs_pyro", "run", "--out", out, "-K", str(k), "--sparsity", str(sparsity),
           "--no-progress", "--threads", str(args.threads), "--set", f"model.base_checkpoint={args.base}"]
    print("[grid] " + " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"[grid] K={k} s={sparsity:.2f}: {time.time() - t0:.0f} s", flush=True)


def collect(args):
    """Every grid point's rows, read from the results files."""
    points = []
    for k in args.K:
        for s in args.sparsity:
            path = RESULTS / f"{_stem(args.dataset, args.arch, k, s)}.json"
            if path.exists():
                data = json.loads(path.read_text())
                points.append({"K": k, "target_sparsity": s, "base_accuracy": data["base_accuracy"],
                               "seconds": data.get("seconds"), "rows": data["rows"]})
    return points


def goal_check(points, max_drop):
    """Per method, the best honest CR at a drop of at most ``max_drop`` points, and SQS over the best baseline."""
    best = {}
    for p in points:
        for row in p["rows"]:
            if row["method"] == "base" or row.get("accuracy") is None:
                continue
            drop = 100 * (p["base_accuracy"] - row["accuracy"])
            if drop <= max_drop and row["honest_cr"] > best.get(row["method"], {}).get("honest_cr", 0):
                best[row["method"]] = {"honest_cr": row["honest_cr"], "K": p["K"],
                                       "target_sparsity": p["target_sparsity"], "drop_points": drop,
                                       "entropy_coded_honest_cr": row.get("entropy_coded_honest_cr")}
    baselines = {m: v for m, v in best.items() if m in BASELINES}
    ratio = None
    if "sqs" in best and baselines:
        top = max(baselines.values(), key=lambda v: v["honest_cr"])
        ratio = best["sqs"]["honest_cr"] / top["honest_cr"]
    return {"max_drop_points": max_drop, "best": best, "sqs_over_best_baseline": ratio,
            "met": ratio is not None and ratio >= 1.5}


def markdown(points, goal, machine, base="runs/default/base.pt"):
    lines = [
        "# Compression grid: Fashion-MNIST, small CNN, K x target sparsity, SQS and the baselines",
        "",
        f"Machine: {machine}.",
        f"Command: `python benchmarks/compression_grid.py --base {base}` (one `sqs-pyro run` per "
        "point, all from the same base network; every method gets the same budget of 1 epoch).",
        "Accuracy is that of the network reloaded from its exported file (greedy MAP export; BMA = Bayesian "
        "averaging over 10 posterior draws). Honest CR = fp32 bytes of the compressed layers / their stored "
        "bytes (codes + mask + codebook); EC = the entropy-coded file (constriction ANS).",
        "",
        "| K | target | method | sparsity | accuracy | drop (pts) | paper CR | honest CR | EC honest CR | file bytes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in points:
        for row in p["rows"]:
            if row["method"] == "base":
                continue
            acc = f"{100 * row['accuracy']:.2f}%"
            if row.get("bma_accuracy") is not None:
                acc += f" (BMA {100 * row['bma_accuracy']:.2f}%)"
            ec = row.get("entropy_coded_honest_cr")
            lines.append(
                f"| {p['K']} | {100 * p['target_sparsity']:.0f}% | {row.get('label', row['method'])} | "
                f"{100 * row['sparsity']:.1f}% | {acc} | {100 * (p['base_accuracy'] - row['accuracy']):+.2f} | "
                f"{row['paper_cr']:.1f}× | {row['honest_cr']:.2f}× | {'—' if ec is None else f'{ec:.2f}×'} | "
                f"{row['file_bytes']:,} |")
    if points:
        lines += ["", f"Base network: {100 * points[0]['base_accuracy']:.2f}% test accuracy."]
    lines += ["", f"## Goal check (drop ≤ {goal['max_drop_points']} points)", "",
              "| method | best honest CR | at K | target | drop (pts) |", "| --- | --- | --- | --- | --- |"]
    for method, v in sorted(goal["best"].items(), key=lambda kv: -kv[1]["honest_cr"]):
        lines.append(f"| {method} | {v['honest_cr']:.2f}× | {v['K']} | {100 * v['target_sparsity']:.0f}% | "
                     f"{v['drop_points']:+.2f} |")
    ratio = goal["sqs_over_best_baseline"]
    if ratio is None and "sqs" not in goal["best"]:
        verdict = f"SQS reaches a drop of at most {goal['max_drop_points']} points at no grid point"
        closest = min(((100 * (p["base_accuracy"] - r["accuracy"]), p["K"], p["target_sparsity"])
                       for p in points for r in p["rows"] if r["method"] == "sqs"), default=None)
        if closest is not None:
            verdict += f" (smallest drop {closest[0]:+.2f} at K = {closest[1]}, {100 * closest[2]:.0f}%)"
    else:
        verdict = "SQS / best baseline: " + ("—" if ratio is None else f"{ratio:.2f}×")
    lines += ["", verdict + (" — goal (≥ 1.5×) met." if goal["met"] else " — goal (≥ 1.5×) not met.")]
    return "\n".join(lines) + "\n"


def machine_name(threads):
    return (f"{cpu_name()}, {os.cpu_count()} logical CPUs, {threads} torch threads, no GPU, "
            f"Python {platform.python_version()}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="runs/default/base.pt", help="base checkpoint shared by every point")
    p.add_argument("--out", default="runs/grid", help="parent of the grid points' run directories")
    p.add_argument("-K", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--arch", default="small-cnn")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-drop", type=float, default=0.5, help="accuracy drop (points) of the goal check")
    p.add_argument("--force", action="store_true", help="rerun points whose results exist")
    p.add_argument("--collect-only", action="store_true", help="only write the table from existing results")
    args = p.parse_args(argv)
    if not args.collect_only:
        if not os.path.exists(args.base):
            p.error(f"--base {args.base} does not exist; train it first with `sqs-pyro train-base --out runs/default`")
        for k in args.K:
            for s in args.sparsity:
                run_point(args, k, s)
    points = collect(args)
    goal = goal_check(points, args.max_drop)
    machine = machine_name(args.threads)
    stem = f"grid_{args.dataset}_{args.arch}"
    (RESULTS / f"{stem}.json").write_text(json.dumps({"machine": machine, "points": points, "goal": goal}, indent=1))
    text = markdown(points, goal, machine, args.base)
    (RESULTS / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
