"""
The ``sqs-pyro consistency`` subcommand: run the teacher–student simulation of
method.md §9 (:mod:`sqs_pyro.analysis.consistency`) and write
``consistency.json``, ``consistency.md`` and ``consistency.png`` / ``.svg``
into ``--out``.

The main CLI (:mod:`sqs_pyro.cli`) calls :func:`add_parser` with its
subparsers; the subcommand sets ``handler`` (``handler(args) -> exit code``).

The files record the provenance: the command, the commit of the code and
whether tracked files had uncommitted changes, the library versions and the
machine. ``--results`` writes them where the committed copies live
(``benchmarks/results/consistency.{json,md}`` and ``docs/figures/consistency.png``),
keeping any hand-written text after the generated part of the markdown.

Example::

    sqs-pyro consistency                          # default study (4 seeds), runs/consistency
    sqs-pyro consistency --smoke --out runs/cs    # about half a minute
    sqs-pyro consistency --full                   # n up to 64000, 8 seeds (about an hour)
    sqs-pyro consistency --seeds 0 1 --sizes 500 2000 8000 --plug-in mean --workers 1
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy
import pyro
import torch

from sqs_pyro.io import atomic_write
from sqs_pyro.run.machine import cpu_name

from .consistency import run_consistency
from .consistency_config import ConsistencyConfig
from .consistency_result import HAND_WRITTEN

__all__ = ["add_parser", "consistency_command"]

DEFAULT_OUT = os.path.join("runs", "consistency")


def add_parser(subparsers):
    """Add the ``consistency`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "consistency",
        help="check the consistency claim by a teacher-student simulation (method.md §9)",
        description="Fit SQS students to data from a sparse, quantized ReLU teacher over a grid of sample sizes; "
                    "report excess risk and Hellinger distance against n with log-log slopes, inclusion "
                    "probabilities, codebook recovery, and the K / lambda0 / plug-in ablations.",
    )
    p.add_argument("--out", default=None, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--results", action="store_true",
                   help="write the committed results (benchmarks/results/consistency.*, docs/figures/consistency.*)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="a small, fast version (about half a minute)")
    size.add_argument("--full", action="store_true", help="the longer study: n up to 64000, 8 seeds")
    p.add_argument("--seeds", type=int, nargs="+", metavar="S", help="replicate seeds (default 0 1 2 3)")
    p.add_argument("--sizes", type=int, nargs="+", metavar="N", help="the grid of training-set sizes")
    p.add_argument("--max-steps", type=int, dest="max_steps", help="step cap of a fit at n <= 1000")
    p.add_argument("--num-components", "-K", type=int, dest="num_components", help="K of the student's layers")
    p.add_argument("--inclusion-prob", type=float, dest="inclusion_prob", help="the prior's lambda0")
    p.add_argument("--noise-std", type=float, dest="noise_std", help="sigma of the Gaussian noise")
    p.add_argument("--plug-in", choices=["sample", "mean"], dest="plug_in", help="likelihood plug-in of the ELBO")
    p.add_argument("--anchors", choices=["straight-through", "frozen"], help="anchors of the student's posterior")
    p.add_argument("--workers", type=int, help="worker processes (default 2; 1 runs in this process)")
    p.add_argument("--no-ablations", action="store_true", help="skip the ablations at the largest n")
    p.add_argument("--quiet", action="store_true", help="no per-fit progress lines")
    p.set_defaults(handler=consistency_command)
    return p


def _config(args):
    overrides = {k: getattr(args, k) for k in
                 ("max_steps", "num_components", "inclusion_prob", "noise_std", "plug_in", "anchors", "workers")
                 if getattr(args, k, None) is not None}
    if args.seeds:
        overrides["seeds"] = tuple(args.seeds)
    if args.sizes:
        overrides["sizes"] = tuple(args.sizes)
    if args.no_ablations:
        overrides["ablations"] = ()
    if args.smoke:
        return ConsistencyConfig.smoke(**overrides)
    if getattr(args, "full", False):
        return ConsistencyConfig.full(**overrides)
    return ConsistencyConfig(**overrides)


def _git(*cmd):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        return subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(argv=None):
    """The command, the code's commit (and whether tracked files differ from it), versions and machine."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    argv = sys.argv[1:] if argv is None else argv
    return {
        "command": "sqs-pyro " + " ".join(argv),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__,
                     "numpy": numpy.__version__},
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs, no GPU used"
                   + (f", load average at start {load[0]:.2f}" if load else ""),
    }


def write_outputs(result, out, figure=None, keep_hand_written=False):
    """Write ``consistency.json`` / ``.md`` into ``out`` (atomically) and the figure (PNG + SVG)."""
    md_path = os.path.join(out, "consistency.md")
    markdown = result.to_markdown()
    if keep_hand_written and os.path.exists(md_path):
        with open(md_path) as f:
            old = f.read()
        if HAND_WRITTEN in old:
            markdown += "\n" + HAND_WRITTEN + old.split(HAND_WRITTEN, 1)[1]
    with atomic_write(os.path.join(out, "consistency.json"), "w") as f:
        json.dump(result.to_dict(), f, indent=1)
    with atomic_write(md_path, "w") as f:
        f.write(markdown)
    if figure:
        result.plot(figure, formats=("png",))
    else:
        result.plot(os.path.join(out, "consistency.png"))
    return markdown


def consistency_command(args):
    """Run the simulation, write the files, print the table; returns an exit code."""
    try:
        config = _config(args)
    except (TypeError, ValueError) as e:
        print(f"sqs-pyro consistency: error: {e}", file=sys.stderr)
        return 2
    results = getattr(args, "results", False)
    out = args.out or (os.path.join("benchmarks", "results") if results else DEFAULT_OUT)
    figure = os.path.join("docs", "figures", "consistency.png") if results else None
    os.makedirs(out, exist_ok=True)
    record = provenance(getattr(args, "argv", None))
    t0 = time.perf_counter()

    def progress(row):
        e, f = row["excess_risk"], row["fit"]
        print(f"[{time.perf_counter() - t0:6.0f} s] seed {row['seed']} n={row['n']:>6} {row['setting']:<16} "
              f"excess risk: posterior mean {e['posterior_mean']:.4g}, greedy {e['greedy']:.4g}, dense "
              f"{e['anchor']:.4g}; {f['steps']} steps, {'converged' if f['converged'] else 'NOT converged'} "
              f"({row['seconds']:.0f} s)", file=sys.stderr, flush=True)

    result = run_consistency(config, progress=None if getattr(args, "quiet", False) else progress)
    result.provenance = record
    markdown = write_outputs(result, out, figure, keep_hand_written=results)
    print(markdown)
    print(f"wrote consistency.json, consistency.md in {out}; figure {figure or os.path.join(out, 'consistency.png')}")
    return 0


def main(argv=None):
    """Standalone entry point (``python -m sqs_pyro.analysis.consistency_cli``)."""
    parser = argparse.ArgumentParser(prog="sqs-pyro")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["consistency", *(sys.argv[1:] if argv is None else argv)])
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
