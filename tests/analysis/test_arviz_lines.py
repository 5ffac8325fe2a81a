"""
The ArviZ code paths against the other ArviZ line (1.x on Python >= 3.12, or 0.x).

Set ``SQS_ARVIZ_OTHER_PYTHON`` to an interpreter that has numpy, xarray,
arviz-base and arviz-stats of the other line (no torch needed): the assembly
of the DataTree (:func:`build_datatree`), PSIS and power scaling run there on
arrays drawn here, and must give the same numbers.
"""

import json
import os
import pickle
import subprocess
import textwrap

import numpy as np
import pytest

from sqs_pyro.analysis.diagnostics import prior_sensitivity, psis_from_datatree
from sqs_pyro.analysis.to_arviz import _draw_groups, build_datatree, layer_summary

OTHER = os.environ.get("SQS_ARVIZ_OTHER_PYTHON")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import json, pickle, sys
    sys.path.insert(0, sys.argv[1])          # the repo root: 'analysis' imports as a plain package
    import arviz_base, arviz_stats
    from analysis.to_arviz import build_datatree
    from analysis.diagnostics import prior_sensitivity, psis_from_datatree
    args = pickle.load(open(sys.argv[2], "rb"))
    dt = build_datatree(**args)
    psis = psis_from_datatree(dt, num_data=args["groups"]["log_likelihood"]["obs"].shape[1])
    sens = prior_sensitivity(tree=dt, alphas=(0.8, 1.25))
    summary = arviz_stats.summary(dt, var_names=["sparsity"], kind="stats")
    ess = arviz_stats.ess(dt, var_names=["sparsity"])["sparsity"].values.tolist()
    hdi = arviz_stats.hdi(dt, var_names=["sparsity"])["sparsity"].values.tolist()
    print(json.dumps({"version": arviz_stats.__version__, "groups": sorted(dt.children),
                      "sizes": {k: int(v) for k, v in dt["posterior"].sizes.items()},
                      "psis": psis.to_dict(), "sens": sens.to_dict(), "mean": summary["mean"].tolist(),
                      "ess": ess, "hdi": hdi}))
""")


@pytest.mark.skipif(not OTHER, reason="set SQS_ARVIZ_OTHER_PYTHON to a Python with the other ArviZ line to run this")
def test_other_arviz_line_gives_the_same_tree_and_numbers(tiny, tmp_path):
    model, guide, x, y = tiny
    groups, dims, coords, weight_layer = _draw_groups(model, guide, 60, 8, (x, y), 0, None, 1024)
    args = {"groups": groups, "dims": dims, "coords": coords, "weight_layer": weight_layer,
            "variational": layer_summary(model, guide)}
    path = tmp_path / "args.pkl"
    path.write_bytes(pickle.dumps(args))
    script = tmp_path / "other.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([OTHER, str(script), ROOT, str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    other = json.loads(proc.stdout.strip().splitlines()[-1])
    here = build_datatree(**args)
    assert other["groups"] == sorted(here.children)
    assert other["sizes"] == {k: int(v) for k, v in here["posterior"].sizes.items()}
    psis = psis_from_datatree(here, num_data=x.shape[0]).to_dict()
    np.testing.assert_allclose(other["psis"]["khat"], psis["khat"], rtol=1e-6)
    np.testing.assert_allclose(other["psis"]["ess"], psis["ess"], rtol=1e-6)
    sens = prior_sensitivity(tree=here, alphas=(0.8, 1.25)).to_dict()
    assert other["sens"]["khat"]["1.0"] is None and sens["khat"]["1.0"] is None
    for a in ("0.8", "1.25"):
        assert other["sens"]["khat"][a] == pytest.approx(sens["khat"][a], rel=1e-6)
    if "withheld" in sens["psense"]:
        assert "withheld" in other["sens"]["psense"]
    else:
        for s in ("sparsity", "bits", "weight_rms"):
            assert other["sens"]["psense"][s] == pytest.approx(sens["psense"][s], rel=1e-6)
    import arviz_stats

    assert other["mean"] == pytest.approx(arviz_stats.summary(here, var_names=["sparsity"], kind="stats")["mean"]
                                          .tolist(), abs=0.01)
    assert other["ess"] == pytest.approx(arviz_stats.ess(here, var_names=["sparsity"])["sparsity"].values.tolist(),
                                         rel=1e-6)
