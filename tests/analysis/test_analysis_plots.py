import pytest
import torch

from sqs_pyro.analysis import plots
from sqs_pyro.export import save, size_report
from sqs_pyro.guides import hard_assignment

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_written(fig, base):
    png, svg = base.with_suffix(".png"), base.with_suffix(".svg")
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG_MAGIC
    assert svg.stat().st_size > 1000 and b"<svg" in svg.read_bytes()[:2000]
    assert len(fig.axes) >= 1


@pytest.mark.parametrize("log_y", [True, False])
def test_weight_histogram(tiny, tmp_path, log_y):
    model, guide, _, _ = tiny
    fig = plots.plot_weight_histogram(model, guide, log_y=log_y, path=tmp_path / "weights")
    assert len(fig.axes) == 2 * len(model.sites)
    assert fig.axes[0].get_yscale() == ("log" if log_y else "linear")
    _check_written(fig, tmp_path / "weights")


def test_weight_histogram_with_windows(fit_tiny, tmp_path):
    model, guide, _, _ = fit_tiny(steps=2, window="outlier")
    fig = plots.plot_weight_histogram(model, guide, layers="2.weight", path=tmp_path / "w.png")
    assert len(fig.axes) == 2
    _check_written(fig, tmp_path / "w")


def test_unknown_layer_is_a_clear_error(tiny):
    model, guide, _, _ = tiny
    with pytest.raises(ValueError, match="compressed layers are"):
        plots.plot_gate_histograms(model, guide, layers=["nope"])


def test_gates_and_codebook(tiny, tmp_path):
    model, guide, _, _ = tiny
    _check_written(plots.plot_gate_histograms(model, guide, path=tmp_path / "gates"), tmp_path / "gates")
    _check_written(plots.plot_codebook_usage(model, guide, path=tmp_path / "codebook"), tmp_path / "codebook")


def test_layer_sizes(tiny, tmp_path):
    model, guide, _, _ = tiny
    file = tmp_path / "m.safetensors"
    save(file, hard_assignment(model, guide), codebook_dtype="float32")
    for source in (file, size_report(str(file))):
        fig = plots.plot_layer_sizes(source, path=tmp_path / "sizes")
        _check_written(fig, tmp_path / "sizes")


def _log_rows(n=12, beta=1.0):
    rows = []
    for t in range(1, n + 1):
        kl = {"0.weight": 50.0 / t, "2.weight": 20.0 / t}
        data = -100.0 + t
        loss = -data + beta * sum(kl.values())
        rows.append({"step": t, "epoch": t / 4, "loss": loss, "loss_per_example": loss / 64,
                     "data": data, "kl_total": sum(kl.values()), "kl": kl, "sparsity": min(0.5, t / 10),
                     "posterior_sparsity": 0.1, "target_sparsity": min(0.5, t / 10)})
    return rows


def test_elbo_trace_from_rows_and_file(tmp_path):
    import json

    rows = _log_rows()
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"step": 13, "lo')  # a torn last line
    assert len(plots.load_log(log)) == len(rows)
    fig = plots.plot_elbo_trace(log, path=tmp_path / "elbo")
    assert len(fig.axes) == 3
    _check_written(fig, tmp_path / "elbo")
    _check_written(plots.plot_elbo_trace(rows, per_example=False, path=tmp_path / "elbo2"), tmp_path / "elbo2")
    with pytest.raises(ValueError, match="empty"):
        plots.plot_elbo_trace([])


def test_elbo_trace_shows_the_kl_weight():
    fig = plots.plot_elbo_trace(_log_rows(beta=0.01))
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert any("β = 0.01" in label for label in labels)
    kl_line = fig.axes[0].get_lines()[1]
    loss_line = fig.axes[0].get_lines()[2]
    data_line = fig.axes[0].get_lines()[0]
    assert kl_line.get_ydata() == pytest.approx(loss_line.get_ydata() - data_line.get_ydata())


def test_accuracy_vs_k(tmp_path):
    results = [{"K": k, "greedy_accuracy": 0.80 + 0.01 * i, "bma_accuracy": 0.81 + 0.01 * i, "base_accuracy": 0.9,
                "target_sparsity": s} for i, k in enumerate((4, 8, 16)) for s in (0.5, 0.75)]
    results.append({"num_components": 32, "sqs": {"greedy_accuracy": 0.86, "bma_accuracy": 0.87}, "target_sparsity": 0.5})
    fig = plots.plot_accuracy_vs_k(results, path=tmp_path / "acc")
    assert len(fig.axes[0].get_lines()) == 5  # 2 sparsities x (greedy, averaging) + base
    _check_written(fig, tmp_path / "acc")
    with pytest.raises(ValueError, match="K"):
        plots.plot_accuracy_vs_k([{"greedy_accuracy": 0.5}])


def test_window_errors(tmp_path):
    g = torch.Generator().manual_seed(0)
    w = torch.cat([torch.randn(3000, generator=g), 40 * torch.randn(12, generator=g)])
    fig = plots.plot_window_errors({"long-tailed": w, "gaussian": torch.randn(500, generator=g)}, (2, 4, 8),
                                   path=tmp_path / "windows")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3
    one, _, outlier = (l.get_ydata() for l in lines)
    assert (outlier < one).all()  # outlier-aware windows beat one codebook on a long-tailed layer
    _check_written(fig, tmp_path / "windows")
