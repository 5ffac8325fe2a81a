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
import contextlib
import importlib
import json
import os
import sys
import traceback

from ..errors import EXIT_CODES, ConfigError, InputFileError, exit_code
from .config import RunConfig, default_prior_for, smoke_config
from .files import CONFIG_NAME

SUBCOMMANDS = ("run", "train-base", "compress", "evaluate", "export", "baselines")
PLUGINS = ("sqs_pyro.analysis.cli", "sqs_pyro.analysis.consistency_cli")


#: Prefix of the run flags' destinations on the root parser (given before the subcommand).
_BEFORE = "before_"


#: What ``--out`` names, per verb (every run verb takes the run directory; the plugins' ``--out`` differs).
OUT_HELP = {
    "run": "run directory to write: base.pt, checkpoint.pt, config.toml, compressed*.safetensors, results.json",
    "train-base": "run directory to write the base network to (base.pt, unless model.base_checkpoint is set)",
    "compress": "run directory to write the SQS checkpoint (checkpoint.pt), its log and config.toml to",
    "evaluate": "run directory to read (a compressed run: checkpoint.pt, config.toml); nothing is written",
    "export": "run directory to read the checkpoint from and write compressed*.safetensors into",
    "baselines": "run directory: the baselines write their files and table under RUN_DIR/baselines/",
}
_ROOT_OUT_HELP = ("the run directory (default: runs/default, or runs/smoke with --smoke); per verb, see "
                  "sqs-pyro VERB --help. report's --out is an HTML file, plot's and consistency's a folder: "
                  "give those after the verb")


def _common(p, before=False, verb=None):
    """Add the run flags to ``p``. The root parser (``before``) keeps them under other names, and a subcommand
    leaves a flag it was not given absent, so that ``sqs-pyro --smoke compress`` = ``sqs-pyro compress --smoke``
    (see :func:`_merge_run_flags`). ``verb`` selects the help of ``--out`` (:data:`OUT_HELP`)."""
    def add(*flags, **kw):
        if before:
            name = kw.get("dest") or flags[0].lstrip("-").replace("-", "_")
            kw["dest"] = _BEFORE + name
            if kw.get("action") is None and "choices" not in kw:
                kw.setdefault("metavar", name.upper())
        else:
            kw["default"] = argparse.SUPPRESS
        p.add_argument(*flags, **kw)

    add("--config", help="TOML run configuration (prior spec included)")
    out_help = _ROOT_OUT_HELP if verb is None else OUT_HELP[verb] + " (default: runs/default, or runs/smoke with --smoke)"
    add("--out", metavar="RUN_DIR", help=out_help)
    add("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set compress.sparsity=0.75 (repeatable)")
    add("--model", help="architecture: small-cnn (default), resnet18, resnet50")
    add("--device", choices=["auto", "cpu", "cuda"], help="device (default auto)")
    add("--seed", type=int, help="random seed")
    add("--num-components", "-K", type=int, dest="num_components", help="codebook size K of every layer")
    add("--sparsity", type=float, help="target sparsity of the cubic schedule")
    add("--recipe", choices=["sqs", "paper"],
        help="training recipe (sqs_pyro.run.recipes): sqs (default, measured best) or paper (the paper's)")
    add("--smoke", action="store_true",
        help="a small, fast version of the run (for CI); it sets only keys that the --config file "
        "does not set (flags and --set still override it)")
    add("--resume", action="store_true",
        help="continue the run in --out from its last checkpoint (config: --config, else the run "
        "directory's config.toml; a change to a key of the run's identity is an error)")
    add("--debug", action="store_true", help="show the traceback of an error")
    add("--no-progress", action="store_true", help="no progress bars")
    add("--threads", type=int, help="torch CPU threads")
    add("--no-baselines", action="store_true", help="the main job without the baselines")


class _Parser(argparse.ArgumentParser):
    """The root parser: run flags count the same before and after the subcommand."""

    def parse_known_args(self, args=None, namespace=None):
        ns, extra = super().parse_known_args(args, namespace)
        return _merge_run_flags(self, ns), extra


def _merge_run_flags(parser, ns):
    before = {k[len(_BEFORE):]: v for k, v in vars(ns).items() if k.startswith(_BEFORE)}
    for k in before:
        delattr(ns, _BEFORE + k)
    plugin = ns.command is not None and ns.command not in SUBCOMMANDS
    if plugin:  # report / plot / consistency have flags of their own, some with the same names
        given = [k for k, v in before.items() if v not in (None, False, []) and k != "debug"]
        if given:
            parser.error(f"--{given[0].replace('_', '-')} given before '{ns.command}': this command's flags go "
                         f"after it (sqs-pyro {ns.command} --help lists them)")
        ns.debug = getattr(ns, "debug", False) or before["debug"]
        return ns
    for k, v in before.items():
        if k == "set":  # --set before and after the subcommand: both, in order
            ns.set = v + getattr(ns, "set", [])
        elif not hasattr(ns, k):
            setattr(ns, k, v)
        elif v not in (None, False) and getattr(ns, k) != v:
            parser.error(f"--{k.replace('_', '-')} given twice, before and after the subcommand, with different "
                         "values: give it once")
    return ns


def build_parser():
    parser = _Parser(prog="sqs-pyro", description="Bayesian compression of deep networks (SQS) in Pyro")
    sub = parser.add_subparsers(dest="command", parser_class=argparse.ArgumentParser)
    helps = {
        "run": "the main job: base model, SQS, evaluation, export, baselines, table (the default)",
        "train-base": "train (or load) the base network",
        "compress": "fit the SQS posterior (checkpointed, resumable)",
        "evaluate": "greedy MAP and Bayesian-averaging accuracy of a compressed run",
        "export": "write the compressed file(s), reload, check, and report sizes",
        "baselines": "run the baselines and SQS side by side and write a table",
    }
    for name in SUBCOMMANDS:
        _common(sub.add_parser(name, help=helps[name]), verb=name)
    for module in PLUGINS:  # subcommands with their own flags: report, plot, consistency
        importlib.import_module(module).add_parser(sub)
    for name, p in sub.choices.items():
        if name not in SUBCOMMANDS:
            p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    _common(parser, before=True)
    parser.epilog = "exit codes: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items())
    for p in sub.choices.values():
        p.epilog = parser.epilog
    return parser


#: Commands that read an existing run: their config defaults to the run directory's ``config.toml``.
READS_RUN = ("evaluate", "export")


def _file_keys(path):
    """Dotted keys that a TOML config file sets."""
    import tomllib

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict) and k != "prior":
                yield from walk(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    return set(walk(tomllib.loads(open(path, "rb").read().decode("utf-8")), ""))


def load_config(args):
    """The effective config: file, then flags, then ``--set`` overrides."""

    path = args.config
    out = args.out or ("runs/smoke" if args.smoke and not args.config else None)
    if path is None and ((args.command or "run") in READS_RUN or args.resume):
        own = os.path.join(out or RunConfig().out_dir, CONFIG_NAME)
        if os.path.isfile(own):
            path, out = own, out or RunConfig().out_dir
    cfg = RunConfig.from_file(path) if path else RunConfig()
    overrides = []
    if out:
        overrides.append(f"out_dir={json.dumps(out)}")
    if args.model:
        overrides.append(f'model.arch="{args.model}"')
    if args.device:
        overrides.append(f'device="{args.device}"')
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.sparsity is not None:
        overrides.append(f"compress.sparsity={args.sparsity}")
    if args.recipe:
        overrides.append(f'compress.recipe="{args.recipe}"')
    cfg = cfg.override(overrides)
    if args.smoke:
        cfg = smoke_config(cfg, keep=_file_keys(path) if path else ())
    if cfg.prior is None:
        cfg = cfg.replace_prior(default_prior_for(cfg.model.arch))
    if args.num_components is not None:
        cfg = cfg.override([f"prior._default.num_components={args.num_components}"])
    cfg = cfg.override(args.set)
    if os.path.exists(cfg.out_dir) and not os.path.isdir(cfg.out_dir):
        raise InputFileError(f"run directory (--out / out_dir) {cfg.out_dir} is an existing file, not a directory")
    return cfg


def main(argv=None):
    """Run a command; every expected error is one line on stderr and an exit code of :data:`EXIT_CODES`."""
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    try:
        if getattr(args, "handler", None) is not None:
            return args.handler(args)
        if args.threads is not None:
            if args.threads < 1:
                raise ConfigError(f"--threads {args.threads}: must be >= 1")
            import torch

            torch.set_num_threads(args.threads)
        cfg = load_config(args)
        from .distributed import init_from_env

        init_from_env(cfg.device)
        return _dispatch(command, cfg, args)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - the one place errors become exit codes
        code = exit_code(e)
        if getattr(args, "debug", False) or "--debug" in (sys.argv[1:] if argv is None else argv):
            traceback.print_exc()
        message = " ".join(str(e).split()) or type(e).__name__
        if code == 1:
            message = f"internal error ({type(e).__name__}: {message}); rerun with --debug for the traceback"
        elif code == 130:
            message = "interrupted"
        print(f"sqs-pyro {command}: error: {message}", file=sys.stderr)
        return code


def _lock(cfg, command):
    from .distributed import is_main_process
    from .lock import RunDirLock

    return RunDirLock(cfg.out_dir, command) if is_main_process() else contextlib.nullcontext()


def _dispatch(command, cfg, args):
    from . import main_job, pipeline

    progress = not args.no_progress
    if command == "run":
        with _lock(cfg, command):
            results = main_job.run_main_job(cfg, resume=args.resume, progress=progress,
                                            baselines=not args.no_baselines)
        print(main_job.format_table(results))
        return 0
    if command == "evaluate":  # read-only: no lock, nothing written to the run directory
        return _evaluate(cfg, pipeline)
    with _lock(cfg, command):
        return _write_command(command, cfg, args, pipeline, progress)


def _evaluate(cfg, pipeline):
    if not os.path.isdir(cfg.out_dir):
        raise InputFileError(f"run directory {cfg.out_dir} does not exist")
    device = pipeline.resolve_device(cfg.device)
    train, test, info = pipeline.load_data(cfg)
    net, _ = pipeline.base_network(cfg, train, test, info, device, progress=False, train_if_missing=False)
    model, guide = pipeline.load_compressed_run(cfg, net, len(train), device)
    print(json.dumps(pipeline.evaluate_posterior(cfg, model, guide, test, device), indent=2))
    return 0


def _write_command(command, cfg, args, pipeline, progress):
    from .distributed import is_main_process

    device = pipeline.resolve_device(cfg.device)
    if args.resume:
        pipeline.check_resume(cfg)
    os.makedirs(cfg.out_dir, exist_ok=True)
    if is_main_process() and command not in READS_RUN:
        cfg.save(os.path.join(cfg.out_dir, CONFIG_NAME))
    train, test, info = pipeline.load_data(cfg)
    net, base_acc = pipeline.base_network(cfg, train, test, info, device, progress,
                                          train_if_missing=command not in READS_RUN)
    if command == "train-base":
        print(f"base {cfg.model.arch} on {info['name']}: test accuracy {base_acc:.4f}")
        return 0
    if command == "compress":
        pipeline.compress(cfg, net, train, device, resume=args.resume, progress=progress)
        if is_main_process():
            print(f"compressed; checkpoint and log in {cfg.out_dir}")
        return 0
    if command == "baselines":
        from ..baselines import run_baselines

        _, table = run_baselines(cfg, net, base_acc, train, test, info, device, progress=progress)
        print(table)
        return 0
    model, guide = pipeline.load_compressed_run(cfg, net, len(train), device)
    out = pipeline.export_run(cfg, model, guide, test, device)
    for kind, f in out["files"].items():
        print(f"{kind}: {f['path']} {f['bytes']} bytes, reloaded accuracy {f['reloaded_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
