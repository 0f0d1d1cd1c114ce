"""Training curves as PNG (matplotlib, the optional extra ``plot``).

Graph drawings of models live in :mod:`tinyfn.graph`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_history", "plot_comparison"]


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "plotting needs matplotlib, which is an optional extra: pip install 'tinyfn[plot]' (or pip install matplotlib)"
        ) from e
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _draw_panels(panels, path, title, xlabel="epoch"):
    """One panel per ``(ylabel, [(label, xs, values), ...])``, side by side, saved as PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, (ylabel, lines) in zip(axes[0], panels):
        for label, xs, values in lines:
            ax.plot(xs, values, marker="o", markersize=3, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_history(history: dict, path, title: str | None = None) -> Path:
    """Draw the curves of a training history and save them as a PNG at ``path``.

    ``history`` maps names to per-row lists as :func:`tinyfn.train.train_epochs` returns
    (``"epoch"``, ``"train_loss"``, ``"val_loss"``, and when present ``"train_accuracy"``,
    ``"val_accuracy"`` and ``"learning_rate"``) or :func:`tinyfn.train.train_steps` returns
    (``"step"`` instead of ``"epoch"``, which then labels the x axis). One panel per quantity
    present (loss, accuracy, learning rate; a regression has no accuracy), train and
    validation in the same panel. Returns the path written.
    """
    xlabel = "step" if "step" in history else "epoch"
    xs = history.get(xlabel) or list(range(1, 1 + len(next(iter(history.values())))))
    quantities = [
        ("loss", ("train_loss", "val_loss")),
        ("accuracy", ("train_accuracy", "val_accuracy")),
        ("learning rate", ("learning_rate",)),
    ]
    panels = [
        (quantity, [(name.replace("_", " "), xs, history[name]) for name in names if history.get(name)])
        for quantity, names in quantities
    ]
    panels = [(quantity, lines) for quantity, lines in panels if lines]
    if not panels:
        raise ValueError(f"plot_history: nothing to plot; expected keys like 'train_loss', found {sorted(history)}")
    return _draw_panels(panels, path, title, xlabel)


def plot_comparison(histories: dict, path, metrics=("val_loss", "val_accuracy"), title: str | None = None) -> Path:
    """Draw the same metrics of several runs in shared panels (one line per run) to a PNG.

    ``histories`` maps a run label to its per-epoch history (as :func:`plot_history` takes);
    ``metrics`` are the history keys to draw, one panel each. Returns the path written.
    """
    for label, history in histories.items():
        for metric in metrics:
            if metric not in history:
                raise ValueError(f"plot_comparison: run {label!r} has no {metric!r}; found {sorted(history)}")
    panels = [
        (metric.replace("_", " "), [(label, h["epoch"], h[metric]) for label, h in histories.items()])
        for metric in metrics
    ]
    return _draw_panels(panels, path, title)
