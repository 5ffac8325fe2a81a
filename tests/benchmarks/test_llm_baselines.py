"""
benchmarks/llm_baselines.py and _llm_bits.py: the honest bits of a GPTQ-style
group-quantized layer, the fp16 re-grid, and the row cache that makes a killed
run resumable. None of this needs the optional libraries (llmcompressor,
auto-round, hqq); the smoke run at the end does and is skipped without them.
"""

import importlib.util
import math
import pathlib
import sys

import pytest
import torch

pytest.importorskip("transformers")

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.fixture(scope="module")
def bits():
    return _load("_llm_bits")


@pytest.fixture(scope="module")
def harness():
    return _load("llm_baselines")


def test_gptq_group_layer_counts_codes_scales_and_zero_points(bits):
    # SmolLM2's q_proj: 576 x 576, 4-bit codes, groups of 64 input columns, fp16 scale + 4-bit zero per group
    layer = bits.group_quantized((576, 576), bits=4, group_size=64)
    groups = 576 * 9
    assert layer.parts == {"codes": 576 * 576 * 4, "scales": groups * 16, "zero_points": groups * 4}
    assert layer.bits_per_weight == pytest.approx(4 + 20 / 64)
    assert "mask" not in layer.parts  # a dense site pays no mask bits
    # symmetric: no zero points; HQQ: float zeros at fp16
    assert bits.group_quantized((576, 576), 4, 64, zero_bits=0).bits_per_weight == pytest.approx(4 + 16 / 64)
    assert bits.group_quantized((576, 576), 4, 64, zero_bits=16).bits_per_weight == pytest.approx(4.5)


def test_a_short_last_group_still_pays_a_scale(bits):
    layer = bits.group_quantized((2, 100), bits=3, group_size=64)  # 64 + 36 columns: 2 groups per row
    assert layer.parts["scales"] == 2 * 2 * 16
    assert layer.total_bits == 2 * 100 * 3 + 4 * (16 + 3)


def test_sparse_layers_pay_a_mask_only_when_it_is_cheaper(bits):
    numel = 64 * 128
    half = bits.group_quantized((64, 128), 4, 64, nnz=numel // 2)
    assert half.parts["mask"] == numel and half.parts["codes"] == numel // 2 * 4
    nearly_dense = bits.group_quantized((64, 128), 4, 64, nnz=numel - 10)  # the mask would cost more: dense layout
    assert "mask" not in nearly_dense.parts and nearly_dense.parts["codes"] == numel * 4
    values = bits.sparse_values((64, 128), nnz=numel // 2)
    assert values.bits_per_weight == pytest.approx(1 + 16 / 2)


def test_bits_per_weight_over_layers_weights_by_size(bits):
    a = bits.group_quantized((10, 64), 4, 64)
    b = bits.dense_values((30, 64), value_bits=16)
    assert bits.bits_per_weight([a, b]) == pytest.approx((a.total_bits + b.total_bits) / (40 * 64))
    parts = bits.parts_per_weight([a, b])
    assert sum(parts.values()) == pytest.approx(bits.bits_per_weight([a, b]))


def test_fp16_regrid_keeps_codes_and_rounds_only_the_scale(harness):
    g = torch.Generator().manual_seed(0)
    rows, cols, group, nbits = 8, 128, 64, 4
    scale = torch.rand(rows, cols // group, generator=g) * 0.01 + 1e-3
    zero = torch.randint(-8, 8, (rows, cols // group), generator=g)  # a signed code range, as compressed-tensors uses
    q = torch.randint(-8, 8, (rows, cols), generator=g).float()
    weight = ((q.reshape(rows, -1, group) - zero.float()[..., None]) * scale[..., None]).reshape(rows, cols)
    out = harness.dequantize_fp16_params(weight, scale, zero, nbits, group)
    expected = ((q.reshape(rows, -1, group) - zero.float()[..., None]) * scale.half().float()[..., None]).reshape(rows, cols)
    assert torch.allclose(out, expected, rtol=0, atol=1e-7)
    assert harness.max_distinct_per_group(out, group) <= 2**nbits
    with pytest.raises(RuntimeError, match="more than 3 bits"):
        harness.dequantize_fp16_params(weight, scale, zero, 3, group)


def test_max_distinct_per_group(harness):
    w = torch.tensor([[0.0, 1.0, 1.0, 2.0, 5.0, 5.0]])
    assert harness.max_distinct_per_group(w, 3) == 2
    assert harness.max_distinct_per_group(w, 6) == 4
    assert harness.max_distinct_per_group(w, 4) == 3  # last group padded with a value already present


def test_targets_are_exactly_the_sqs_matrices(harness):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1)
    names = harness.target_names(LlamaForCausalLM(cfg))
    assert len(names) == 12 and not any("gate_proj" in n or "lm_head" in n for n in names)
    pattern = harness.exact_names_pattern(names)[3:]
    import re

    assert all(re.match(pattern, n) for n in names)
    assert not re.match(pattern, "model.layers.0.mlp.gate_proj")
    assert not re.match(pattern, names[0] + "x")


def test_rows_are_cached_and_a_rerun_skips_them(harness, tmp_path, monkeypatch):
    """A killed run started again computes only the baselines that had not finished."""
    sys.path.insert(0, str(BENCHMARKS.parent / "examples"))
    try:
        from _common import ConfigRows
    finally:
        sys.path.remove(str(BENCHMARKS.parent / "examples"))
    calls = []

    def fake_row(b, *args):
        calls.append(b.name)
        if b.name == "hqq_w4g64":
            return {"name": b.name, "error": "ImportError: no hqq"}
        return {"name": b.name, "perplexity": 30.0, "bits_per_weight": 4.3}

    monkeypatch.setattr(harness, "baseline_row", fake_row)
    settings = {"calib_windows": [4, 256]}
    wanted = [b for b in harness.BASELINES if b.name in ("gptq_w4g64", "hqq_w4g64")]
    for _ in range(2):
        done = ConfigRows(str(tmp_path), resume=True, settings=settings)
        rows = harness.run_baselines(wanted, done, None, None, None, None, None, None)
    assert calls == ["gptq_w4g64", "hqq_w4g64", "hqq_w4g64"]  # the failure is tried again, the success is not
    assert [r["name"] for r in rows] == ["gptq_w4g64", "hqq_w4g64"]
    assert done.reused == ["gptq_w4g64"]
    with pytest.raises(ValueError, match="other settings"):
        ConfigRows(str(tmp_path), resume=True, settings={"calib_windows": [8, 256]}).get("gptq_w4g64")


def test_smoke_run_with_the_libraries(harness, tmp_path):
    """The whole harness on a tiny random Llama; needs the optional install (make llm-baselines)."""
    missing = [m for m in ("llmcompressor", "hqq") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"optional LLM libraries not installed ({', '.join(missing)}): make llm-baselines")
    result = harness.main(["--smoke", "--only", "gptq_w4g64,hqq_w3g64", "--threads", "1", "--out", str(tmp_path),
                           "--results-dir", str(tmp_path)])
    rows = {r["name"]: r for r in result["rows"]}
    assert math.isfinite(rows["gptq_w4g64"]["perplexity"])
    assert rows["gptq_w4g64"]["bits_per_weight"] == pytest.approx(4 + 20 / 64)
    assert rows["hqq_w3g64"]["bits_per_weight"] == pytest.approx(3 + 32 / 64)
    assert rows["gptq_w4g64"]["max_distinct_per_group"] <= 16
