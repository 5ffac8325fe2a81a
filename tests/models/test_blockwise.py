"""The block-wise likelihood: a decoder layer on its teacher's inputs and outputs."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from sqs_pyro import SQSELBO  # noqa: E402
from sqs_pyro.data.tokenized import TokenWindows  # noqa: E402
from sqs_pyro.guides import SQSGuide  # noqa: E402
from sqs_pyro.models import Gaussian, SQSModel  # noqa: E402
from sqs_pyro.models.blockwise import Block, block_model, capture_block_data, decoder_layers  # noqa: E402
from sqs_pyro.models.transformers import default_prior_spec  # noqa: E402

V = 64


def tiny_llama(layers=3):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def calib(n=6, t=10):
    return TokenWindows(torch.randint(0, V, (n, t), generator=torch.Generator().manual_seed(1)))


def test_decoder_layers():
    net = tiny_llama()
    prefix, layers = decoder_layers(net)
    assert prefix == "model.layers" and len(layers) == 3


def test_captured_data_reproduces_the_teacher_layer():
    net = tiny_llama()
    data = capture_block_data(net, calib(), blocks=[0, 2], batch_size=4)
    assert sorted(data) == [0, 2]
    # the rotary embeddings are the same for every window: shared, not stored per window
    assert "position_embeddings" in data[2].shared and "hidden_states" not in data[2].per_window
    block = Block(decoder_layers(net)[1][2], "model.layers.2", data[2].shared)
    x, y = data[2].get(torch.arange(6))
    assert torch.allclose(block(**x), y, atol=1e-6)
    # the teacher's output of layer l is its input to layer l + 1
    both = capture_block_data(net, calib(), blocks=[0, 1])
    assert torch.equal(both[0].targets, both[1].inputs)


def test_padded_windows_keep_their_attention_mask():
    net = tiny_llama()

    class Padded(TokenWindows):
        def get(self, idx):
            x, y = super().get(idx)
            x["attention_mask"][:, :3] = 0  # left padding
            return x, y

    data = capture_block_data(net, Padded(calib().tokens), blocks=[1], batch_size=4)[1]
    assert "attention_mask" in data.per_window and data.per_window["attention_mask"].shape[0] == 6
    x, y = data.get(torch.tensor([4, 1]))
    out = Block(decoder_layers(net)[1][1], "model.layers.1", data.shared)(**x)
    assert torch.allclose(out, y, atol=1e-6)


def test_block_names_are_the_whole_models():
    net = tiny_llama()
    data = capture_block_data(net, calib(), blocks=[1])[1]
    model = block_model(net, 1, default_prior_spec(net, num_components=4), data)
    assert list(model.sites) == [f"model.layers.1.{m}.weight" for m in
                                 ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                  "mlp.up_proj", "mlp.down_proj")]
    assert model.likelihood.scale == pytest.approx(data.update_rms)
    assert data.update_rms == pytest.approx(float((data.targets - data.inputs).pow(2).mean().sqrt()), rel=1e-6)


def _perturb(guide):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name in guide.site_names:
            p = guide.params_of(name)
            p.locs = p.locs + 0.01 * torch.randn(p.locs.shape, generator=g)
            p.scales = p.scales * (1 + 0.1 * torch.rand(p.scales.shape, generator=g))
            p.rho = p.rho + 0.01 * torch.randn(p.rho.shape, generator=g)
            p.mask.copy_(torch.rand(p.mask.shape, generator=g) > 0.2)


@pytest.mark.filterwarnings("ignore::sqs_pyro.MeanPlugInWarning")
@pytest.mark.parametrize("plug_in", ["mean", "sample"])
def test_blockwise_equals_whole_model_restricted_to_the_block(plug_in):
    """Same guide parameters: the block-wise model's log-likelihood and per-site KL terms are those of the whole
    model with the prior on layer 1 only and a Gaussian on layer 1's output."""
    net = tiny_llama()
    windows = calib()
    spec = default_prior_spec(net, num_components=4, exclude=[r"re:model\.layers\.[02]\..*"])
    data = capture_block_data(net, windows, blocks=[1])[1]
    scale = 0.3
    block = block_model(net, 1, spec, data, scale=scale)
    block_guide = SQSGuide(block)
    _perturb(block_guide)

    layer = decoder_layers(net)[1][1]

    def layer_output(call, x):
        out = []
        handle = layer.register_forward_hook(lambda m, a, o: out.append(o[0] if isinstance(o, tuple) else o))
        try:
            call(**x, use_cache=False)
        finally:
            handle.remove()
        return out[0]

    whole = SQSModel(net, spec, Gaussian(scale=scale), num_data=len(windows), forward=layer_output)
    assert list(whole.sites) == list(block.sites)
    whole_guide = SQSGuide(whole)
    whole_guide.load_state_dict(block_guide.state_dict())

    idx = torch.tensor([0, 2, 5])
    terms = []
    for model, guide, x in ((block, block_guide, data.get(idx)[0]), (whole, whole_guide, windows.get(idx)[0])):
        elbo = SQSELBO(plug_in=plug_in)
        torch.manual_seed(7)
        elbo.differentiable_loss(model, guide, x, data.targets[idx], subsample=idx)
        terms.append(elbo.last_terms)
    b, w = terms
    assert b["data"] == pytest.approx(w["data"], rel=1e-5)
    assert b["kl"].keys() == w["kl"].keys() and len(b["kl"]) == 6
    for name in b["kl"]:
        assert b["kl"][name] == w["kl"][name], name
    # the data term is a real likelihood: N / b times the minibatch's Gaussian log-density
    if plug_in == "mean":
        from sqs_pyro.handlers import PosteriorMean

        with PosteriorMean(), torch.no_grad():
            import pyro

            tr = pyro.poutine.trace(pyro.poutine.replay(block, trace=pyro.poutine.trace(block_guide).get_trace(
                data.get(idx)[0]))).get_trace(data.get(idx)[0], data.targets[idx], subsample=idx)
        out = tr.nodes["_RETURN"]["value"]
        expected = torch.distributions.Normal(out, scale).log_prob(data.targets[idx]).sum() * len(windows) / 3
        assert b["data"] == pytest.approx(float(expected), rel=1e-5)
