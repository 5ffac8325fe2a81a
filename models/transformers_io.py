"""
Compressed transformers models on disk: the :mod:`sqs_pyro.export` file with
the model's config, loaded back into a normal transformers model.

:func:`save_compressed_pretrained` writes the compressed tensors (codebook,
bit-packed codes, mask), every other tensor of the state dict dense, and in
the file's metadata the model class, its config (``config.to_dict()``, without
a GGUF/bitsandbytes ``quantization_config``) and the tied names. A storage
shared by several names (``lm_head.weight`` tied to the input embeddings) is
saved once. :func:`load_compressed_pretrained` rebuilds the config
(``CONFIG_MAPPING[model_type].from_dict``) and the model class from it, loads
the rebuilt weights (bit-exact to the greedy weights) and returns the model in
eval mode, ready for ``generate``. :func:`export_pretrained` writes, reloads and
checks (the export verb, :func:`sqs_pyro.export.export_checked`); :func:`export_sqs`
does it for a fitted SQS model and guide.

Example::

    >>> import os, tempfile, torch
    >>> from transformers import Qwen2Config, Qwen2ForCausalLM
    >>> from sqs_pyro.export import CompressedTensor
    >>> cfg = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                   num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    >>> net = Qwen2ForCausalLM(cfg)
    >>> w = net.model.layers[0].self_attn.q_proj.weight
    >>> ct = CompressedTensor.from_dense(torch.where(w > 0, 0.5, 0.0))
    >>> path = os.path.join(tempfile.mkdtemp(), "qwen2.sqs.safetensors")
    >>> manifest = save_compressed_pretrained(path, net, {"model.layers.0.self_attn.q_proj.weight": ct})
    >>> manifest["metadata"]["transformers"]["tied"]
    {'lm_head.weight': 'model.embed_tokens.weight'}
    >>> back = load_compressed_pretrained(path)
    >>> torch.equal(back.model.layers[0].self_attn.q_proj.weight, ct.to_dense())
    True
    >>> back.lm_head.weight is back.model.embed_tokens.weight
    True
"""

import torch

from sqs_pyro.export import CompressedFileError, export_checked, load, save
from sqs_pyro.guides import compressed_weights

__all__ = [
    "export_pretrained",
    "export_sqs",
    "load_compressed_pretrained",
    "save_compressed_pretrained",
    "transformers_config_dict",
]

#: Metadata key under which the transformers description is stored.
META_KEY = "transformers"
_DROP_CONFIG_KEYS = ("quantization_config", "_name_or_path")


def transformers_config_dict(config):
    """``config.to_dict()`` without the fields that tie it to a checkpoint on disk or to a quantizer."""
    d = config.to_dict()
    for key in _DROP_CONFIG_KEYS:
        d.pop(key, None)
    return d


def _storage_key(t):
    return (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def save_compressed_pretrained(path, net, compressed, *, metadata=None, codebook_dtype="float16",
                               entropy_coded=False, round_codebook=False):
    """
    Write a transformers model: ``compressed`` tensors compressed, the rest of
    ``net.state_dict()`` dense, each storage once, the config in the metadata.

    :param net: the transformers model (its dense tensors are saved as they are;
        pass the greedy network so that dense and compressed parts belong together).
    :param dict compressed: ``parameter name -> CompressedTensor``.
    :param dict metadata: extra JSON-serializable metadata (method, data, ...).
    :returns: the manifest of :func:`sqs_pyro.export.save`.
    """
    state = net.state_dict(keep_vars=True)
    unknown = sorted(set(compressed) - set(state))
    if unknown:
        raise ValueError(f"compressed tensors {unknown[:5]} are not in {type(net).__name__}'s state dict")
    first, tied, dense = {}, {}, {}
    for name in compressed:  # a tensor tied to a compressed one is an alias of it
        first[_storage_key(state[name])] = name
    for name, t in state.items():
        if name in compressed:
            continue
        key = _storage_key(t)
        if key in first:
            tied[name] = first[key]
            continue
        first[key] = name
        dense[name] = t.detach()
    info = {
        "class": type(net).__name__,
        "config": transformers_config_dict(net.config),
        "tied": tied,
    }
    try:
        import transformers

        info["transformers_version"] = transformers.__version__
    except ImportError:  # pragma: no cover - a transformers model implies transformers
        pass
    meta = {META_KEY: info, **(metadata or {})}
    return save(path, compressed, dense, metadata=meta, codebook_dtype=codebook_dtype,
                entropy_coded=entropy_coded, round_codebook=round_codebook)


def _model_class(name):
    import transformers

    cls = getattr(transformers, name, None)
    if cls is None:
        raise CompressedFileError(f"transformers {transformers.__version__} has no model class {name!r}")
    return cls


def load_compressed_pretrained(path, model_class=None, dtype=torch.float32):
    """
    A normal transformers model from a file written by :func:`save_compressed_pretrained`.

    :param model_class: the transformers class to build (default: the one stored).
    :param torch.dtype dtype: dtype of the rebuilt compressed tensors (and of the model).
    :returns: the model, in eval mode.
    :raises CompressedFileError: for a file without a transformers description,
        or whose tensors do not match the model the config builds.
    """
    from transformers import CONFIG_MAPPING

    compressed, dense, manifest = load(path)
    info = manifest["metadata"].get(META_KEY)
    if not info:
        raise CompressedFileError(f"{path}: no transformers model description in the metadata; use sqs_pyro.export.load_into")
    config_dict = dict(info["config"])
    config = CONFIG_MAPPING[config_dict["model_type"]].from_dict(config_dict)
    cls = model_class or _model_class(info["class"])
    net = cls(config).to(dtype)
    state = {name: ct.to_dense(dtype) for name, ct in compressed.items()}
    state.update(dense)
    for alias, source in info.get("tied", {}).items():
        state[alias] = state[source]
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CompressedFileError(
            f"{path}: tensors do not match {cls.__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    net.load_state_dict(state, strict=True)
    loaded = net.state_dict()
    for alias, source in info.get("tied", {}).items():
        if not torch.equal(loaded[alias], state[source]):
            raise CompressedFileError(f"{path}: tied tensor {alias!r} does not equal {source!r} after loading")
    return net.eval()


def export_pretrained(path, net, compressed, *, metadata=None, codebook_dtype="float16", entropy_coded=True,
                      reload_entropy_coded=True):
    """
    :func:`sqs_pyro.export.export_checked` for a transformers model: written with
    :func:`save_compressed_pretrained`, read back with :func:`load_compressed_pretrained`
    (a fresh model from the file alone) and checked bit-exact to ``net``.

    Loading builds a fresh model, which draws from torch's global random generator;
    ``reload_entropy_coded=False`` reads back the plain file only.

    :returns: ``{"plain": ExportedFile[, "entropy_coded": ExportedFile]}``.
    """
    return export_checked(path, net, compressed, metadata=metadata, codebook_dtype=codebook_dtype,
                          entropy_coded=entropy_coded, writer=save_compressed_pretrained,
                          reader=load_compressed_pretrained, reload_entropy_coded=reload_entropy_coded)


def export_sqs(path, model, guide, *, codebook_dtype="float16", prune="posterior", entropy_coded=False, metadata=None):
    """
    Export a fitted SQS model of a transformers network: its greedy MAP weights
    (:func:`~sqs_pyro.guides.compressed_weights`) through :func:`export_pretrained`.

    :returns: ``(manifest, greedy_net)``; loading the file gives ``greedy_net``'s tensors exactly.
    """
    compressed, greedy = compressed_weights(model, guide, codebook_dtype=codebook_dtype, prune=prune)
    files = export_pretrained(path, greedy, compressed, metadata={"method": "sqs", **(metadata or {})},
                              codebook_dtype=codebook_dtype, entropy_coded=entropy_coded)
    return files["plain"].manifest, greedy
