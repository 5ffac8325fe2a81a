"""The transformers examples' ``--smoke`` sizes, run in-process through their ``main(argv)``."""

import importlib.util
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("transformers")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bert_sentiment_smoke(tmp_path):
    results = _example("bert_sentiment").main(["--smoke", "--sparsities", "0.5", "--out", str(tmp_path)])
    methods = [r["method"] for r in results["rows"]]
    assert methods == ["fine-tuned base (fp32)", "SQS (greedy MAP)", "magnitude + RTN", "magnitude + k-means"]
    assert len(results["compressed_modules"]) == 8
    for row in results["rows"][1:]:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["bits_per_weight"] > 0
    assert results["rows"][2]["sparsity"] == pytest.approx(0.5, abs=0.01)
    saved = json.loads((tmp_path / "bert_minilm_tweets_smoke.json").read_text())
    assert saved["rows"][0]["accuracy"] == results["rows"][0]["accuracy"]
    assert (tmp_path / "bert_minilm_tweets_smoke.md").read_text().startswith("# BERT")
    # --resume with the same options reuses the finished sparsity (and the fine-tuned base)
    resumed = _example("bert_sentiment").main(["--smoke", "--sparsities", "0.5", "--out", str(tmp_path), "--resume"])
    assert resumed["resumed_configurations"] == ["K16_s50"]
    assert resumed["rows"][1:] == results["rows"][1:]
    # a second run with other options reuses the fine-tuned base only
    again = _example("bert_sentiment").main(["--smoke", "--sparsities", "0.5", "--baselines", "", "--out", str(tmp_path)])
    assert again["base"]["loaded_from"].endswith("base.pt")
    assert again["rows"][0]["accuracy"] == results["rows"][0]["accuracy"]
    assert again["resumed_configurations"] == [] and len(again["rows"]) == 2


def test_llama_wikipedia_smoke(tmp_path):
    results = _example("llama_wikipedia").main(
        ["--smoke", "--windows", "outlier,equal", "-K", "4", "--sparsities", "0.5", "--out", str(tmp_path)])
    rows = results["rows"]
    assert [r["method"] for r in rows[:4]] == ["base (dequantized Q4_1, fp32)", "SQS (greedy MAP, reloaded file)",
                                                "magnitude + per-window RTN", "magnitude + per-window k-means"]
    assert len(rows) == 7 and all(r["perplexity"] > 1 for r in rows)
    assert {r.get("window") for r in rows[1:]} == {"outlier", "equal"}
    # same windows and K: same code bits for SQS and the baselines
    assert rows[1]["paper_cr"] == pytest.approx(rows[2]["paper_cr"], rel=0.01)
    assert rows[2]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert not list(Path(tmp_path).glob("*.safetensors"))  # full exports are removed after the reload check
    assert (tmp_path / "llama_smollm2_wikipedia_smoke.md").exists()


def test_llama_wikipedia_resume_reuses_finished_configurations(tmp_path):
    argv = ["--smoke", "--windows", "equal", "-K", "4", "--sparsities", "0,0.5", "--baselines", "rtn",
            "--out", str(tmp_path)]
    first = _example("llama_wikipedia").main(argv)
    (tmp_path / "rows" / "equal_K4_s50.json").unlink()  # as if the run died during the second configuration
    again = _example("llama_wikipedia").main(argv + ["--resume"])
    assert again["resumed_configurations"] == ["equal_K4_s0"]
    assert again["rows"][1:3] == first["rows"][1:3]
    assert [r["method"] for r in again["rows"]] == [r["method"] for r in first["rows"]]
    with pytest.raises(ValueError, match="steps differ"):
        _example("llama_wikipedia").main(argv + ["--resume", "--steps", "3"])


def test_qwen2_roundtrip_smoke(tmp_path):
    results = _example("qwen2_roundtrip").main(["--smoke", "--out", str(tmp_path)])
    assert results["bit_exact"] and results["generation_equal"] and results["tied_after_load"]
    assert len(results["compressed_modules"]) == 12
    assert results["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert len(results["generated_tokens"]) == len("the model ") + 16
    assert os.path.getsize(tmp_path / "qwen2.sqs.ec.safetensors") <= os.path.getsize(tmp_path / "qwen2.sqs.safetensors")


def test_llama_blockwise_smoke_and_resume(tmp_path):
    argv = ["--smoke", "-K", "4", "--sparsity", "0.5", "--steps", "4", "--out", str(tmp_path)]
    first = _example("llama_blockwise").main(argv)
    assert [b["block"] for b in first["blocks"]] == [0, 1]
    assert 1 < first["perplexity"] < 1e4 and 1 < first["base_perplexity"] < 1e4
    assert first["sparsity"] == pytest.approx(0.5, abs=0.05) and 0 < first["bits_per_weight"] < 32
    assert first["file_bytes"] == os.path.getsize(tmp_path / "model.sqs.safetensors")
    assert json.loads((tmp_path / "llama_blockwise_smoke.json").read_text())["perplexity"] == first["perplexity"]
    again = _example("llama_blockwise").main(argv + ["--resume"])
    assert again["blocks"] == []  # every block finished: nothing is fitted again
    assert again["perplexity"] == first["perplexity"]
    final = _example("llama_blockwise").main(argv + ["--resume", "--final-steps", "2"])
    assert final["final_pass_seconds"] > 0 and final["perplexity"] > 1


def test_llama_blockwise_straight_through_anchors_move_weights(tmp_path):
    """With straight-through anchors the block loss changes which codebook entry a weight takes (rounding learned)."""
    from sqs_pyro.export import load

    # codebooks all but frozen (lr 1e-12): any change of entry is the anchors' doing
    argv = ["--smoke", "-K", "4", "--window", "channel", "--steps", "6", "--layers", "0", "--no-eval", "--lr", "1e-12"]
    runs = {}
    for anchors in ("frozen", "straight-through"):
        out = tmp_path / anchors
        _example("llama_blockwise").main(argv + ["--anchors", anchors, "--anchor-lr", "1e-2", "--out", str(out)])
        runs[anchors] = load(str(out / "blocks" / "block_000.sqs.safetensors"))[0]
    assert set(runs["frozen"]) == set(runs["straight-through"])
    moved = sum(int((runs["frozen"][n].codes != runs["straight-through"][n].codes).sum()) for n in runs["frozen"])
    assert moved > 0
