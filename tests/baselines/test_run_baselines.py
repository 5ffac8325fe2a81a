import json
import os

import pyro
import pytest
import torch
from torch.utils.data import TensorDataset

from sqs_pyro.baselines import METHODS, run_baselines
from sqs_pyro.baselines.run import row_from_pipeline
from sqs_pyro.run.config import RunConfig
from sqs_pyro.export import load_into, size_report
from sqs_pyro.models.cnn import SmallCNN
from sqs_pyro.run.train_base import evaluate_accuracy


def _setup(tmp_path, **compress):
    torch.manual_seed(0)
    x = torch.randn(160, 1, 28, 28)
    y = (x[:, 0, :14].mean((1, 2)) > 0).long() + 2 * (x[:, 0, :, :14].mean((1, 2)) > 0).long()
    train, test = TensorDataset(x[:128], y[:128]), TensorDataset(x[128:], y[128:])
    net = SmallCNN(num_classes=4, channels=(4, 8, 8), hidden=16)
    cfg = RunConfig.from_dict({
        "out_dir": str(tmp_path / "run"), "device": "cpu",
        "data": {"batch_size": 32, "eval_batch_size": 64},
        "compress": {"epochs": 1.0, "sparsity": 0.5, **compress},
        "eval": {"num_samples": 2},
        "prior": {"_default": {"num_components": 4}},
    })
    return cfg, net, train, test, {"name": "synthetic", "num_classes": 4}


def test_all_methods_side_by_side(tmp_path):
    cfg, net, train, test, info = _setup(tmp_path)
    for p in net.parameters():  # as after a compression run used the network: anchors frozen
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    base_acc = evaluate_accuracy(net, test)
    rows, table = run_baselines(cfg, net, base_acc, train, test, info, "cpu", progress=False,
                                results_dir=str(tmp_path / "results"))
    assert [r["method"] for r in rows] == ["base"] + list(METHODS)
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name])
    assert not any(p.requires_grad for p in net.parameters())
    assert len(table.splitlines()) == 2 + len(rows)
    for row in rows[1:]:
        assert row["K"] == 4 and row["target_sparsity"] == 0.5
        assert row["file_bytes"] == os.path.getsize(row["path"])
        report = size_report(row["path"])
        assert row["paper_cr"] == report.paper_cr and row["honest_cr"] == report.cr_fp32
        reloaded = SmallCNN(num_classes=4, channels=(4, 8, 8), hidden=16)
        load_into(reloaded, row["path"])
        assert evaluate_accuracy(reloaded, test) == row["accuracy"]
        assert row["entropy_coded_file_bytes"] == os.path.getsize(row["entropy_coded_path"])
    by = {r["method"]: r for r in rows}
    for method in ("rtn", "deep-compression"):
        assert by[method]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert by["sqs"]["bma_accuracy"] is not None and by["dgms"]["bma_accuracy"] is None
    stem = "baselines_synthetic_small-cnn_K4_s50"
    for folder in (tmp_path / "results", tmp_path / "run" / "baselines"):
        data = json.loads((folder / f"{stem}.json").read_text())
        assert [r["method"] for r in data["rows"]] == [r["method"] for r in rows]
        assert table in (folder / f"{stem}.md").read_text()
    # each SQS variant wrote its checkpoint in its own folder, not over the main run's
    assert (tmp_path / "run" / "baselines" / "sqs-gaussian" / "checkpoint.pt").exists()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_methods_subset_and_sqs_result_passed_in(tmp_path):
    cfg, net, train, test, info = _setup(tmp_path)
    pyro.get_param_store().setdefault("outside", torch.ones(1))  # the caller's param store survives
    given = {"method": "sqs", "label": "SQS", "K": 4, "sparsity": 0.5, "accuracy": 0.5, "file_bytes": 10}
    rows, _ = run_baselines(cfg, net, 0.5, train, test, info, "cpu", progress=False, methods=["rtn", "sqs"],
                            sqs_result=given, results_dir=None)
    assert [r["method"] for r in rows] == ["base", "rtn", "sqs"]
    assert rows[2] == given
    assert "outside" in pyro.get_param_store()
    with pytest.raises(ValueError, match="unknown baseline"):
        run_baselines(cfg, net, 0.5, train, test, info, "cpu", progress=False, methods=["gptq"], results_dir=None)


def test_row_from_pipeline_results(tmp_path):
    cfg, net, train, test, info = _setup(tmp_path)
    rows, _ = run_baselines(cfg, net, 0.5, train, test, info, "cpu", progress=False, methods=["rtn"], results_dir=None)
    rtn = rows[1]
    report = size_report(rtn["path"]).to_dict()
    results = {"seconds": {"sqs": 12.0}, "sqs": {
        "greedy_accuracy": 0.7, "bma_accuracy": 0.71, "sparsity": 0.5,
        "files": {"plain": {"path": rtn["path"], "bytes": rtn["file_bytes"], "reloaded_accuracy": 0.7,
                            "report": report}}}}
    row = row_from_pipeline(results, 4, 0.5)
    assert row["method"] == "sqs" and row["seconds"] == 12.0 and row["bma_accuracy"] == 0.71
    assert row["paper_cr"] == rtn["paper_cr"] and row["honest_cr"] == rtn["honest_cr"]
