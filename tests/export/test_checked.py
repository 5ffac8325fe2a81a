"""The export verb: write, reload, check bit-exact, report sizes."""

import os

import pytest
import torch

from sqs_pyro.export import CompressedTensor, apply_compressed, entropy_coded_path, export_checked, save


def _net_and_compressed():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    w = net[0].weight.detach()
    codebook = torch.tensor([-0.25, 0.125, 0.25])
    quantized = torch.where(w.abs() < 0.1, 0.0, codebook[(w.unsqueeze(-1) - codebook).abs().argmin(-1)])
    compressed = {"0.weight": CompressedTensor.from_dense(quantized)}
    return apply_compressed(net, compressed), compressed


def test_export_checked_writes_both_files_and_reloads_them_bit_exact(tmp_path):
    net, compressed = _net_and_compressed()
    assert torch.equal(net[0].weight, compressed["0.weight"].to_dense())
    path = str(tmp_path / "sub" / "m.safetensors")
    files = export_checked(path, net, compressed, metadata={"method": "test"})
    assert list(files) == ["plain", "entropy_coded"]
    assert files["entropy_coded"].path == entropy_coded_path(path) == str(tmp_path / "sub" / "m.ec.safetensors")
    for f in files.values():
        assert f.bytes == os.path.getsize(f.path) == f.report.file_bytes
        assert f.manifest["metadata"]["method"] == "test"
        assert f.reloaded is not net
        for name, tensor in net.state_dict().items():
            assert torch.equal(f.reloaded.state_dict()[name], tensor), name
    assert files["entropy_coded"].bytes != files["plain"].bytes


def test_export_checked_refuses_a_file_that_does_not_reload_exactly(tmp_path):
    net, compressed = _net_and_compressed()

    def lossy_writer(path, net, compressed, *, metadata, codebook_dtype, entropy_coded):
        dense = {k: v + 1e-3 if k == "2.bias" else v for k, v in net.state_dict().items() if k not in compressed}
        return save(path, compressed, dense, metadata=metadata, codebook_dtype=codebook_dtype)

    with pytest.raises(RuntimeError, match="differs from the exported weights at 2.bias"):
        export_checked(str(tmp_path / "m.safetensors"), net, compressed, writer=lossy_writer, entropy_coded=False)


def test_apply_compressed_writes_in_place():
    net, compressed = _net_and_compressed()
    other = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    assert apply_compressed(other, compressed) is other
    assert torch.equal(other[0].weight, compressed["0.weight"].to_dense())


def test_entropy_coded_file_written_but_not_reloaded_on_request(tmp_path):
    net, compressed = _net_and_compressed()
    files = export_checked(str(tmp_path / "m.safetensors"), net, compressed, reload_entropy_coded=False)
    assert files["plain"].reloaded is not None and files["entropy_coded"].reloaded is None
    assert files["entropy_coded"].bytes == os.path.getsize(files["entropy_coded"].path)


#: files that call a compressed-file writer directly, and why (everything else writes through export_checked)
DIRECT_WRITERS = {
    "sqs_pyro/run/blockwise.py": "per-block resume files, read back by the block loop itself",
    "examples/llama_wikipedia.py": "layer_sizes: scratch files of the compressed layers alone, measured and deleted",
    "examples/llama_blockwise.py": "layer_bits: scratch files of the compressed layers alone, measured and deleted",
}


def test_compressed_files_are_written_through_the_export_verb():
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    writers = {"save", "save_compressed_pretrained"}
    found = set()
    for folder in ("sqs_pyro", "models", "guides", "analysis", "examples", "benchmarks"):
        for path in (root / folder).rglob("*.py"):
            rel = path.relative_to(root).as_posix()
            if rel.startswith("sqs_pyro/export/") or rel == "models/transformers_io.py":
                continue  # the writers and the verb themselves
            tree = ast.parse(path.read_text())
            imported = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                        and any(m in (node.module or "") for m in ("export", "transformers_io"))
                        for a in node.names} & writers
            if any(isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in imported
                   for node in ast.walk(tree)):
                found.add(rel)
    assert found == set(DIRECT_WRITERS)
