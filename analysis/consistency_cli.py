"""
The ``sqs-pyro consistency`` subcommand: run the teacher–student simulation of
method.md §9 (:mod:`sqs_pyro.analysis.consistency`) and write
``consistency.json``, ``consistency.md`` and ``consistency.png`` / ``.svg``
into ``--out``.

The main CLI (:mod:`sqs_pyro.cli`) calls :func:`add_parser` with its
subparsers; the subcommand sets ``handler`` (``handler(args) -> exit code``).

Example::

    sqs-pyro consistency                          # default grid, runs/consistency
    sqs-pyro consistency --smoke --out runs/cs    # about half a minute
    sqs-pyro consistency --sizes 500 2000 8000 --plug-in mean --workers 1
"""

import dataclasses
import json
import os
import sys
import time

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
    p.add_argument("--smoke", action="store_true", help="a small, fast version (about half a minute)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--sizes", type=int, nargs="+", metavar="N", help="the grid of training-set sizes")
    p.add_argument("--steps", type=int, help="SVI steps per fit")
    p.add_argument("--num-components", "-K", type=int, dest="num_components", help="K of the student's layers")
    p.add_argument("--inclusion-prob", type=float, dest="inclusion_prob", help="the prior's lambda0")
    p.add_argument("--noise-std", type=float, dest="noise_std", help="sigma of the Gaussian noise")
    p.add_argument("--plug-in", choices=["sample", "mean"], dest="plug_in", help="likelihood plug-in of the ELBO")
    p.add_argument("--workers", type=int, help="worker processes (default 2; 1 runs in this process)")
    p.add_argument("--no-ablations", action="store_true", help="skip the K, lambda0 and plug-in ablations")
    p.add_argument("--quiet", action="store_true", help="no per-fit progress lines")
    p.set_defaults(handler=consistency_command)
    return p


def _config(args):
    from .consistency import ConsistencyConfig

    overrides = {k: getattr(args, k) for k in
                 ("seed", "steps", "num_components", "inclusion_prob", "noise_std", "plug_in", "workers")
                 if getattr(args, k, None) is not None}
    if args.sizes:
        overrides["sizes"] = tuple(args.sizes)
    if args.no_ablations:
        overrides.update(small_components=(), large_inclusion_probs=(), compare_plug_in=False)
    return ConsistencyConfig.smoke(**overrides) if args.smoke else ConsistencyConfig(**overrides)


def consistency_command(args):
    """Run the simulation, write the files, print the table; returns an exit code."""
    from .consistency import run_consistency

    try:
        config = _config(args)
    except (TypeError, ValueError) as e:
        print(f"sqs-pyro consistency: error: {e}", file=sys.stderr)
        return 2
    out = args.out or DEFAULT_OUT
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()

    def progress(row):
        e = row["excess_risk"]
        print(f"[{time.perf_counter() - t0:6.0f} s] n={row['n']:>6} {row['setting']:<16} excess risk: "
              f"posterior mean {e['posterior_mean']:.4g}, greedy {e['greedy']:.4g} ({row['seconds']:.0f} s)",
              file=sys.stderr, flush=True)

    result = run_consistency(config, progress=None if getattr(args, "quiet", False) else progress)
    with open(os.path.join(out, "consistency.json"), "w") as f:
        json.dump(result.to_dict(), f, indent=1)
    markdown = result.to_markdown()
    with open(os.path.join(out, "consistency.md"), "w") as f:
        f.write(markdown)
    result.plot(os.path.join(out, "consistency.png"))
    print(markdown)
    print(f"wrote consistency.json, consistency.md, consistency.png, consistency.svg in {out}")
    return 0


def main(argv=None):
    """Standalone entry point (``python -m sqs_pyro.analysis.consistency_cli``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="sqs-pyro")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["consistency", *(sys.argv[1:] if argv is None else argv)])
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
