"""The graph of one sigmoid neuron, f(W, b) = sigmoid(sum_i w_i x_i + b) with n = 2.

Run:  python examples/sigmoid_neuron_graph.py [OUT_FOLDER]     (default: runs/sigmoid-neuron)
Writes OUT_FOLDER/neuron.dot, and neuron.svg when Graphviz's `dot` program is installed; prints the
nodes in topological order and the gradients.
"""

import shutil
import sys
from pathlib import Path

import numpy as np

import tinyfn
from tinyfn import ops

x = np.array([1.5, -0.5])  # the input: a constant, not differentiated


def neuron(W, b):
    return ops.sigmoid(ops.sum(W * x) + b)


def main(out=Path("runs/sigmoid-neuron")):
    out.mkdir(parents=True, exist_ok=True)
    W, b = np.array([0.2, -0.4]), np.array(0.1)
    graph = tinyfn.graph(neuron, W, b)
    for node in graph.nodes:
        what = node.name if node.primitive is None else node.primitive.name
        print(f"{what:>8}  value {np.round(node.value, 4)}")
    value, (dW, db) = tinyfn.value_and_grad(neuron, argnums=(0, 1))(W, b)
    # d sigmoid(z) / dz = s (1 - s): dW = s (1 - s) x, db = s (1 - s)
    print(f"f = {value:.4f}, df/dW = {dW}, df/db = {float(db):.4f}")
    print(f"wrote {graph.render(out / 'neuron.dot')}")
    if shutil.which("dot"):
        print(f"wrote {graph.render(out / 'neuron.svg')}")
    else:
        print("Graphviz is not installed: no SVG (the DOT file can be drawn elsewhere)")


if __name__ == "__main__":
    main(Path(sys.argv[1])) if len(sys.argv) > 1 else main()
