"""The example scripts run and do what their docstrings say."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sigmoid_neuron_example_writes_the_graph_and_correct_gradients(tmp_path, capsys):
    example = _load("sigmoid_neuron_graph")
    example.main(tmp_path)
    assert "sigmoid" in (tmp_path / "neuron.dot").read_text()
    printed = capsys.readouterr().out
    s = 1 / (1 + np.exp(-(0.2 * 1.5 + 0.4 * 0.5 + 0.1)))
    assert f"df/db = {s * (1 - s):.4f}" in printed


def test_iris_binary_by_hand_classifies_the_test_split_perfectly(capsys):
    assert _load("iris_binary_by_hand").main(seed=3) == 1.0


def test_residual_model_with_custom_loss_learns(capsys):
    assert _load("residual_custom_loss").main(epochs=3) > 0.9


def test_checkpoint_example_round_trips(tmp_path, capsys):
    _load("checkpoint_roundtrip").main(tmp_path)
    assert any(p.suffix == ".msgpack" for p in tmp_path.iterdir())


def test_pinn_solves_the_poisson_problem_and_draws_it(tmp_path, capsys):
    error = _load("pinn").main(tmp_path, steps=300)
    assert error < 1e-2
    assert (tmp_path / "pinn.png").read_bytes().startswith(b"\x89PNG")
    assert f"max |u(x) - sin(pi x)| = {error:.2e} after 300 steps" in capsys.readouterr().out


def test_pinn_command_line_writes_into_the_folder_given(tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "pinn.py"), str(tmp_path / "out"), "--steps", "20"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["out", "out/pinn.png"]


def test_newton_reaches_the_optimum_in_under_ten_steps_by_hessian_and_by_cg(capsys):
    example = _load("newton_iris")
    results = example.main(steps=10)
    for theta, history in results.values():
        losses, gradient_norms = zip(*history)
        assert gradient_norms[-1] < 1e-8 and len(history) <= 10
        assert all(later <= earlier for earlier, later in zip(losses, losses[1:]))
    np.testing.assert_allclose(results["cg"][0], results["hessian"][0], rtol=1e-9)
    # the optimum: the regularized loss's gradient, by finite differences, vanishes there
    loss = example.make_loss(*example.versicolor_or_virginica())
    theta, eps = results["hessian"][0], 1e-6
    numeric = [(loss(theta + eps * e) - loss(theta - eps * e)) / (2 * eps) for e in np.eye(5)]
    np.testing.assert_allclose(numeric, 0, atol=1e-8)


def test_gradient_penalty_flattens_the_model_and_resists_an_adversarial_step(capsys):
    results = _load("gradient_penalty").main(epochs=2)
    plain, penalized = results[0.0], results[1.0]
    assert plain["accuracy"] > 0.9 and penalized["accuracy"] > 0.9
    assert penalized["penalty"] < 0.75 * plain["penalty"]
    assert penalized["attacked accuracy"] > plain["attacked accuracy"] + 0.03
