"""
Where the memory of an SQS compression goes: resident memory after each stage
of one SQS fit of the SmolLM2-135M architecture (random weights; every
q/k/v/o/up/down projection compressed, outlier-aware windows, K = 16, as in
``examples/llama_wikipedia.py``), against plain fine-tuning of the same
network, each in a fresh process.

Stages: the network; the SQS model and guide (k-means); the trainer (Adam);
the first steps (peak during them). A short batch keeps activations small, so
the figures are what scales with the model.

Usage::

    python benchmarks/memory_stages.py                          # the example's recipe (learned gates, gate_lr 0)
    python benchmarks/memory_stages.py --recipe sqs             # the default recipe
    python benchmarks/memory_stages.py --layers 2 --tokens 32   # quick look

Results go to ``benchmarks/results/memory_stages_<recipe>.{json,md}``.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import torch

from _machine import machine_info  # noqa: E402
from _memory import status_kib, trim_and_reset_peak  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

#: the example's training choices (examples/_common.py TRANSFORMER_RECIPE, --gate-lr 0 by default)
EXAMPLE = dict(gates="learned", anchors="frozen", refit_codebooks=False, lr_schedule="constant", gate_lr=0.0,
               score="magnitude")


def _mib():
    return status_kib("VmRSS") / 1024


def worker(args):
    torch.set_num_threads(args.threads)
    import pyro
    import transformers  # noqa: F401
    from transformers import LlamaForCausalLM

    from sqs_pyro.run.config import CompressConfig
    from sqs_pyro.guides import SQSGuide
    from sqs_pyro.models import CausalLM, SQSModel
    from sqs_pyro.models.transformers import causal_lm_forward, default_prior_spec
    from sqs_pyro.run.trainer import SQSTrainer
    from train_step import FixedBatch, plain_loss, smollm2_config

    base = _mib()
    stages = []
    mark = lambda name: stages.append((name, round(_mib() - base)))  # noqa: E731
    torch.manual_seed(0)
    net = LlamaForCausalLM(smollm2_config(args.layers))
    mark("network (fp32 weights)")
    ids = torch.randint(0, net.config.vocab_size, (args.batch, args.tokens))
    data = FixedBatch({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ids)
    if args.variant == "plain":
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-6)
        mark("Adam")

        def step():
            optimizer.zero_grad(set_to_none=True)
            x, y = data.get(torch.arange(data.b))
            plain_loss(net, x, y, "causal-lm").backward()
            optimizer.step()
    else:
        pyro.enable_validation(False)
        pyro.settings.set(module_local_params=True)
        if args.recipe == "example":
            net.requires_grad_(False)  # the example trains only the variational parameters
        spec = default_prior_spec(net, num_components=16, window="outlier", blocks=4, tau=1e-3)
        model = SQSModel(net, spec, CausalLM(), num_data=len(data), forward=causal_lm_forward)
        mark("SQS model")
        guide = SQSGuide(model)
        mark("guide (k-means, per-weight rho, mask, group index)")
        choices = EXAMPLE if args.recipe == "example" else {}
        cfg = CompressConfig(recipe="sqs", epochs=10**6, lr=1e-6, pruning="none", checkpoint_every=10**9, **choices)
        trainer = SQSTrainer(model, guide, data, cfg, out_dir=tempfile.mkdtemp(), batch_size=data.b, progress=False)
        mark("trainer")
        step = trainer.step
    trim_and_reset_peak()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    stages.append(("peak during the steps", round(status_kib("VmHWM") / 1024 - base)))
    mark("after the steps")
    print(json.dumps({"variant": args.variant, "stages": stages, "seconds": time.perf_counter() - started,
                      "parameters": sum(p.numel() for p in net.parameters()),
                      "baseline_rss_mib": round(base)}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="example", choices=("example", "sqs"))
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    runs = {}
    for variant in ("plain", "sqs"):
        cmd = [sys.executable, __file__, "--worker", "--variant", variant] + [
            f"--{k}={getattr(args, k)}" for k in ("recipe", "layers", "batch", "tokens", "steps", "threads")]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        runs[variant] = json.loads(lines[-1]) if lines else {"error": proc.stderr.strip().splitlines()[-1:]}
        print(variant, runs[variant], flush=True)
    result = {"command": " ".join(["python", "benchmarks/memory_stages.py"] + (argv or sys.argv[1:])),
              "machine": machine_info("cpu", args.threads), "settings": vars(args), "runs": runs}
    md = [f"# Memory of one SQS fit of the SmolLM2-135M architecture (recipe `{args.recipe}`)", "",
          f"Command: `{result['command']}`; {args.layers} decoder layers, batch {args.batch} x {args.tokens} tokens, "
          f"{args.steps} steps; resident memory (MiB) above the interpreter with its libraries, after each stage.", ""]
    for variant, run in runs.items():
        md += [f"## {variant}", "", "| stage | MiB |", "| --- | --- |"]
        md += [f"| {name} | {mib:,} |" for name, mib in run.get("stages", [])]
        md.append("")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"memory_stages_{args.tag or args.recipe}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
