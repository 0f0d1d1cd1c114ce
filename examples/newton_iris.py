"""Newton's method on logistic regression: Iris, versicolor against virginica.

These two classes overlap, so the logistic loss (with a small L2 term on the weights) has a
finite minimum, and Newton's method, theta <- theta - H^-1 g, reaches it from theta = 0 in
eight steps: five to come near, then three in which the gradient norm is roughly squared at
each step (quadratic convergence). Two ways to find the Newton step d, the solution of
H d = -g, give the same steps:

* ``hessian``: the 5x5 Hessian from ``tinyfn.transforms.hessian``, then ``np.linalg.solve``;
* ``cg``: conjugate gradients, which only needs products H v (``tinyfn.transforms.hvp``):
  the Hessian is never formed, which is how Newton's method scales to many parameters.

Run:  python examples/newton_iris.py
Prints the loss and the gradient norm at each step for both; writes nothing.
"""

import numpy as np

import tinyfn
from tinyfn import datasets, losses, ops
from tinyfn.transforms import hessian, hvp

L2 = 1e-3


def versicolor_or_virginica():
    """Standardized features (100, 4) float64 and labels (100,): 1.0 for virginica, 0.0 for versicolor."""
    x, y, _ = datasets.iris()
    keep = y > 0
    x = x[keep].astype(np.float64)
    return (x - x.mean(axis=0)) / x.std(axis=0), (y[keep] == 2).astype(np.float64)


def make_loss(x, y):
    """The regularized loss of theta (5,): four weights, then the bias (not regularized)."""

    def loss(theta):
        logits = x @ theta[:4] + theta[4]
        return losses.binary_cross_entropy_with_logits(logits, y) + 0.5 * L2 * ops.sum(theta[:4] ** 2)

    return loss


def step_by_hessian(loss):
    hess = hessian(loss)
    return lambda theta, g: np.linalg.solve(hess(theta), -g)


def step_by_conjugate_gradients(loss):
    hess_times = hvp(loss)
    return lambda theta, g: conjugate_gradients(lambda v: hess_times(theta, v), -g)


def conjugate_gradients(matvec, b, rtol=1e-12):
    """Solve A d = b for a symmetric positive definite A known only through ``matvec(v) = A v``.

    In exact arithmetic it ends after at most ``b.size`` iterations; stops when the residual
    is below ``rtol * |b|``.
    """
    d, r = np.zeros_like(b), b
    p, rr = r, r @ r
    for _ in range(b.size):
        if np.sqrt(rr) <= rtol * np.linalg.norm(b):
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        d, r = d + alpha * p, r - alpha * ap
        rr, rr_before = r @ r, rr
        p = r + (rr / rr_before) * p
    return d


def newton(loss, newton_step, theta, steps=10, tol=1e-8):
    """Newton's method from ``theta``: at most ``steps`` steps, until the gradient norm is
    below ``tol``. Prints and returns ``(theta, [(loss, gradient norm) at each iterate])``."""
    loss_and_grad = tinyfn.value_and_grad(loss)
    history = []
    for step in range(steps + 1):
        value, g = loss_and_grad(theta)
        history.append((float(value), float(np.linalg.norm(g))))
        print(f"  step {step:2d}  loss {value:.12f}  |gradient| {history[-1][1]:.2e}")
        if history[-1][1] < tol or step == steps:
            return theta, history
        theta = theta + newton_step(theta, g)


def main(steps=10):
    """Run Newton's method both ways; returns ``{method: (theta, history)}``."""
    loss = make_loss(*versicolor_or_virginica())
    results = {}
    for name, newton_step in [("hessian", step_by_hessian(loss)), ("cg", step_by_conjugate_gradients(loss))]:
        print(f"Newton's method, step from {name}:")
        results[name] = newton(loss, newton_step, np.zeros(5), steps)
    theta = results["hessian"][0]
    print(f"weights {np.round(theta[:4], 4)}, bias {theta[4]:.4f}")
    return results


if __name__ == "__main__":
    main()
