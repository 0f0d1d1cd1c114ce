"""Training curves: PNG files with one panel per quantity; clear errors on empty input."""

import pytest

pytest.importorskip("matplotlib")

from matplotlib import image  # noqa: E402

from tinyfn import viz  # noqa: E402

HISTORY = {"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.3], "val_loss": [1.1, 0.7, 0.6],
           "train_accuracy": [0.5, 0.8, 0.9], "val_accuracy": [0.4, 0.7, 0.8], "learning_rate": [0.1, 0.05, 0.01]}


def test_plot_history_draws_one_panel_per_quantity(tmp_path):
    three = image.imread(viz.plot_history(HISTORY, tmp_path / "all.png"))
    loss_only = {k: HISTORY[k] for k in ("epoch", "train_loss", "val_loss")}
    one = image.imread(viz.plot_history(loss_only, tmp_path / "loss.png"))
    assert three.shape[0] == one.shape[0] and three.shape[1] > 2.5 * one.shape[1]


def test_plot_comparison_and_errors(tmp_path):
    path = viz.plot_comparison({"a": HISTORY, "b": HISTORY}, tmp_path / "cmp.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="run 'b' has no 'val_accuracy'"):
        viz.plot_comparison({"a": HISTORY, "b": {"epoch": [1], "val_loss": [1.0]}}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="nothing to plot"):
        viz.plot_history({"epoch": [1], "other": [2]}, tmp_path / "y.png")


def test_plot_history_of_a_run_by_steps_puts_steps_on_the_x_axis(tmp_path, monkeypatch):
    drawn = {}
    real_draw = viz._draw_panels

    def spy(panels, path, title, xlabel="epoch"):
        drawn.update(xlabel=xlabel, xs=[xs for _, lines in panels for _, xs, _ in lines])
        return real_draw(panels, path, title, xlabel)

    monkeypatch.setattr(viz, "_draw_panels", spy)
    history = {"step": [250, 500], "train_loss": [2.5, 1.9], "val_loss": [2.1, 1.9]}
    assert viz.plot_history(history, tmp_path / "steps.png").read_bytes()[:4] == b"\x89PNG"
    assert drawn["xlabel"] == "step" and all(list(xs) == [250, 500] for xs in drawn["xs"])
    viz.plot_history(HISTORY, tmp_path / "epochs.png")
    assert drawn["xlabel"] == "epoch" and all(list(xs) == [1, 2, 3] for xs in drawn["xs"])
