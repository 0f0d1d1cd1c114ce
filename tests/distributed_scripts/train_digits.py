"""A few data-parallel steps of the digits MLP and the digits CNN; each run writes its final states.

    mpiexec -n N python -m mpi4py train_digits.py OUT                # rank r writes OUT/rank{r}.msgpack
    python train_digits.py OUT --reference N                         # writes OUT/reference{N}.msgpack

With ``--reference N`` one process trains the same models on the same global batches without
MPI and without tinyfn.distributed: each step splits the batch into N micro-batches with
``np.array_split``, computes their gradients with the dropout key ``fold_in(step_key, r)``,
feeds them in order to ``optim.accumulate_gradients(optimizer, every=N)`` and averages the
micro-batches' new BatchNorm statistics. tests/test_distributed.py compares the files.

Each file also holds ``psum``: a fixed-order sum over the ranks of a small tree whose leaves
rank r draws from ``np.random.default_rng(r)`` (float32 and float64 leaves, one with fewer
elements than ranks).
"""

import functools
import sys
from pathlib import Path

import numpy as np

from tinyfn import checkpoint, datasets, optim, random, tasks, train, tree
from tinyfn.autodiff import value_and_grad
from tinyfn.layers import apply_with_state
from tinyfn.losses import softmax_cross_entropy

STEPS = 4
GLOBAL_BATCH = 30  # 4 ranks get shards of 8, 8, 7 and 7 samples


def setups():
    """``{name: (model, optimizer, x, y)}``: the MLP of ``tinyfn train digits`` with SGD and
    momentum, and the digits CNN with Adam, on the first batches of one shuffled epoch."""
    images, labels = datasets.digits(images=True)
    images = (images / 16.0).astype(np.float32)
    return {
        "mlp": (tasks.get_task("digits").model(), optim.sgd(0.05, momentum=0.9), images.reshape(-1, 64), labels),
        "cnn": (tasks.digits_cnn(), optim.adam(3e-3), images, labels),
    }


def global_batches(x, y):
    return list(datasets.batches(random.key(5), x, y, GLOBAL_BATCH).epoch(0))[:STEPS]


def fresh_state(model, optimizer, x):
    return train.init_train_state(model, optimizer, random.key(1), (-1,) + x.shape[1:])


def psum_input(rank: int) -> dict:
    rng = np.random.default_rng(rank)
    return {"a": rng.standard_normal((7, 3)).astype(np.float32), "b": rng.standard_normal(2),
            "c": rng.standard_normal(5)}


def run_ranks(out: Path) -> None:
    from tinyfn import distributed

    world = distributed.current_world()
    results = {"psum": world.psum(psum_input(world.rank))}
    for name, (model, optimizer, x, y) in setups().items():
        state = world.broadcast(fresh_state(model, optimizer, x))
        step = distributed.data_parallel_step(model, optimizer, world=world)
        for batch in global_batches(x, y):
            state, metrics = step(state, batch)
        results[name] = {"state": state, "loss": metrics["loss"]}
    checkpoint.save(out / f"rank{world.rank}.msgpack", results)


def run_reference(out: Path, ranks: int) -> None:
    results = {}
    for name, (model, optimizer, x, y) in setups().items():

        def objective(params, model_state, x, y, key):
            predictions, new_model_state = apply_with_state(model, params, x, model_state, key=key, train=True)
            return softmax_cross_entropy(predictions, y), new_model_state

        loss_and_grads = value_and_grad(objective, has_aux=True)
        accumulating = optim.accumulate_gradients(optimizer, every=ranks)
        state = fresh_state(model, accumulating, x)
        params, opt_state, model_state, key = state["params"], state["opt_state"], state["model_state"], state["key"]
        for xb, yb in global_batches(x, y):
            key, step_key = random.split(key)
            new_model_states, losses = [], []
            for r, (xs, ys) in enumerate(zip(np.array_split(xb, ranks), np.array_split(yb, ranks))):
                key_r = random.fold_in(step_key, r)
                (loss, new_model_state), grads = loss_and_grads(params, model_state, xs, ys, key_r)
                updates, opt_state = accumulating.update(grads, opt_state, params)
                params = optim.apply_updates(params, updates)
                new_model_states.append(new_model_state)
                losses.append(float(loss))
            model_state = tree.map(lambda *s: functools.reduce(np.add, s) / ranks, *new_model_states)
        loss = functools.reduce(lambda a, b: a + b, losses) / ranks
        results[name] = {
            "state": {"params": params, "opt_state": opt_state["inner"], "model_state": model_state,
                      "step": STEPS, "key": key},
            "loss": loss,
        }
    checkpoint.save(out / f"reference{ranks}.msgpack", results)


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    if sys.argv[2:3] == ["--reference"]:
        run_reference(folder, int(sys.argv[3]))
    else:
        run_ranks(folder)
