"""
Benchmark of whole training steps: an SQS step against a plain fine-tuning step
of the same network, batch and optimizer (issue 14).

Variants, each in a fresh process (so that its peak memory is its own):

- ``plain``: fine-tuning, every parameter of the network trained with Adam:
  forward, loss, backward, optimizer step;
- ``sqs``: one step of :class:`~sqs_pyro.run.trainer.SQSTrainer` with the default
  recipe (:mod:`sqs_pyro.run.recipes`): forward at the posterior-mean weights, the
  ELBO with every site's KL, backward, Adam step, the trainer's finiteness
  checks. The mask is set at ``--sparsity`` by anchor magnitude before the
  timed steps and stays fixed (the steps after the last mask falls, 70% of a
  default run).

Models: ``small-cnn`` (the default job's network), ``resnet18`` (1-channel
stem), ``minilm`` (a ``BertConfig`` of all-MiniLM-L6-v2's size), ``smollm2-layer``
(one decoder layer of SmolLM2-135M, regression on its output) and ``smollm2``
(the whole SmolLM2-135M architecture, causal-LM likelihood, outlier-aware
windows as in ``examples/llama_wikipedia.py``). Weights are random: the step's
cost does not depend on them (the one-hot shortcut of the hot path sees
k-means codebooks of random weights, as of trained ones).

Rounds alternate the order of the variants. The time ratio is the median over
rounds of (SQS median step / plain median step of the same round), so the
drift of a shared machine's load cancels; the CPU-time ratio is the same with
the process's CPU time (``time.process_time``), which on an overloaded machine
(more runnable threads than cores) says more about the work done than the
wall clock, whose every parallel region waits for a descheduled thread; the
memory ratio is the ratio of the median peaks. Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on the
CPU the peak resident set size during the timed steps (``VmHWM`` reset after
the warm-up) minus the resident size after imports, i.e. everything the run
holds: weights, variational parameters, optimizer states, activations.

Usage::

    python benchmarks/train_step.py                                  # every model, 2 threads, CPU
    python benchmarks/train_step.py --models minilm --rounds 1 --steps 2
    python benchmarks/train_step.py --models minilm --profile 25     # cProfile of the SQS steps
    python benchmarks/train_step.py --device cuda --tag cuda         # on a GPU

Results go to ``benchmarks/results/train_step_<tag>.{json,md}`` (tag: the device).
"""

import argparse
import cProfile
import io
import json
import os
import pathlib
import pstats
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from _machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from _memory import status_kib, trim_and_reset_peak  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
VARIANTS = ("plain", "sqs")
MODELS = ("small-cnn", "resnet18", "minilm", "smollm2-layer", "smollm2")
#: batch per model: (batch size, sequence length or None)
BATCHES = {"small-cnn": (128, None), "resnet18": (128, None), "minilm": (32, 64), "smollm2-layer": (4, 256),
           "smollm2": (4, 256)}


def smollm2_config(num_hidden_layers=30):
    """The architecture of SmolLM2-135M (``LlamaConfig``; 134.5M parameters with 30 layers)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=num_hidden_layers,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
                       rope_theta=100000.0, tie_word_embeddings=True)


class DecoderLayer(torch.nn.Module):
    """One Llama decoder layer with its rotary embedding: hidden states ``(b, T, d)`` in and out."""

    def __init__(self, config):
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

        self.layer = LlamaDecoderLayer(config, layer_idx=0)
        self.rotary = LlamaRotaryEmbedding(config)

    def forward(self, x):
        position_ids = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        out = self.layer(x, position_ids=position_ids, position_embeddings=self.rotary(x, position_ids))
        return out[0] if isinstance(out, tuple) else out


def build(name, args):
    """``dict(net, x, y, spec, likelihood, what)``: the network, one batch and the SQS prior spec."""
    from sqs_pyro.models.transformers import default_prior_spec

    g = torch.Generator().manual_seed(0)
    b, t = BATCHES[name]
    b = args.batch or b
    t = args.seq_len or t
    k = args.num_components
    if name in ("small-cnn", "resnet18"):
        from sqs_pyro.models.cnn import build_cnn
        from sqs_pyro.run.config import default_prior_for

        return dict(net=build_cnn(name), x=torch.randn(b, 1, 28, 28, generator=g), y=torch.randint(0, 10, (b,), generator=g),
                    spec=default_prior_for(name, k), likelihood="categorical", batch=f"{b} x 1 x 28 x 28",
                    what=f"{name} (sqs_pyro.models.cnn), Fashion-MNIST-shaped input, random weights")
    if name == "minilm":
        from transformers import BertConfig, BertForSequenceClassification

        cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536, num_labels=3)
        x = {"input_ids": torch.randint(1000, cfg.vocab_size, (b, t), generator=g),
             "attention_mask": torch.ones(b, t, dtype=torch.long)}
        return dict(net=BertForSequenceClassification(cfg), x=x, y=torch.randint(0, 3, (b,), generator=g),
                    spec=default_prior_spec("bert", num_components=k), likelihood="categorical", batch=f"{b} x {t} tokens",
                    what="BertConfig of all-MiniLM-L6-v2 (6 layers, 384 wide), 3-class head, random weights")
    spec = default_prior_spec("llama", num_components=k, window=args.window, blocks=4, tau=1e-3)
    if name == "smollm2-layer":
        cfg = smollm2_config(1)
        x = torch.randn(b, t, cfg.hidden_size, generator=g)
        return dict(net=DecoderLayer(cfg), x=x, y=torch.randn(b, t, cfg.hidden_size, generator=g), spec=spec,
                    likelihood="gaussian", batch=f"{b} x {t} x {cfg.hidden_size} hidden states",
                    what=f"one SmolLM2-135M decoder layer ({args.window} windows), Gaussian regression, random weights")
    cfg = smollm2_config()
    ids = torch.randint(0, cfg.vocab_size, (b, t), generator=g)
    x = {"input_ids": ids, "attention_mask": torch.ones(b, t, dtype=torch.long)}
    from transformers import LlamaForCausalLM

    return dict(net=LlamaForCausalLM(cfg), x=x, y=ids, spec=spec, likelihood="causal-lm", batch=f"{b} x {t} tokens",
                what=f"SmolLM2-135M architecture ({args.window} windows), causal LM, random weights")


class FixedBatch:
    """Training data of one batch repeated: ``get(idx)`` returns the rows ``idx % batch``."""

    def __init__(self, x, y, repeats=4):
        self.x, self.y, self.b = x, y, len(y)
        self.n = self.b * repeats

    def __len__(self):
        return self.n

    def get(self, idx):
        idx = idx % self.b
        x = {k: v[idx] for k, v in self.x.items()} if isinstance(self.x, dict) else self.x[idx]
        return x, self.y[idx]


def _to(x, device):
    return {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)


def plain_loss(net, x, y, likelihood):
    """The fine-tuning loss (mean over the batch)."""
    if likelihood == "causal-lm":
        return net(**x, labels=y, use_cache=False).loss
    out = net(**x) if isinstance(x, dict) else net(x)
    out = getattr(out, "logits", out)
    if likelihood == "gaussian":
        return torch.nn.functional.mse_loss(out, y)
    return torch.nn.functional.cross_entropy(out, y)


def make_step(args, variant, device):
    """Build ``args.model`` for ``variant``; returns ``(step, info)``."""
    import pyro

    from sqs_pyro.run.config import CompressConfig
    from sqs_pyro.guides import SQSGuide
    from sqs_pyro.models import SQSModel
    from sqs_pyro.models.likelihoods import get_likelihood
    from sqs_pyro.run.schedules import global_topk_masks
    from sqs_pyro.run.trainer import SQSTrainer

    torch.manual_seed(0)
    built = build(args.model, args)
    net = built["net"].to(device).train()
    data = FixedBatch(_to(built["x"], device), built["y"].to(device))
    info = {k: built[k] for k in ("what", "batch")}
    info["parameters"] = sum(p.numel() for p in net.parameters())
    if variant == "plain":
        optimizer = torch.optim.Adam([p.requires_grad_() for p in net.parameters()], lr=1e-6)
        counter = iter(range(10**9))

        def step():
            j = next(counter)
            x, y = data.get(torch.arange(j * data.b, (j + 1) * data.b))
            optimizer.zero_grad(set_to_none=True)
            loss = plain_loss(net, x, y, built["likelihood"])
            loss.backward()
            optimizer.step()
            return loss.detach()

        return step, info
    pyro.enable_validation(False)
    pyro.settings.set(module_local_params=True)
    forward = None
    if built["likelihood"] == "causal-lm":
        from sqs_pyro.models.transformers import causal_lm_forward as forward
    model = SQSModel(net, built["spec"], get_likelihood(built["likelihood"]), num_data=len(data), forward=forward)
    started = time.perf_counter()
    guide = SQSGuide(model)
    info["guide_init_s"] = time.perf_counter() - started
    cfg = CompressConfig(recipe=args.recipe, epochs=10**6, lr=1e-6, anchor_lr=1e-6, pruning="none")
    trainer = SQSTrainer(model, guide, data, cfg, out_dir=tempfile.mkdtemp(), batch_size=data.b, progress=False)
    if args.sparsity > 0:
        guide.set_masks(global_topk_masks({n: s.anchor.detach().abs() for n, s in model.sites.items()}, args.sparsity))
        if trainer.cfg.refit_codebooks:
            guide.refit_codebooks()
    info["compressed_weights"] = sum(s.anchor.numel() for s in model.sites.values())
    info["sites"] = len(model.sites)
    info["recipe"] = args.recipe
    return trainer.step, info


def worker(args):
    """One variant of one model in this process; prints a JSON line."""
    torch.set_num_threads(args.threads)
    device = args.device
    import pyro  # noqa: F401  (the libraries' memory belongs to the baseline)
    import transformers  # noqa: F401

    import sqs_pyro.guides  # noqa: F401
    import sqs_pyro.run.trainer  # noqa: F401

    out = {"model": args.model, "variant": args.variant}
    cuda = device == "cuda"
    baseline_kib = None if cuda else status_kib("VmRSS")
    try:
        step, info = make_step(args, args.variant, device)
        out.update(info)
        for _ in range(args.warmup):
            loss = step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            out["peak_reset"] = trim_and_reset_peak()
            out["rss_before_steps_bytes"] = (status_kib("VmRSS") - baseline_kib) * 1024
        profiler = cProfile.Profile() if args.profile and args.variant != "plain" else None
        times, cpu = [], []
        for _ in range(args.steps):
            started, cpu_started = time.perf_counter(), time.process_time()
            if profiler:
                profiler.enable()
            loss = step()
            if cuda:
                torch.cuda.synchronize()
            if profiler:
                profiler.disable()
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
        out["step_s"], out["cpu_s"] = times, cpu
        out["loss"] = float(loss)
        if cuda:
            out["peak_bytes"] = torch.cuda.max_memory_allocated()
        else:
            out["peak_bytes"] = (status_kib("VmHWM") - baseline_kib) * 1024
            out["baseline_rss_bytes"] = baseline_kib * 1024
        if profiler:
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.profile)
            out["profile"] = text.getvalue()
    except torch.OutOfMemoryError as e:
        out["error"] = f"out of memory: {str(e).splitlines()[0]}"
    print(json.dumps(out))


# ----------------------------------------------------------------------------- driver

_FORWARDED = ("device", "threads", "steps", "warmup", "num_components", "batch", "seq_len", "sparsity", "recipe",
              "window", "profile")


def run_worker(args, model, variant):
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--variant", variant]
    for name in _FORWARDED:
        value = getattr(args, name)
        if value is not None:
            cmd += ["--" + name.replace("_", "-"), str(value)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        return {"model": model, "variant": variant, "error": tail[-1][-300:]}
    return json.loads(lines[-1])


def summarize(runs):
    """Medians per variant, and the SQS/plain time ratio paired by round and the memory ratio."""
    by_variant = {}
    for r in runs:
        by_variant.setdefault(r["variant"], []).append(r)
    summary = {}
    for variant, rs in by_variant.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            summary[variant] = {"error": rs[0]["error"]}
            continue
        steps = [t for r in ok for t in r["step_s"]]
        summary[variant] = {"step_s_median": statistics.median(steps), "step_s_min": min(steps),
                            "step_s_max": max(steps), "peak_bytes_median": statistics.median(r["peak_bytes"] for r in ok),
                            "runs": len(ok)}
    plain = summary.get("plain")
    sqs = summary.get("sqs")
    if plain and sqs and "error" not in plain and "error" not in sqs:
        plain_by_round = {r["round"]: r for r in by_variant["plain"] if "error" not in r}
        paired = [statistics.median(r["step_s"]) / statistics.median(plain_by_round[r["round"]]["step_s"])
                  for r in by_variant["sqs"] if "error" not in r and r["round"] in plain_by_round]
        sqs["time_ratios_per_round"] = paired
        sqs["time_ratio"] = statistics.median(paired)
        cpu = [statistics.median(r["cpu_s"]) / statistics.median(plain_by_round[r["round"]]["cpu_s"])
               for r in by_variant["sqs"] if "error" not in r and r["round"] in plain_by_round]
        sqs["cpu_ratio"] = statistics.median(cpu)
        sqs["time_ratio_pooled"] = sqs["step_s_median"] / plain["step_s_median"]
        sqs["memory_ratio"] = sqs["peak_bytes_median"] / plain["peak_bytes_median"]
    return summary


GOALS = {"time_ratio": 1.15, "memory_ratio": 1.2}


def markdown(result):
    m, s = result["machine"], result["settings"]
    lines = [
        f"# Whole training step: SQS against plain fine-tuning ({m['device']})",
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['threads']} thread(s) used"
        + (f", GPU {m['gpu']}" if "gpu" in m else "") + f"; torch {m['torch']}, Python {m['python']}.",
        f"Load average at start: {tuple(round(v, 2) for v in m.get('load_average_at_start', ()))}. "
        + (result.get("note") or ""),
        f"Command: `{result['command']}`",
        "",
        f"SQS: `SQSTrainer.step` with recipe `{s['recipe']}`, K = {s['num_components']}, mask fixed at "
        f"{s['sparsity']:.0%} sparsity; plain: Adam on every parameter. Each variant in a fresh process; "
        f"{s['rounds']} round(s) x {s['steps']} timed steps after {s['warmup']} warm-up step(s). "
        f"Goals: time ratio <= {GOALS['time_ratio']}, memory ratio <= {GOALS['memory_ratio']}. "
        f"Peak memory: {result['peak_memory_method']}.",
        "",
        "| model | batch | plain step (s) | SQS step (s) | time ratio | CPU-time ratio | plain peak (MiB) | SQS peak (MiB) "
        "| memory ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, block in result["models"].items():
        p, q = block["summary"].get("plain", {}), block["summary"].get("sqs", {})
        if "error" in p or "error" in q or not p or not q:
            lines.append(f"| {model} | {block.get('batch', '')} | {p.get('error', '')[:60]} | {q.get('error', '')[:60]} "
                         "| | | | | |")
            continue
        mark = lambda key: "" if q[key] <= GOALS[key] else " (missed)"  # noqa: E731
        lines.append(
            f"| {model} | {block.get('batch', '')} | {p['step_s_median']:.3f} | {q['step_s_median']:.3f} | "
            f"{q['time_ratio']:.2f}x{mark('time_ratio')} | {q['cpu_ratio']:.2f}x | {p['peak_bytes_median'] / 2**20:.0f} | "
            f"{q['peak_bytes_median'] / 2**20:.0f} | {q['memory_ratio']:.2f}x{mark('memory_ratio')} |")
    lines.append("")
    for model, block in result["models"].items():
        lines.append(f"- {model}: {block.get('what', '')}; {block.get('parameters', 0):,} parameters, "
                     f"{block.get('compressed_weights', 0):,} compressed weights in {block.get('sites', '?')} sites; "
                     f"guide initialization {block.get('guide_init_s', float('nan')):.1f} s; per-round time ratios "
                     + ", ".join(f"{r:.2f}" for r in block["summary"].get("sqs", {}).get("time_ratios_per_round", [])))
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--num-components", type=int, default=16)
    p.add_argument("--batch", type=int, default=None, help="batch size (default: per model)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: per model)")
    p.add_argument("--sparsity", type=float, default=0.5, help="fixed mask sparsity of the SQS steps")
    p.add_argument("--recipe", default="sqs", help="sqs_pyro.run.recipes preset of the SQS steps")
    p.add_argument("--window", default="outlier", help="windows of the SmolLM2 models (layer, equal, outlier)")
    p.add_argument("--profile", type=int, default=None, help="print the top N functions (cProfile) of the SQS steps")
    p.add_argument("--note", default="", help="a sentence for the results file (e.g. the machine's load)")
    p.add_argument("--tag", default=None, help="results file suffix (default: the device)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    models = args.models.split(",")
    for name in models:
        if name not in MODELS:
            p.error(f"unknown model {name!r}; choose from {MODELS}")
    result = {
        "command": " ".join(["python", "benchmarks/train_step.py"] + (argv if argv is not None else sys.argv[1:])),
        "machine": machine_info(args.device, args.threads),
        "note": args.note,
        "settings": {k: getattr(args, k) for k in ("num_components", "rounds", "steps", "warmup", "sparsity", "recipe",
                                                   "window", "batch", "seq_len")},
        "peak_memory_method": ("torch.cuda.max_memory_allocated" if args.device == "cuda" else
                               "peak RSS (VmHWM, reset after the warm-up) during the timed steps minus RSS after imports"),
        "models": {},
    }
    for model in models:
        runs = []
        for r in range(args.rounds):
            for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                run = run_worker(args, model, variant)
                run["round"] = r
                runs.append(run)
                brief = run.get("error", "")[:300] or (f"median step {statistics.median(run['step_s']):.3f} s, "
                                                       f"peak {run['peak_bytes'] / 2**20:.0f} MiB")
                print(f"[{model} round {r + 1}] {variant}: {brief}", flush=True)
                if run.get("profile"):
                    print(run["profile"], flush=True)
        block = {"runs": runs, "summary": summarize(runs)}
        for run in runs:
            for key in ("what", "batch", "parameters", "compressed_weights", "sites", "guide_init_s"):
                if key in run and key not in block:
                    block[key] = run[key]
        result["models"][model] = block
        sqs = block["summary"].get("sqs", {})
        if "time_ratio" in sqs:
            print(f"{model}: SQS {sqs['time_ratio']:.2f}x time ({sqs['cpu_ratio']:.2f}x CPU time), "
                  f"{sqs['memory_ratio']:.2f}x peak memory of plain", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"train_step_{args.tag or args.device}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
