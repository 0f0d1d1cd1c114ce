"""Draw every figure of the book (docs/book/) from tinyfn itself.

Run:  python docs/book/make_figures.py [OUTDIR]        (default: docs/book/figures)

Writes one PNG per entry of FIGURES, each computed from the code as it is now (the graph
tinyfn records, a training run, the schedules' values), so re-running this script after a
change redraws the book. Needs matplotlib; takes a few seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import tinyfn
from tinyfn import Node, datasets, layers, losses, ops, optim, random, train

DEFAULT_OUT = Path(__file__).resolve().parent / "figures"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------- chapter 1


def neuron_graph(path: Path) -> None:
    """The graph tinyfn records for sigmoid(sum(W * x) + b), one column per depth."""
    x = np.array([1.5, -0.5])

    def neuron(W, b):
        return ops.sigmoid(ops.sum(W * x) + b)

    graph = tinyfn.graph(neuron, np.array([0.2, -0.4]), np.array(0.1))
    # Each op one column right of its deepest argument; each input and constant one column
    # left of the first op that uses it. Ops take the top row of their column.
    column, edges = {}, []
    ops_drawn, leaves = [], {}  # leaves: key -> (label, colour, column)
    for node in graph.nodes:
        if node.primitive is None:
            continue
        column[id(node)] = 1 + max([column.get(id(a), 0) for a in node.args if type(a) is Node] + [0])
        colour = "#d1e7dd" if node is graph.output else "#ffffff"
        ops_drawn.append((id(node), f"{node.primitive.name}\n= {np.round(node.value, 3)}", colour))
        for a in node.args:
            if type(a) is not Node or a.primitive is None:
                label = f"{a.name}\nshape {np.shape(a.value)}" if type(a) is Node else f"x (constant)\n{a}"
                colour = "#cfe2ff" if type(a) is Node else "#eeeeee"
                leaves.setdefault(id(a), (label, colour, column[id(node)] - 1))
            edges.append((id(a), id(node)))
    boxes = [(key, column[key], label, colour) for key, label, colour in ops_drawn]
    boxes += [(key, col, label, colour) for key, (label, colour, col) in leaves.items()]
    rows: dict[int, int] = {}
    where = {}
    for key, col, _, _ in boxes:
        where[key] = (col, rows.get(col, 0))
        rows[col] = rows.get(col, 0) + 1
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 2.6))
    for source, target in edges:
        (c0, r0), (c1, r1) = where[source], where[target]
        ax.annotate("", xy=(c1 - 0.33, -r1), xytext=(c0 + 0.33, -r0), arrowprops={"arrowstyle": "->", "color": "#555555"})
    for key, _, label, colour in boxes:
        c, r = where[key]
        ax.text(c, -r, label, ha="center", va="center", fontsize=9, bbox={"boxstyle": "round", "facecolor": colour, "edgecolor": "#555555"})
    ax.set_xlim(-0.6, max(c for c, _ in where.values()) + 0.6)
    ax.set_ylim(-max(rows.values()) + 0.4, 0.6)
    ax.axis("off")
    ax.set_title("f(W, b) = sigmoid(sum(W * x) + b), as tinyfn records it", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- chapter 4


def iris_history(epochs: int = 30, seed: int = 0) -> dict:
    """Train the 4-3-1 sigmoid network on Iris setosa vs versicolor (the `iris-binary` task's
    model, batch size and rate) and return the per-epoch history of `train.train_epochs`."""
    x, y, _ = datasets.iris()
    keep = y < 2
    x_train, y_train, x_test, y_test = datasets.train_test_split(random.key(seed), x[keep], y[keep].astype(np.float32))
    x_train, x_test = datasets.standardize(x_train, x_test)
    model = layers.serial(layers.Dense(3), layers.Sigmoid(), layers.Dense(1))

    def loss_fn(logits, y):
        return losses.binary_cross_entropy_with_logits(ops.reshape(logits, (-1,)), y)

    metrics = {"accuracy": losses.accuracy}
    optimizer = optim.sgd(0.5)
    state = train.init_train_state(model, optimizer, random.key(seed + 1), (-1, 4))
    step = train.supervised_step(model, optimizer, loss_fn, metrics=metrics)
    data = datasets.batches(random.key(seed + 2), x_train, y_train, 8)

    def validate(state):
        return train.evaluate(train.predictor(model, state), [(x_test, y_test)], loss_fn, metrics)

    _, history = train.train_epochs(step, state, data, epochs=epochs, validate=validate, progress=False, log=None)
    return history


def iris_loss(path: Path) -> None:
    """Training and validation loss per epoch of :func:`iris_history`."""
    history = iris_history()
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(history["epoch"], history["train_loss"], label="training loss (mean over the epoch's batches)")
    ax.plot(history["epoch"], history["val_loss"], label="validation loss (after the epoch)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("binary cross-entropy")
    ax.set_yscale("log")
    ax.set_title("Iris setosa vs versicolor: 4-3-1 sigmoid network, SGD 0.5, batch 8", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def schedules(path: Path) -> None:
    """The learning-rate schedules of tinyfn.optim.schedules over 1,000 steps."""
    s = optim.schedules
    curves = {
        "constant(1e-3)": s.constant(1e-3),
        "step_decay(1e-3, 300, 0.5)": s.step_decay(1e-3, 300, 0.5),
        "exponential_decay(1e-3, 0.1, 1000)": s.exponential_decay(1e-3, 0.1, 1000),
        "cosine_decay(1e-3, 1000)": s.cosine_decay(1e-3, 1000),
        "warmup_cosine_decay(1e-3, 100, 1000)": s.warmup_cosine_decay(1e-3, 100, 1000),
    }
    steps = np.arange(1000)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for label, schedule in curves.items():
        ax.plot(steps, [schedule(int(t)) for t in steps], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


FIGURES = {
    "neuron-graph.png": neuron_graph,
    "iris-loss.png": iris_loss,
    "schedules.png": schedules,
}


def main(out: Path = DEFAULT_OUT) -> list[Path]:
    """Draw every figure into ``out`` (created if needed); returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in FIGURES.items():
        draw(out / name)
        written.append(out / name)
        print(f"wrote {out / name}")
    return written


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
