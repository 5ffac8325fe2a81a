"""Block-wise compression: blocks in turn, resume block by block, 2 processes = 1 process, one file."""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from sqs_pyro.run.blockwise import assign_blocks, block_file, whole_model_pass  # noqa: E402
from sqs_pyro.export import read_manifest  # noqa: E402
from sqs_pyro.models.transformers_io import load_compressed_pretrained  # noqa: E402

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)
from blockwise_worker import run, tiny_setup  # noqa: E402


def _sha(path):
    """The file's content checksum (manifest and every tensor). The raw bytes are not compared: safetensors writes
    its metadata keys in a hash map's order, which varies between processes."""
    return read_manifest(path)["file"]["sha256"]


def test_assign_blocks():
    assert [assign_blocks(5, r, 2) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert [assign_blocks(2, r, 3) for r in range(3)] == [[0], [1], []]
    assert sum((assign_blocks(30, r, 4) for r in range(4)), []) == list(range(30))


def test_two_processes_write_the_file_of_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = os.path.join(HERE, "blockwise_worker.py")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers
    try:
        run(str(tmp_path / "one"))
    finally:
        torch.set_num_threads(threads)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          "29541", worker, str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = tmp_path / "one" / "model.sqs.safetensors", tmp_path / "two" / "model.sqs.safetensors"
    assert _sha(a) == _sha(b)  # bit-exact: each block's fit is a function of (seed, block) alone
    for i in range(3):
        assert _sha(block_file(tmp_path / "one", i)) == _sha(block_file(tmp_path / "two", i))
    net, other = load_compressed_pretrained(b), load_compressed_pretrained(a)
    for name, tensor in other.state_dict().items():
        assert torch.equal(net.state_dict()[name], tensor), name
    weights = [m.weight for m in net.model.layers[2].modules() if isinstance(m, torch.nn.Linear)
               and not m.weight.equal(other.model.layers[2].mlp.gate_proj.weight)]
    assert len(weights) == 6
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert 0.45 < zeros < 0.65  # the block pruned to its target (global top-k over the block's matrices)
    assert all(len(torch.unique(w[w != 0])) <= 4 for w in weights)


def test_resume_block_by_block(tmp_path):
    out = str(tmp_path / "run")
    net, calib, spec, cfg, first = run(out)
    shas = {i: _sha(block_file(out, i)) for i in range(3)}
    os.remove(block_file(out, 1))  # killed after block 1's last checkpoint, before its file
    mtime0 = os.path.getmtime(block_file(out, 0))
    *_, again = run(out, resume=True)
    assert os.path.getmtime(block_file(out, 0)) == mtime0  # finished blocks are not redone
    assert {i: _sha(block_file(out, i)) for i in range(3)} == shas
    for name, ct in first.items():
        assert torch.equal(ct.to_dense(), again[name].to_dense()), name
    import dataclasses

    from sqs_pyro.run.blockwise import compress_blocks

    with pytest.raises(ValueError, match="other settings"):
        compress_blocks(net, calib, spec, dataclasses.replace(cfg, lr=0.5), out_dir=out, batch_size=4, resume=True)


def test_whole_model_pass_starts_from_the_blocks(tmp_path):
    import dataclasses

    out = str(tmp_path / "run")
    net, calib, spec, cfg, blocks = run(out)
    frozen = dataclasses.replace(cfg, lr=0.0, gate_lr=0.0, anchor_lr=0.0, pruning="none", epochs=0.5)  # a step that moves nothing
    compressed, greedy = whole_model_pass(net, calib, spec, frozen, out_dir=str(tmp_path / "whole"), block_dir=out,
                                          batch_size=4)
    assert compressed.keys() == blocks.keys()
    for name, ct in blocks.items():
        assert torch.equal(compressed[name].to_dense(), ct.to_dense()), name
        assert torch.equal(greedy.get_parameter(name), ct.to_dense())


def test_spec_blocks():
    from sqs_pyro.run.blockwise import spec_blocks
    from sqs_pyro.models.transformers import default_prior_spec

    net, *_ = tiny_setup()
    assert spec_blocks(net, default_prior_spec(net)) == [0, 1, 2]
    assert spec_blocks(net, default_prior_spec(net, exclude=[r"re:model\.layers\.1\..*"])) == [0, 2]
    with pytest.warns(UserWarning, match="outside the decoder layers"):
        assert spec_blocks(net, default_prior_spec(net, include=["lm_head"])) == [0, 1, 2]


def test_input_sensitivity_is_the_block_losss_diagonal_hessian():
    from sqs_pyro.run.blockwise import input_sensitivity
    from sqs_pyro.models.blockwise import block_model, capture_block_data

    net, calib, spec, _ = tiny_setup()
    data = capture_block_data(net, calib, [1])[1]
    model = block_model(net, 1, spec, data)
    sens = input_sensitivity(model, data, batch_size=3, batches=2)  # windows 0..5 in batches of 3
    assert set(sens) == set(model.sites)
    q = next(n for n in sens if n.endswith("q_proj.weight"))
    x = net.model.layers[1].input_layernorm(data.inputs[:6]).detach()  # what q_proj sees
    expected = x.square().sum(dim=(0, 1))  # sum over windows and tokens of x_j^2, for every output row
    assert sens[q].shape == model.sites[q].anchor.shape
    torch.testing.assert_close(sens[q], expected.expand_as(sens[q]), rtol=1e-5, atol=1e-6)
