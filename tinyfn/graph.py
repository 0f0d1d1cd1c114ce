"""Drawing the recorded computation graph (Graphviz DOT, and SVG/PNG where ``dot`` exists).

    g = tinyfn.graph(f, W, b)
    print(g.to_dot())
    g.render("neuron.svg")
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from . import tree
from .autodiff import Node, _arg_name, _name_inputs, _positional_names, _trace, toposort

__all__ = ["Graph", "graph"]


def _shape_label(value) -> str:
    shape = np.shape(value)
    return f"{shape if len(shape) != 1 else '(' + str(shape[0]) + ',)'} {np.result_type(value)}"


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


class Graph:
    """A recorded graph: ``nodes`` in topological order (inputs first, output last).

    ``inputs`` are the nodes of the function's arguments (named by argument and pytree
    path), ``output`` the final node. Constants (arrays that are not differentiated) are
    drawn as grey boxes feeding the ops that use them.
    """

    def __init__(self, nodes: list[Node], inputs: list[Node], output):
        self.nodes = nodes
        self.inputs = inputs
        self.output = output

    def __len__(self):
        return len(self.nodes)

    def ops(self) -> list[str]:
        """The op names of the non-input nodes, in topological order."""
        return [n.primitive.name for n in self.nodes if n.primitive is not None]

    def to_dot(self) -> str:
        """Graphviz DOT text: one box per input (name, shape, dtype), one ellipse per op, edges
        from each argument to the op that used it, labelled with the argument position."""
        ids = {id(n): f"n{i}" for i, n in enumerate(self.nodes)}
        lines = ["digraph tinyfn {", "  rankdir=LR;", '  node [fontname="Helvetica", fontsize=10];']
        constants = 0
        for node in self.nodes:
            name = ids[id(node)]
            if node.primitive is None:
                label = f"{_dot_escape(node.name)}\\n{_shape_label(node.value)}"
                lines.append(f'  {name} [label="{label}", shape=box, style=filled, fillcolor="#cfe2ff"];')
                continue
            label = f"{_dot_escape(node.primitive.name)}\\n{_shape_label(node.value)}"
            style = ', style=filled, fillcolor="#d1e7dd"' if node is self.output else ""
            lines.append(f'  {name} [label="{label}", shape=ellipse{style}];')
            for position, arg in enumerate(node.args):
                if type(arg) is Node:
                    source = ids[id(arg)]
                else:
                    source = f"c{constants}"
                    constants += 1
                    label = f"const\\n{_shape_label(arg)}"
                    lines.append(f'  {source} [label="{label}", shape=box, style=filled, fillcolor="#eeeeee", fontsize=8];')
                lines.append(f'  {source} -> {name} [label="{position}", fontsize=8];')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def render(self, path) -> Path:
        """Write the drawing to ``path``: ``.dot`` always works; ``.svg``/``.png``/``.pdf`` need
        the Graphviz ``dot`` program (RuntimeError with install advice when it is missing)."""
        path = Path(path)
        fmt = path.suffix.lstrip(".").lower()
        if fmt in ("dot", "gv"):
            path.write_text(self.to_dot())
            return path
        if fmt not in ("svg", "png", "pdf"):
            raise ValueError(f"render: expected a .dot, .svg, .png or .pdf path, found {path.name!r}")
        dot = shutil.which("dot")
        if dot is None:
            raise RuntimeError(
                "render: the Graphviz 'dot' program is not installed, so the graph cannot be drawn as "
                f"{fmt.upper()}; install Graphviz (for example `apt install graphviz` or `brew install graphviz`) "
                "or write the DOT text with render('graph.dot') / to_dot()"
            )
        subprocess.run([dot, f"-T{fmt}", "-o", str(path)], input=self.to_dot(), text=True, check=True)
        return path


def graph(f, *args) -> Graph:
    """Trace ``f(*args)`` with every argument differentiable and return its :class:`Graph`.

    Arguments are pytrees of float arrays; input nodes are named after ``f``'s parameters
    (and pytree paths, such as ``params/dense_0/w``).
    """
    names = _positional_names(f)
    arg_names = [_arg_name(names, i) for i in range(len(args))]
    out, wrapped, _, _ = _trace(f, args, arg_names)
    inputs = _name_inputs(wrapped, arg_names)
    outputs = [leaf for leaf in tree.leaves(out) if type(leaf) is Node]
    nodes = toposort(outputs)
    unused = [n for n in inputs if all(n is not m for m in nodes)]
    return Graph(unused + nodes, inputs, outputs[0] if len(outputs) == 1 else None)
