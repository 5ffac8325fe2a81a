"""
Weight-space error of codebook groupings on SmolLM2-135M, before any training.

SmolLM2-135M arrives as a Q4_1 GGUF: every run of 32 input columns of a row
holds at most 16 uniformly spaced values (a scale and a minimum per block). The
dequantized fp32 "base" therefore favours quantizers whose groups follow that
grid. This script measures, on a few decoder layers, the relative squared
error ``||W_hat - W||^2 / ||W||^2`` of

* round-to-nearest with an asymmetric 4-bit grid per group of ``g`` columns
  (scale and minimum at fp16: GPTQ's and AutoRound's grid before their error
  compensation), and
* k-means codebooks (sqs-pyro's init, :func:`sqs_pyro.guides.kmeans.kmeans_groups`)
  per output channel and per group of columns, nearest-centre assignment,

with the honest bits per weight of each (codes plus fp16 side information).
It explains the SQS rows of ``benchmarks/results/llm_baselines_smollm2.md``.

    python benchmarks/llm_grid_error.py            # about a minute; needs runs/smollm2_fp32 (examples/llama_blockwise.py makes it)

Results: ``benchmarks/results/llm_grid_error_smollm2.{json,md}``.
"""

import argparse
import json
import math
import os
import pathlib

import torch

from _machine import machine_info

from sqs_pyro.guides.kmeans import kmeans_groups

ROOT = pathlib.Path(__file__).resolve().parent.parent
MATRICES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.up_proj",
            "mlp.down_proj")


def rtn_groups(w, group_size, bits=4):
    """Asymmetric round-to-nearest per run of ``group_size`` columns, fp16 scale and minimum."""
    rows, cols = w.shape
    x = w.reshape(rows, cols // group_size, group_size)
    lo, hi = x.min(-1, keepdim=True).values, x.max(-1, keepdim=True).values
    scale = ((hi - lo) / (2**bits - 1)).half().float().clamp_min(1e-12)
    lo = lo.half().float()
    q = ((x - lo) / scale).round().clamp(0, 2**bits - 1)
    return (q * scale + lo).reshape(rows, cols)


def kmeans_columns(w, group_size, num_clusters):
    """k-means per run of ``group_size`` columns of a row (``group_size = cols``: per output channel), fp16 centres."""
    rows, cols = w.shape
    x = w.reshape(-1, group_size)
    locs = kmeans_groups(x.double(), num_clusters).locs.half().float()
    idx = (x.unsqueeze(-1) - locs.unsqueeze(1)).abs().argmin(-1)
    return torch.gather(locs, 1, idx).reshape(rows, cols)


def methods(cols):
    """``(label, bits per weight, function)`` of every grouping compared for a matrix with ``cols`` columns."""
    out = [(f"RTN w4 g{g} (scale + min)", 4 + 32 / g, lambda w, g=g: rtn_groups(w, g)) for g in (32, 64, 192)]
    out.append(("k-means K=16 per channel", 4 + 16 * 16 / cols, lambda w: kmeans_columns(w, w.shape[1], 16)))
    out.append(("k-means K=8 per channel", 3 + 16 * 8 / cols, lambda w: kmeans_columns(w, w.shape[1], 8)))
    out.append(("k-means K=8 g96", 3 + 16 * 8 / 96, lambda w: kmeans_columns(w, 96, 8)))
    out.append(("k-means K=4 g32", 2 + 16 * 4 / 32, lambda w: kmeans_columns(w, 32, 4)))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="0,14,29")
    p.add_argument("--cache", default=str(ROOT / "runs" / "smollm2_fp32"))
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    net = AutoModelForCausalLM.from_pretrained(args.cache, dtype=torch.float32)
    layers = [int(i) for i in args.layers.split(",")]
    errors, bits = {}, {}
    for layer in layers:
        for m in MATRICES:
            w = net.get_submodule(f"model.layers.{layer}.{m}").weight.detach()
            for label, b, fn in methods(w.shape[1]):
                e = ((fn(w) - w).square().sum() / w.square().sum()).item()
                errors.setdefault(label, []).append(e)
                bits.setdefault(label, []).append((b, w.numel()))
    rows = [{"method": label, "bits_per_weight": sum(b * n for b, n in bits[label]) / sum(n for _, n in bits[label]),
             "relative_error_mean": sum(e) / len(e), "relative_error_max": max(e)} for label, e in errors.items()]
    results = {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32)", "layers": layers,
               "matrices": list(MATRICES), "machine": machine_info("cpu", 1), "rows": rows}
    lines = [
        "# Weight error of codebook groupings on SmolLM2-135M (no training, no error compensation)",
        "",
        f"Layers {layers}, matrices {', '.join(MATRICES)} ({len(layers) * len(MATRICES)} matrices); relative error "
        "||W_hat - W||^2 / ||W||^2, mean and max over the matrices; bits = codes + fp16 side information per weight. "
        "The base is a dequantized Q4_1 model (32-column blocks of 16 uniform levels), so RTN g32 is exact. "
        "Command: `python benchmarks/llm_grid_error.py`.",
        "",
        "| grouping | bits/weight | relative error (mean) | (max) |",
        "| --- | --- | --- | --- |",
    ] + [f"| {r['method']} | {r['bits_per_weight']:.3f} | {r['relative_error_mean']:.2e} | {r['relative_error_max']:.2e} |"
         for r in rows]
    md = "\n".join(lines) + "\n"
    os.makedirs(args.results_dir, exist_ok=True)
    for ext, text in (("json", json.dumps(results, indent=2) + "\n"), ("md", md)):
        path = os.path.join(args.results_dir, f"llm_grid_error_smollm2.{ext}")
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    print(md)
    return results


if __name__ == "__main__":
    main()
