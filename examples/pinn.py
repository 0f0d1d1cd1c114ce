"""A physics-informed neural network: solve u''(x) = -pi^2 sin(pi x) on [0, 1], u(0) = u(1) = 0.

The exact solution is u(x) = sin(pi x). An MLP u(x) (1-16-16-1, tanh) is trained on no data
at all: its loss is the mean squared residual of the equation, u''(x) + pi^2 sin(pi x), at 32
collocation points, plus a penalty on u(0) and u(1). The second derivative u'' is computed by
tinyfn inside the loss, with two nested grads, and training differentiates that loss with
respect to the parameters: three levels of differentiation, params over x over x.

Run:  python examples/pinn.py [OUT_FOLDER] [--steps N]
Prints the loss and the max error against sin(pi x) as training goes, and writes both curves
to OUT_FOLDER/pinn.png (default runs/pinn/). The figure in the README is
`python examples/pinn.py docs`.
"""

import argparse
import time
from pathlib import Path

import numpy as np

import tinyfn
from tinyfn import layers, ops, optim, random

model = layers.serial(layers.Dense(16), layers.Tanh(), layers.Dense(16), layers.Tanh(), layers.Dense(1))

collocation = (np.arange(32, dtype=np.float32) + 0.5) / 32  # midpoints of 32 cells of [0, 1]
boundary = np.array([0.0, 1.0], np.float32)


def u(params, x):
    """The network as a function of points: x (n,) -> u(x) (n,)."""
    return model.apply(params, ops.reshape(x, (-1, 1)))[:, 0]


def second_derivative(params, x):
    """u''(x) at each point of x (n,). Each u(x_i) depends on x_i alone, so the gradient of
    sum_i u(x_i) with respect to x is the vector of the u'(x_i), and likewise for u''."""

    def du_dx(x):
        return tinyfn.grad(lambda x: ops.sum(u(params, x)))(x)

    return tinyfn.grad(lambda x: ops.sum(du_dx(x)))(x)


def source(x):
    """The right-hand side f(x) = -pi^2 sin(pi x) of u'' = f."""
    return (-np.pi**2 * np.sin(np.pi * x)).astype(x.dtype)


def loss(params):
    residual = second_derivative(params, collocation) - source(collocation)
    at_boundary = u(params, boundary)
    return ops.mean(residual * residual) + 100.0 * ops.mean(at_boundary * at_boundary)


def max_error(params, points=201) -> float:
    """max |u(x) - sin(pi x)| over ``points`` evenly spaced points of [0, 1]."""
    x = np.linspace(0, 1, points, dtype=np.float32)
    return float(np.max(np.abs(u(params, x) - np.sin(np.pi * x))))


def train(steps: int, seed: int = 0):
    """Adam with a cosine-decayed rate from 1e-2; returns the trained params."""
    _, params = model.init(random.key(seed), (-1, 1))
    optimizer = optim.adam(optim.schedules.cosine_decay(1e-2, steps, alpha=0.01))
    opt_state = optimizer.init(params)
    loss_and_grad = tinyfn.value_and_grad(loss)
    for step in range(1, steps + 1):
        value, grads = loss_and_grad(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optim.apply_updates(params, updates)
        if step % max(1, steps // 10) == 0:
            print(f"step {step:5d}  loss {value:.3e}  max error {max_error(params):.2e}")
    return params


def plot(params, path: Path) -> Path:
    """Draw the network against the exact solution (left) and their difference (right)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    x = np.linspace(0, 1, 201, dtype=np.float32)
    exact, network = np.sin(np.pi * x), u(params, x)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(x, exact, label="exact: sin(pi x)", linewidth=4, alpha=0.4)
    left.plot(x, network, "--", label="network u(x)")
    left.plot(collocation, np.zeros_like(collocation), "|", color="gray", label="collocation points")
    left.set_title("u'' = -pi^2 sin(pi x), u(0) = u(1) = 0", fontsize=10)
    left.legend(fontsize=8, loc="lower center")
    right.plot(x, network - exact)
    right.axhline(0, color="gray", linewidth=0.5)
    right.set_title(f"u(x) - sin(pi x): max {max_error(params):.1e}", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(out=Path("runs/pinn"), steps=1000, seed=0) -> float:
    """Train, print the max error and the training time, draw the PNG; returns the max error."""
    start = time.perf_counter()
    params = train(steps, seed)
    seconds = time.perf_counter() - start
    error = max_error(params)
    print(f"max |u(x) - sin(pi x)| = {error:.2e} after {steps} steps ({seconds:.1f} s)")
    out.mkdir(parents=True, exist_ok=True)
    print(f"wrote {plot(params, out / 'pinn.png')}")
    return error


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("runs/pinn"), help="folder for pinn.png")
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    main(args.out, args.steps)
