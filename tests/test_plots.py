"""curves.png (every run) and sweep.png (every multirun): real PNGs, redrawn when they should be.

How often a training run draws curves.png is checked in test_tensorboard.py, on its run.
"""

import sys

import pytest
from PIL import Image

from cnntrain import plots
from cnntrain.callbacks import MetricsWriter
from cnntrain.plots import CurvesPlot, plot_sweep, save_figure, swept_parameters
from cnntrain.trainer import EpochMetrics


def epoch(n: int, val_acc: float) -> EpochMetrics:
    return EpochMetrics(
        epoch=n,
        train_loss=2.0 / n,
        train_acc=val_acc - 0.05,
        val_loss=2.2 / n,
        val_acc=val_acc,
        lr=0.1,
        epoch_seconds=1.0,
        train_examples_per_s=100.0,
    )


def test_curves_png_is_redrawn_from_metrics_csv(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.csv")
    curves = CurvesPlot(tmp_path / "metrics.csv", tmp_path / "curves.png", title="t", min_seconds_between=0)
    contents = []
    for n, acc in ((1, 0.4), (2, 0.7)):
        writer.on_epoch_end(None, epoch(n, acc))
        curves.on_epoch_end(None, epoch(n, acc))
        contents.append((tmp_path / "curves.png").read_bytes())
        with Image.open(tmp_path / "curves.png") as image:
            assert image.format == "PNG" and image.size == (1000, 400) and image.mode == "RGBA"
            # Not a blank canvas: lines and text in several colours.
            assert len(image.convert("RGB").getcolors(maxcolors=100_000)) > 50
    assert contents[0] != contents[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "metrics.csv"]  # no temp file left


def test_curves_png_is_drawn_after_the_first_epoch_then_at_most_every_20_seconds_and_at_the_end(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(plots.time, "monotonic", lambda: clock[0])
    drawn = []
    monkeypatch.setattr(plots, "plot_curves", lambda rows, path, title="": drawn.append([r["epoch"] for r in rows]))
    writer, curves = (
        MetricsWriter(tmp_path / "metrics.csv"),
        CurvesPlot(tmp_path / "metrics.csv", tmp_path / "curves.png"),
    )
    for n, seconds in ((1, 2.0), (2, 2.0), (3, 17.0), (4, 2.0), (5, 2.0)):  # epochs end at 102, 104, 121, 123, 125
        clock[0] += seconds
        writer.on_epoch_end(None, epoch(n, 0.5))
        curves.on_epoch_end(None, epoch(n, 0.5))
    assert drawn == [[1], [1, 2, 3, 4]]  # epoch 3 ended 19 s after the draw at 102: not yet; epoch 4 (21 s): drawn
    curves.on_fit_end(None)
    assert drawn == [[1], [1, 2, 3, 4], [1, 2, 3, 4, 5]]
    curves.on_fit_end(None)  # nothing new since: not drawn again
    assert len(drawn) == 3


def test_a_failed_write_leaves_the_previous_png_whole(tmp_path, monkeypatch):
    path = tmp_path / "curves.png"
    plots.plot_curves([epoch(1, 0.5).as_dict()], path)
    before = path.read_bytes()
    figure = plots.new_figure(2, 2)

    def killed_mid_write(target, **kwargs):
        target.write(b"\x89PNG half")  # the temporary file
        raise KeyboardInterrupt

    monkeypatch.setattr(figure, "savefig", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_figure(figure, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # the temporary file is gone too


def test_plotting_leaves_pyplot_and_the_backend_alone(tmp_path):
    import matplotlib

    def backend_setting():
        # The raw rcParams value: matplotlib.get_backend() would itself import pyplot to resolve "auto".
        return dict.__getitem__(matplotlib.rcParams, "backend")

    had_pyplot = "matplotlib.pyplot" in sys.modules
    backend = backend_setting()
    plots.plot_curves([epoch(1, 0.5).as_dict()], tmp_path / "c.png")
    assert backend_setting() == backend
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot  # pyplot was not imported by plotting
    assert (tmp_path / "c.png").stat().st_size > 10_000


def sweep_rows():
    rows = []
    for job, (lr, batch, acc) in enumerate([(0.001, 32, 0.41), (0.01, 64, 0.83), (0.1, 32, 0.77)]):
        rows.append(
            {
                "job": job,
                "override_list": ["experiment=smoke", f"optimizer.lr={lr}", f"data.batch_size={batch}"],
                "status": "completed",
                "best_val_acc": acc,
                "error": "",
            }
        )
    rows.append(
        {
            "job": 3,
            "override_list": ["experiment=smoke", "optimizer.lr=5.0", "data.batch_size=64"],
            "status": "failed",
            "best_val_acc": None,
            "error": "The training loss became nan in epoch 1",
        }
    )
    return rows


def test_swept_parameters_are_the_overrides_that_differ():
    assert swept_parameters(sweep_rows()) == {
        "data.batch_size": ["32", "64", "32", "64"],
        "optimizer.lr": ["0.001", "0.01", "0.1", "5.0"],
    }


def test_sweep_png_has_a_panel_per_swept_parameter_and_lists_failures(tmp_path):
    plot_sweep(sweep_rows(), tmp_path / "sweep.png")
    with Image.open(tmp_path / "sweep.png") as image:
        # Two panels of 4.5 inches at 100 dpi; 4.2 inches + one line for the failed job.
        assert image.size == (900, 442) and image.mode == "RGBA"
        # The failed job's red cross and error line are drawn in matplotlib's "tab:red".
        assert (214, 39, 40) in {colour for _, colour in image.convert("RGB").getcolors(maxcolors=100_000)}


def test_sweep_png_stars_one_job_when_several_tie_the_one_best_yaml_names(tmp_path, monkeypatch):
    """Both jobs at 0.0978 had both starred while the title named job 0."""
    from cnntrain.sweep_jobs import best_job

    drawn = {}
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: drawn.update(figure=figure))
    rows = [
        {"job": job, "override_list": [f"optimizer.lr={lr}"], "status": "completed", "best_val_acc": acc, "error": ""}
        for job, (lr, acc) in enumerate([(0.01, 0.5), (0.1, 0.8), (0.9, 0.8), (0.3, 0.8)])
    ]
    plot_sweep(rows, tmp_path / "sweep.png")
    [axes] = drawn["figure"].axes
    stars = [line.get_xydata().tolist() for line in axes.lines if line.get_marker() == "*"]
    assert best_job(rows)["job"] == 1 and stars == [[[0.1, 0.8]]]
    assert len([line for line in axes.lines if line.get_marker() == "o"]) == 3
    assert drawn["figure"]._suptitle.get_text().endswith("best: job 1, 0.8000 (star), tied with jobs 2, 3")


def test_sweep_png_draws_a_pruned_job_hollow_at_its_score_not_as_a_failure(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: drawn.update(figure=figure))
    rows = [
        {"job": 0, "override_list": ["optimizer.lr=0.1"], "status": "completed", "best_val_acc": 0.8, "error": ""},
        {"job": 1, "override_list": ["optimizer.lr=0.3"], "status": "completed", "best_val_acc": 0.6, "error": ""},
        {"job": 2, "override_list": ["optimizer.lr=0.9"], "status": "pruned", "best_val_acc": 0.3, "error": "at 1"},
    ]
    plot_sweep(rows, tmp_path / "sweep.png")
    [axes] = drawn["figure"].axes
    hollow = [line.get_xydata().tolist() for line in axes.lines if line.get_fillstyle() == "none"]
    assert hollow == [[[0.9, 0.3]]] and not [line for line in axes.lines if line.get_marker() == "x"]
    assert drawn["figure"]._suptitle.get_text() == "sweep: 3 jobs, 0 failed, 1 pruned; best: job 0, 0.8000 (star)"
    assert drawn["figure"].texts == [drawn["figure"]._suptitle]  # nothing listed under the panels: no job failed
