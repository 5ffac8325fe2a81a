"""One process of a block-wise compression of a tiny Llama (launched by tests/test_blockwise_run.py, alone or
under torchrun): ``python blockwise_worker.py OUT_DIR``; process 0 writes ``OUT_DIR/model.sqs.safetensors``."""

import sys

import torch


def tiny_setup():
    from transformers import LlamaConfig, LlamaForCausalLM

    from sqs_pyro.run.config import CompressConfig
    from sqs_pyro.data.tokenized import TokenWindows
    from sqs_pyro.models.transformers import default_prior_spec

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64)
    net = LlamaForCausalLM(cfg).eval()
    calib = TokenWindows(torch.randint(0, 64, (8, 12), generator=torch.Generator().manual_seed(1)))
    spec = default_prior_spec(net, num_components=4)
    compress = CompressConfig(epochs=3, lr=1e-2, gate_lr=0.0, kl_weight=1e-3, pruning="cubic", sparsity=0.5,
                              prune_start=0.0, prune_end=0.5, score="magnitude", checkpoint_every=2, log_every=1)
    return net, calib, spec, compress


def run(out_dir, resume=False):
    from sqs_pyro.run.blockwise import apply_compressed, compress_blocks
    from sqs_pyro.models.transformers_io import save_compressed_pretrained

    net, calib, spec, cfg = tiny_setup()
    compressed = compress_blocks(net, calib, spec, cfg, out_dir=out_dir, batch_size=4, seed=0, capture_blocks=2,
                                 resume=resume)
    if compressed is not None:
        save_compressed_pretrained(f"{out_dir}/model.sqs.safetensors", apply_compressed(net, compressed), compressed,
                                   metadata={"method": "sqs-blockwise"})
    return net, calib, spec, cfg, compressed


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from sqs_pyro.run.distributed import init_from_env

    init_from_env("cpu")
    run(sys.argv[1])
