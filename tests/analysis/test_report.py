import argparse
import base64
import io
import re
import shutil

import pytest
from PIL import Image

from sqs_pyro.analysis.cli import PLOT_KINDS, add_parser
from sqs_pyro.analysis.report import write_report

IMG = re.compile(r'<img[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def embedded_pngs(html):
    return [base64.b64decode(m) for m in IMG.findall(html)]


def test_report_embeds_figures_and_tables(report_path):
    html = open(report_path, encoding="utf-8").read()
    pngs = embedded_pngs(html)
    assert len(pngs) >= 6  # sizes, ELBO, weights, gates, codebook, windows
    for png in pngs:
        with Image.open(io.BytesIO(png)) as im:
            im.verify()
    for heading in ("Accuracy", "Size on disk", "Training", "Posterior", "VI diagnostics"):
        assert f"<h2>{heading}</h2>" in html
    assert "paper CR" in html and "features.0.weight" in html and "test accuracy" in html
    assert "Could not make" not in html  # nothing failed
    assert "http://" not in html and "https://" not in html  # nothing to fetch


def _copy(run_dir, tmp_path, drop):
    dst = tmp_path / "partial"
    shutil.copytree(run_dir, dst)
    for name in drop:
        (dst / name).unlink()
    return dst


def test_missing_pieces_become_notes(run_dir, tmp_path):
    dst = _copy(run_dir, tmp_path, ["results.json", "checkpoint.pt", "compressed.safetensors"])
    html = open(write_report(dst), encoding="utf-8").read()
    assert "No results.json yet" in html
    assert "No compressed.safetensors yet" in html
    assert "could not be rebuilt" in html
    assert len(embedded_pngs(html)) == 1  # the ELBO trace is still there


def test_report_svg_and_diagnostics(run_dir, tmp_path):
    dst = _copy(run_dir, tmp_path, [])
    out = write_report(dst, tmp_path / "r.html", diagnostics=True, num_draws=30, max_examples=32, image_format="svg",
                       max_layers=1)
    html = open(out, encoding="utf-8").read()
    assert html.count("<svg") >= 6 and "<img" not in html
    assert "PSIS k̂" in html and "Prior power-scaling" in html
    assert (dst / "diagnostics.json").exists()


def _cli(argv):
    from sqs_pyro.run.cli import main

    return main(argv)


@pytest.mark.parametrize("kind", sorted(PLOT_KINDS))
def test_cli_plot(run_dir, tmp_path, kind, capsys):
    fmt = "svg" if kind in ("elbo", "gates") else "png"
    assert _cli(["plot", kind, str(run_dir), "--out", str(tmp_path), "--format", fmt]) == 0
    path = tmp_path / f"{kind}.{fmt}"
    assert path.stat().st_size > 1000
    assert capsys.readouterr().out.strip() == str(path)


def test_cli_report_and_errors(run_dir, tmp_path, capsys):
    out = tmp_path / "cli.html"
    partial = _copy(run_dir, tmp_path, ["checkpoint.pt"])  # no model to rebuild: a quick report
    assert _cli(["report", str(partial), "--out", str(out)]) == 0
    assert out.exists() and embedded_pngs(out.read_text())
    assert _cli(["report", str(tmp_path / "missing")]) == 3  # a missing input (exit codes: sqs_pyro.errors)
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli(["plot", "elbo", str(empty)]) == 3
    assert "log.jsonl" in capsys.readouterr().err
