import importlib.util
import json
import pathlib
import sys

import pytest

pytest.importorskip("transformers")

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


def test_smoke_writes_both_diagnostics(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("window_diagnostics", BENCHMARKS / "window_diagnostics.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        result = module.main(["--smoke", "-K", "4", "--threads", "1", "--results-dir", str(tmp_path)])
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert [(r["window"], r["K"]) for r in result["rows"]] == [("outlier", 4), ("equal", 4)]
    for row in result["rows"]:
        assert 0.0 <= row["soft_fraction"] <= 1.0
        assert row["kmeans"]["matrices"] == row["rtn"]["matrices"] == 12
        # RTN's grid spans each window's min and max: the largest weight is kept to fp16 rounding
        assert row["rtn"]["median_error"] < 1e-2
    saved = json.loads((tmp_path / "window_diagnostics_smoke.json").read_text())
    assert saved["rows"] == result["rows"]
    assert (tmp_path / "window_diagnostics_smoke.md").read_text().startswith("# Windows on")
