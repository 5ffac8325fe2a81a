import pytest
import torch

transformers = pytest.importorskip("transformers")

from sqs_pyro import PriorSpec, SQSELBO  # noqa: E402
from sqs_pyro.data.tokenized import ByteTokenizer, TokenizedClassification, TokenWindows  # noqa: E402
from sqs_pyro.export import CompressedFileError, read_manifest  # noqa: E402
from sqs_pyro.guides import SQSGuide, greedy_map  # noqa: E402
from sqs_pyro.models import CausalLM, Categorical, SQSModel  # noqa: E402
from sqs_pyro.models.transformers import (  # noqa: E402
    causal_lm_forward,
    causal_lm_perplexity,
    classification_accuracy,
    compressed_modules,
    default_prior_spec,
    model_type_of,
)
from sqs_pyro.models.transformers_io import export_sqs, load_compressed_pretrained, save_compressed_pretrained  # noqa: E402
from sqs_pyro.baselines.windows import window_baselines, windowed_quantize  # noqa: E402

V = ByteTokenizer.vocab_size


def tiny_bert():
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32, num_labels=3)
    return transformers.BertForSequenceClassification(cfg)


def tiny_llama(tie=True):
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                   tie_word_embeddings=tie)
    return transformers.LlamaForCausalLM(cfg)


def tiny_qwen2():
    cfg = transformers.Qwen2Config(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                   tie_word_embeddings=True, bos_token_id=None, eos_token_id=256, pad_token_id=256)
    return transformers.Qwen2ForCausalLM(cfg)


def tiny_gpt2():
    cfg = transformers.GPT2Config(vocab_size=V, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    return transformers.GPT2LMHeadModel(cfg)


def _per_layer(prefix, names, layers=2):
    return [f"{prefix}.{i}.{n}" for i in range(layers) for n in names]


DECODER = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj"]


@pytest.mark.parametrize(
    "build, expected",
    [
        (tiny_bert, _per_layer("bert.encoder.layer", ["attention.self.query", "attention.self.key",
                                                       "attention.self.value", "attention.output.dense"])),
        (tiny_llama, _per_layer("model.layers", DECODER)),
        (tiny_qwen2, _per_layer("model.layers", DECODER)),
        (tiny_gpt2, _per_layer("transformer.h", ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"])),
    ],
    ids=["bert", "llama", "qwen2", "gpt2"],
)
def test_default_modules(build, expected):
    torch.manual_seed(0)
    net = build()
    spec = default_prior_spec(net, num_components=8)
    assert compressed_modules(net, spec) == expected
    assert all(s.guide.num_components == 8 for s in PriorSpec(spec).resolve(net).values())
    # the spec is plain data: it round-trips through a PriorSpec dict
    assert PriorSpec(spec) == PriorSpec.from_dict(PriorSpec(spec).to_dict())


def test_default_spec_from_config_and_model_type():
    net = tiny_llama()
    assert default_prior_spec(net.config) == default_prior_spec("llama") == default_prior_spec(net)
    assert model_type_of({"model_type": "qwen2"}) == "qwen2"


def test_include_and_exclude():
    net = tiny_llama()
    spec = default_prior_spec(
        net,
        include=[r"re:.*\.mlp\.gate_proj", "lm_head"],
        exclude=["model.layers.0.self_attn.q_proj", r"re:model\.layers\.1\.self_attn\..*"],
        window="equal",
    )
    names = compressed_modules(net, spec)
    assert "model.layers.0.self_attn.q_proj" not in names
    assert not any(n.startswith("model.layers.1.self_attn") for n in names)
    assert "model.layers.0.mlp.gate_proj" in names and "model.layers.1.mlp.gate_proj" in names
    assert "lm_head" in names
    assert all(s.guide.window == "equal" for s in PriorSpec(spec).resolve(net).values())
    # users can also edit the dict: drop a module by its exact name
    spec["model.layers.0.mlp.up_proj"] = None
    assert "model.layers.0.mlp.up_proj" not in compressed_modules(net, spec)


def test_bad_inputs():
    with pytest.raises(ValueError, match="no default compressed modules"):
        default_prior_spec("t5")
    assert compressed_modules(tiny_llama(), default_prior_spec("t5", include=[r"re:.*q_proj"])) == [
        "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    with pytest.raises(ValueError, match="num_componentz"):
        default_prior_spec("llama", num_componentz=4)
    with pytest.raises(ValueError, match="both included and excluded"):
        default_prior_spec("llama", include=["lm_head"], exclude=["lm_head"])
    with pytest.raises(ValueError, match="matches no compressible module"):
        PriorSpec(default_prior_spec("llama", exclude=["re:nothing.*"])).resolve(tiny_llama())


def _elbo_step(model, guide, x, y):
    elbo = SQSELBO(kl_weight=1e-3)
    loss = elbo.differentiable_loss(model, guide, x, y, subsample=torch.arange(y.shape[0]))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in guide.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    return elbo


def test_bert_classifier_dict_inputs():
    torch.manual_seed(0)
    net = tiny_bert().requires_grad_(False)
    data = TokenizedClassification.from_texts(ByteTokenizer(), ["good day", "bad", "meh ok"], [2, 0, 1], max_length=8,
                                              token_type_ids=True)
    model = SQSModel(net, default_prior_spec(net, num_components=4), Categorical(), num_data=30)
    guide = SQSGuide(model)
    x, y = data.get(torch.arange(3))
    assert set(x) == {"input_ids", "attention_mask", "token_type_ids"}
    elbo = _elbo_step(model, guide, x, y)
    assert len(elbo.last_terms["kl"]) == 8
    greedy = greedy_map(model, guide)
    acc = classification_accuracy(greedy, data)
    with torch.no_grad():
        predicted = greedy.eval()(**x).logits.argmax(-1)
    assert acc == pytest.approx((predicted == y).double().mean().item())


def test_gpt2_conv1d_causal_lm():
    torch.manual_seed(0)
    net = tiny_gpt2().requires_grad_(False)
    data = TokenWindows.from_texts(ByteTokenizer(), ["hello world, " * 4], seq_len=8)
    model = SQSModel(net, default_prior_spec(net, num_components=4), CausalLM(), num_data=len(data),
                     forward=causal_lm_forward)
    assert type(net.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    guide = SQSGuide(model)
    x, y = data.get(torch.arange(2))
    _elbo_step(model, guide, x, y)


def test_causal_lm_perplexity_matches_transformers_loss():
    torch.manual_seed(0)
    net = tiny_llama().eval()
    data = TokenWindows.from_texts(ByteTokenizer(), ["some text to score here"], seq_len=6)
    ppl, count = causal_lm_perplexity(net, data, batch_size=2)
    x, labels = data.get(torch.arange(len(data)))
    with torch.no_grad():
        loss = net(**x, labels=labels).loss
    assert count == len(data) * 5
    assert ppl == pytest.approx(float(torch.exp(loss)), rel=1e-4)


def _fitted_qwen2(sparsity=0.5):
    torch.manual_seed(0)
    net = tiny_qwen2().requires_grad_(False)
    spec = default_prior_spec(net, num_components=4, window="outlier")
    model = SQSModel(net, spec, CausalLM(), num_data=8, forward=causal_lm_forward)
    guide = SQSGuide(model)
    # prune half of every site so the export has a real mask
    masks = {name: torch.rand(site.anchor.shape) >= sparsity for name, site in model.sites.items()}
    guide.set_masks(masks)
    return model, guide


def test_qwen2_export_load_bit_exact_and_generate(tmp_path):
    model, guide = _fitted_qwen2()
    path = str(tmp_path / "qwen2.sqs.safetensors")
    manifest, greedy = export_sqs(path, model, guide, entropy_coded=True)
    assert set(manifest["compressed"]) == set(model.sites)
    # tied lm_head / embeddings: one storage in the file, an alias in the metadata
    assert "lm_head.weight" not in manifest["dense"] and "model.embed_tokens.weight" in manifest["dense"]
    assert read_manifest(path)["metadata"]["transformers"]["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
    loaded = load_compressed_pretrained(path)
    assert type(loaded).__name__ == "Qwen2ForCausalLM" and not loaded.training
    for name, tensor in greedy.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert 0.4 < manifest["compressed"]["model.layers.0.mlp.up_proj.weight"]["sparsity"] < 0.6
    prompt = torch.tensor([[104, 105, 32]])
    out = loaded.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False)
    ref = greedy.eval().generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 8) and torch.equal(out, ref)


def test_compressed_tied_head_is_saved_once(tmp_path):
    torch.manual_seed(0)
    net = tiny_llama(tie=True).requires_grad_(False)
    spec = default_prior_spec(net, num_components=4, include=["lm_head"])
    model = SQSModel(net, spec, CausalLM(), num_data=4, forward=causal_lm_forward)
    assert "lm_head.weight" in model.sites
    guide = SQSGuide(model)
    path = str(tmp_path / "llama.safetensors")
    manifest, greedy = export_sqs(path, model, guide)
    assert manifest["metadata"]["transformers"]["tied"] == {"model.embed_tokens.weight": "lm_head.weight"}
    assert "model.embed_tokens.weight" not in manifest["dense"]
    loaded = load_compressed_pretrained(path)
    assert torch.equal(loaded.model.embed_tokens.weight, greedy.lm_head.weight)
    assert torch.unique(loaded.lm_head.weight).numel() <= 5  # K values and zero


def test_quantization_config_is_dropped_and_foreign_file_rejected(tmp_path):
    net = tiny_llama()
    net.config.quantization_config = {"quant_method": "gguf"}
    path = str(tmp_path / "m.safetensors")
    save_compressed_pretrained(path, net, {})
    assert "quantization_config" not in read_manifest(path)["metadata"]["transformers"]["config"]
    from sqs_pyro.export import save

    plain = str(tmp_path / "plain.safetensors")
    save(plain, {}, {"w": torch.zeros(2)})
    with pytest.raises(CompressedFileError, match="no transformers model description"):
        load_compressed_pretrained(plain)


@pytest.mark.parametrize("method", ["rtn", "kmeans"])
@pytest.mark.parametrize("window", ["layer", "equal", "outlier", "channel"])
def test_window_baselines(method, window):
    torch.manual_seed(0)
    net = tiny_llama()
    spec = default_prior_spec(net, num_components=4, window=window)
    out = window_baselines(net, spec, method=method, sparsity=0.5)
    assert set(out) == set(PriorSpec(spec).resolve(net))
    nnz = sum(ct.nnz for ct in out.values())
    numel = sum(ct.numel for ct in out.values())
    assert nnz == numel - int(0.5 * numel)
    for name, ct in out.items():
        w = net.get_parameter(name)
        dense = ct.to_dense()
        assert ct.num_components == 4 and ct.codebook.numel() % 4 == 0
        kept = ct.mask
        # every kept weight is quantized to a value of its own group's codebook, near the original
        assert (dense[kept] - w[kept]).abs().max() <= (w[kept].max() - w[kept].min()) / 2
        assert torch.all(dense[~kept] == 0)


def test_windowed_quantize_groups_use_their_own_codebook():
    from sqs_pyro.baselines import kmeans_quantize
    from sqs_pyro.guides.windows import equal_windows

    w = torch.cat([torch.linspace(-1, -0.5, 50), torch.linspace(0.5, 1, 50)]).reshape(10, 10)
    g = equal_windows(w, blocks=2)
    ct = windowed_quantize(w, torch.ones_like(w, dtype=torch.bool), g, 2, kmeans_quantize)
    dense = ct.to_dense()
    assert torch.all(dense[w < 0] < 0) and torch.all(dense[w > 0] > 0)
    assert torch.equal(ct.codes // 2, g.index.reshape(-1))


def test_windowed_quantize_channels_store_group_local_codes():
    """Per-channel groups are positional: codes cost log2 K bits, as SQS's, and each row decodes with its own codebook."""
    from sqs_pyro.baselines import kmeans_quantize
    from sqs_pyro.guides.channels import channel_groups

    w = torch.randn(6, 40, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 7).unsqueeze(1)
    g = channel_groups(w)
    ct = windowed_quantize(w, torch.ones_like(w, dtype=torch.bool), g, 4, kmeans_quantize)
    assert ct.group_size == 40 and int(ct.codes.max()) < 4 and ct.bits_per_code == 2
    dense = ct.to_dense()
    for row in range(6):
        assert set(dense[row].unique().tolist()) <= set(ct.codebook[4 * row : 4 * row + 4].tolist())
