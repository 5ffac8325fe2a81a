"""
The ``sqs-pyro`` command line (also ``python -m sqs_pyro``).

With no subcommand it runs the main job on the embedded default: Fashion-MNIST,
train the base CNN if there is none, compress it with SQS, evaluate greedy MAP
and Bayesian averaging, export, reload, and print one table beside the
baselines.

Example::

    sqs-pyro                                   # the main job (runs/default)
    sqs-pyro --smoke --out runs/smoke          # the same, about a minute
    sqs-pyro compress --config my.toml --set compress.sparsity=0.75 --resume
    torchrun --nproc-per-node 2 -m sqs_pyro compress --smoke
"""

import argparse
import importlib
import json
import os
import sys

from .config import RunConfig

SUBCOMMANDS = ("run", "train-base", "compress", "evaluate", "export", "baselines")
PLUGINS = ("sqs_pyro.analysis.cli", "sqs_pyro.analysis.consistency_cli")


def _common(p):
    p.add_argument("--config", help="TOML run configuration (prior spec included)")
    p.add_argument("--out", help="run directory (default: runs/default, or runs/smoke with --smoke)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set compress.sparsity=0.75 (repeatable)")
    p.add_argument("--model", help="architecture: small-cnn (default), resnet18, resnet50")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="device (default auto)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--num-components", "-K", type=int, dest="num_components", help="codebook size K of every layer")
    p.add_argument("--sparsity", type=float, help="target sparsity of the cubic schedule")
    p.add_argument("--smoke", action="store_true", help="a small, fast version of the run (for CI)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-baselines", action="store_true", help="the main job without the baselines")


def build_parser():
    parser = argparse.ArgumentParser(prog="sqs-pyro", description="Bayesian compression of deep networks (SQS) in Pyro")
    sub = parser.add_subparsers(dest="command")
    helps = {
        "run": "the main job: base model, SQS, evaluation, export, baselines, table (the default)",
        "train-base": "train (or load) the base network",
        "compress": "fit the SQS posterior (checkpointed, resumable)",
        "evaluate": "greedy MAP and Bayesian-averaging accuracy of a compressed run",
        "export": "write the compressed file(s), reload, check, and report sizes",
        "baselines": "run the baselines and SQS side by side and write a table",
    }
    for name in SUBCOMMANDS:
        _common(sub.add_parser(name, help=helps[name]))
    for module in PLUGINS:  # subcommands with their own flags: report, plot, consistency
        importlib.import_module(module).add_parser(sub)
    _common(parser)
    return parser


def load_config(args):
    """The effective config: file, then flags, then ``--set`` overrides."""
    from .pipeline import default_prior_for, smoke_config

    cfg = RunConfig.from_file(args.config) if args.config else RunConfig()
    overrides = []
    if args.out:
        overrides.append(f'out_dir="{args.out}"')
    elif args.smoke and not args.config:
        overrides.append('out_dir="runs/smoke"')
    if args.model:
        overrides.append(f'model.arch="{args.model}"')
    if args.device:
        overrides.append(f'device="{args.device}"')
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.sparsity is not None:
        overrides.append(f"compress.sparsity={args.sparsity}")
    cfg = cfg.override(overrides)
    if args.smoke:
        cfg = smoke_config(cfg)
    if cfg.prior is None:
        cfg = cfg.replace_prior(default_prior_for(cfg.model.arch))
    if args.num_components is not None:
        cfg = cfg.override([f"prior._default.num_components={args.num_components}"])
    return cfg.override(args.set)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "handler", None) is not None:
        return args.handler(args)
    command = args.command or "run"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        cfg = load_config(args)
        from .distributed import init_from_env

        init_from_env(cfg.device)
        return _dispatch(command, cfg, args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"sqs-pyro {command}: error: {e}", file=sys.stderr)
        return 2


def _dispatch(command, cfg, args):
    from . import pipeline

    progress = not args.no_progress
    if command == "run":
        results = pipeline.run_main_job(cfg, resume=args.resume, progress=progress, baselines=not args.no_baselines)
        print(pipeline.format_table(results))
        return 0
    from .distributed import is_main_process

    device = pipeline.resolve_device(cfg.device)
    os.makedirs(cfg.out_dir, exist_ok=True)
    if is_main_process():
        cfg.save(os.path.join(cfg.out_dir, pipeline.CONFIG_NAME))
    train, test, info = pipeline.load_data(cfg)
    net, base_acc = pipeline.base_network(cfg, train, test, info, device, progress)
    if command == "train-base":
        print(f"base {cfg.model.arch} on {info['name']}: test accuracy {base_acc:.4f}")
        return 0
    if command == "compress":
        pipeline.compress(cfg, net, train, device, resume=args.resume, progress=progress)
        if is_main_process():
            print(f"compressed; checkpoint and log in {cfg.out_dir}")
        return 0
    if command == "baselines":
        from .baselines import run_baselines

        _, table = run_baselines(cfg, net, base_acc, train, test, info, device, progress=progress)
        print(table)
        return 0
    model, guide = pipeline.load_compressed_run(cfg, net, len(train), device)
    if command == "evaluate":
        print(json.dumps(pipeline.evaluate_posterior(cfg, model, guide, test, device), indent=2))
    elif command == "export":
        out = pipeline.export_run(cfg, model, guide, test, device)
        for kind, f in out["files"].items():
            print(f"{kind}: {f['path']} {f['bytes']} bytes, reloaded accuracy {f['reloaded_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
