"""Data parallelism on MPI: every rank holds the whole model and trains on its share of each batch.

The same script runs alone or as one of ``N`` processes (*ranks*) started by an MPI launcher::

    mpiexec -n 4 python -m mpi4py train.py        # on one machine (mpiexec of the mpich wheel)
    srun -n 64 python -m mpi4py train.py          # on a Slurm cluster, with the site's own MPI

``python -m mpi4py`` turns an exception on one rank into ``MPI_Abort``, which ends every rank
at once instead of leaving the others waiting in a collective forever. mpi4py is the optional
extra ``mpi`` (``pip install 'tinyfn[mpi]'``); it is imported only in a process started as a
rank (see :func:`current_world`), so a script run alone needs neither mpi4py nor MPI.

One training step on ``N`` ranks (:func:`data_parallel_step`):

1. every rank takes its shard of the global batch (:meth:`World.shard`: contiguous slices,
   sizes differing by at most one sample);
2. computes the loss and gradients of its shard, with the dropout key of the step folded
   with its rank (``random.fold_in(step_key, rank)``), so the ranks drop different units;
3. the gradients are averaged over the ranks (:meth:`World.pmean`), all leaves packed in one
   contiguous buffer per dtype, so one collective per step moves them, not one per leaf;
4. every rank applies the same optimizer update to the same parameters: they stay identical
   without ever being sent again.

**Bitwise reproducible.** MPI's own ``Allreduce`` adds the ranks' numbers in an order of its
choosing, which changes with the number of ranks (MPICH 5.0.2 on 100,000 float32 numbers: in
rank order at 2 and 3 ranks, pairwise ``(x_0 + x_1) + (x_2 + x_3)`` at 4, neither at 5; at 4
ranks 22% of the sums differed from the rank-order ones), and float addition is not associative.
So :meth:`World.psum` fixes the order itself: a reduce-scatter (each rank receives one slice
of the buffer from every rank, ``Alltoallv``), a sum of those slices in rank order
``((x_0 + x_1) + x_2) + ...``, and an all-gather of the summed slices (``Allgatherv``). Every
element is summed in the same order on every rank and every run, and that order is the one
in which :func:`tinyfn.optim.accumulate_gradients` sums micro-batches. Hence: ``N`` ranks
train bit for bit like one process that accumulates the same ``N`` shards in rank order with
``accumulate_gradients(optimizer, every=N)`` and the same per-shard keys. Each rank sends and
receives about ``2 (N - 1) / N`` times the buffer, as a ring ``Allreduce`` does, but in
``N - 1`` rounds per collective, where Allreduce's recursive algorithms need about ``log2 N``:
with many ranks and a small model, latency is what the fixed order costs.

**BatchNorm: per-rank statistics.** In a step each rank normalises its shard with the shard's
own mean and variance, exactly as each micro-batch is normalised under gradient accumulation.
The running averages a step returns are the mean over ranks of every rank's new averages (in
the same buffer as the gradients), so the ranks keep identical model states and rank 0's
checkpoint holds the whole run. Synchronised statistics (the mean and variance of the global
batch) would need a collective inside every BatchNorm layer, forward and backward, and would
equal one process on the full batch rather than on micro-batches; tinyfn does not do them.

**What each rank does.** Every rank loads the data, draws the same batch order from the same
key, validates on the whole validation set and runs the hooks that decide to stop (their
inputs are identical, so are their answers). Only rank 0 should write: checkpoints, history,
plots (see ``tinyfn train --ranks``). A run resumed from rank 0's checkpoint continues
exactly: the checkpoint is every rank's state.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from . import losses, random, train, tree
from .random import _check_int

__all__ = ["World", "current_world", "data_parallel_step", "shard_bounds", "mpiexec", "launch_command", "launch"]

# The variables MPI launchers set to the number of ranks: MPICH's hydra, Intel MPI and Slurm's
# PMI-2 (PMI_SIZE), Open MPI (OMPI_COMM_WORLD_SIZE).
_LAUNCHER_SIZES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")

_INSTALL_HINT = "pip install 'tinyfn[mpi]' (mpi4py, and the mpich wheel for an MPI of its own)"


def _mpi():
    """mpi4py's MPI module (importing it initialises MPI), or ImportError saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"distributed training needs mpi4py, which is not installed: {_INSTALL_HINT}") from e
    return MPI


def _launched_size() -> int:
    """The number of ranks an MPI launcher says this process is one of (1 without a launcher)."""
    sizes = [os.environ.get(name, "") for name in _LAUNCHER_SIZES]
    return max([int(s) for s in sizes if s.isdigit()] + [1])


def current_world() -> World:
    """The world of this process: all the ranks its launcher started.

    When the process runs under ``python -m mpi4py`` (or imported ``mpi4py.MPI`` itself), or
    a launcher's variable says it is one of several ranks, this imports mpi4py's MPI
    (ImportError saying how to install it if it is missing) and returns
    ``World(MPI.COMM_WORLD)``. Otherwise it is a world of one rank that does not touch MPI:
    the same script runs alone.
    """
    if _launched_size() == 1 and not {"mpi4py.run", "mpi4py.MPI"} & sys.modules.keys():
        return World()
    return World(_mpi().COMM_WORLD)


def shard_bounds(n: int, size: int) -> np.ndarray:
    """Where ``n`` items split into ``size`` contiguous shards: an int64 array of ``size + 1``
    offsets, shard ``r`` being ``[bounds[r], bounds[r + 1])``. The first ``n % size`` shards
    have one item more than the others (``np.array_split``'s rule)."""
    base, extra = divmod(n, size)
    ranks = np.arange(size + 1, dtype=np.int64)
    return ranks * base + np.minimum(ranks, extra)


class World:
    """The ranks of a run: ``rank`` (0 .. ``size - 1``), ``size``, and the collectives tinyfn uses.

    ``World()`` is a world of one rank with no MPI (each collective returns its input's values);
    ``World(comm)`` wraps an mpi4py communicator. Every rank must call each collective in the
    same order with trees of the same structure, shapes and dtypes (as ranks running the same
    training step do); otherwise MPI reports an error or waits forever.
    """

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()

    def __repr__(self):
        return f"World(rank={self.rank}, size={self.size})"

    def broadcast(self, value, root: int = 0):
        """Rank ``root``'s ``value`` (any picklable tree, such as a training state) on every rank,
        with its array leaves read-only (as parameters are)."""
        root = _check_int("World.broadcast: root", root, 0, self.size)
        if self.size > 1:
            value = self.comm.bcast(value, root=root)
        return tree.freeze(value)

    def psum(self, values, *, fixed_order: bool = True):
        """The leaf-wise sum over the ranks of a tree of arrays (such as gradients), on every rank.

        The leaves are packed into one contiguous buffer per dtype, summed with one collective
        per buffer, and unpacked into a tree of new arrays of the same shapes and dtypes. With
        ``fixed_order=True`` every element is summed in rank order (see the module's doc), so
        the result is the same bit for bit on every rank, on every run and for every MPI;
        ``fixed_order=False`` calls MPI's ``Allreduce``, whose order MPI chooses (it changes
        with the number of ranks, and the MPI standard only recommends, without promising,
        that every rank gets the same bits).
        """
        leaves, treedef = tree.flatten(values)
        arrays = [np.asarray(leaf) for leaf in leaves]
        summed = list(arrays)
        by_dtype: dict = {}
        for index, array in enumerate(arrays):
            by_dtype.setdefault(array.dtype, []).append(index)
        for dtype, indices in by_dtype.items():
            buffer = np.concatenate([arrays[i].ravel() for i in indices])
            if self.size > 1:
                buffer = self._sum_in_rank_order(buffer) if fixed_order else self._allreduce(buffer)
            offsets = np.cumsum([0] + [arrays[i].size for i in indices])
            for i, start, stop in zip(indices, offsets[:-1], offsets[1:]):
                summed[i] = buffer[start:stop].reshape(arrays[i].shape)
        return tree.unflatten(treedef, summed)

    def pmean(self, values, *, fixed_order: bool = True):
        """The leaf-wise mean over the ranks of a tree of floating-point arrays: :meth:`psum`
        divided by ``size`` (TypeError naming the leaf for any other dtype)."""
        for path, leaf in tree.leaves_with_path(values):
            dtype = np.asarray(leaf).dtype
            if not np.issubdtype(dtype, np.floating):
                raise TypeError(f"World.pmean: expected floating-point leaves, found {dtype} at {path!r}")
        return tree.map(lambda s: np.asarray(s / self.size), self.psum(values, fixed_order=fixed_order))

    def shard(self, batch):
        """This rank's part of a global ``batch``: a tree of arrays (such as ``(x, y)``) sharing
        their first axis of ``n`` samples, sliced along it by :func:`shard_bounds`.

        ValueError when the leaves' lengths differ or ``n < size`` (a rank would get nothing).
        """
        lengths = {len(leaf) for leaf in tree.leaves(batch)}
        if len(lengths) != 1:
            raise ValueError(f"World.shard: expected arrays of one length along axis 0, found lengths "
                             f"{sorted(lengths)}")
        (n,) = lengths
        if n < self.size:
            raise ValueError(f"World.shard: a batch of {n} samples cannot be shared by {self.size} ranks: "
                             f"expected at least {self.size} samples (a larger batch, or fewer ranks)")
        bounds = shard_bounds(n, self.size)
        start, stop = bounds[self.rank], bounds[self.rank + 1]
        return tree.map(lambda leaf: leaf[start:stop], batch)

    def barrier(self) -> None:
        """Wait until every rank has called ``barrier`` (nothing to wait for on one rank)."""
        if self.size > 1:
            self.comm.Barrier()

    def _sum_in_rank_order(self, buffer: np.ndarray) -> np.ndarray:
        """Reduce-scatter (rank ``r`` sums slice ``r`` of every rank's buffer, in rank order),
        then all-gather the summed slices."""
        bounds = shard_bounds(buffer.size, self.size)
        counts, starts = np.diff(bounds), bounds[:-1]
        mine = int(counts[self.rank])
        received = np.empty((self.size, mine), buffer.dtype)  # row q: this rank's slice of rank q's buffer
        rows = (np.full(self.size, mine), np.arange(self.size) * mine)
        self.comm.Alltoallv([buffer, (counts, starts)], [received, rows])
        total = received[0].copy()
        for part in received[1:]:
            total += part
        out = np.empty_like(buffer)
        self.comm.Allgatherv(total, [out, (counts, starts)])
        return out

    def _allreduce(self, buffer: np.ndarray) -> np.ndarray:
        out = np.empty_like(buffer)
        self.comm.Allreduce(buffer, out, op=_mpi().SUM)
        return out


def data_parallel_step(model, optimizer, loss_fn=losses.softmax_cross_entropy, regularizer=None, metrics=None, *,
                       world: World | None = None, fixed_order: bool = True):
    """:func:`tinyfn.train.supervised_step` on the ranks of ``world`` (default: :func:`current_world`).

    Returns ``step(state, (x, y)) -> (state, metrics)`` for :func:`tinyfn.train.fit` and its
    loops, where ``(x, y)`` is the *global* batch, the same on every rank: each rank computes
    the gradients of its shard (:meth:`World.shard`) with the step's key folded with its rank,
    the gradients and the new model state (BatchNorm's running averages) are averaged over
    the ranks (:meth:`World.pmean`, one buffer), and every rank applies the same update. The
    metrics (``"loss"`` and those of ``metrics``, default :func:`tinyfn.train.default_metrics`)
    are the mean over the ranks of each shard's value, the same on every rank. Each shard
    weighs the same in both means, so the last, smaller batch of an epoch counts a sample of
    a smaller shard a little more. Start every rank from the same state
    (``world.broadcast(state)``). ``fixed_order`` is passed to :meth:`World.psum`.

    With one rank this is ``supervised_step`` with the dropout key ``fold_in(step_key, 0)``
    instead of ``step_key``: for a model without dropout, the same step bit for bit.
    """
    world = current_world() if world is None else world
    metrics = train.default_metrics(loss_fn) if metrics is None else metrics
    loss_and_grads = train.supervised_gradients(model, loss_fn, regularizer)

    def step(state, batch):
        x, y = world.shard(batch)
        next_key, step_key = random.split(state["key"])
        rank_key = random.fold_in(step_key, world.rank)
        params, model_state = state["params"], state["model_state"]
        (loss, (predictions, model_state)), grads = loss_and_grads(params, model_state, x, y, rank_key)
        grads, model_state = world.pmean((grads, model_state), fixed_order=fixed_order)
        local = {"loss": loss, **{name: metric(predictions, y) for name, metric in metrics.items()}}
        reported = world.pmean({name: np.float64(value) for name, value in local.items()}, fixed_order=fixed_order)
        new_state = train.apply_gradients(optimizer, state, grads, model_state, next_key)
        return new_state, {name: float(value) for name, value in reported.items()}

    return step


# ----------------------------------------------------------------------------- launching


def mpiexec() -> str:
    """The path of ``mpiexec``: the one beside this Python (a virtual environment's, where the
    mpich wheel puts it), else the first on ``PATH``. FileNotFoundError naming both places and
    the install command when there is none."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("mpiexec")
    if found is None:
        raise FileNotFoundError(f"distributed training needs mpiexec, found none in {beside.parent} or on PATH: "
                                f"{_INSTALL_HINT}")
    return found


def launch_command(ranks: int, module_args) -> list[str]:
    """The command that runs ``python -m mpi4py -m tinyfn MODULE_ARGS`` on ``ranks`` local ranks
    under :func:`mpiexec` (FileNotFoundError if there is none; ImportError if mpi4py is not
    installed, checked here rather than in every rank)."""
    ranks = _check_int("launch_command: ranks", ranks, 1)
    if importlib.util.find_spec("mpi4py") is None:
        raise ImportError(f"distributed training needs mpi4py, which is not installed: {_INSTALL_HINT}")
    return [mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "tinyfn", *module_args]


def launch(ranks: int, module_args) -> int:
    """Run :func:`launch_command` and return its exit status (non-zero when any rank failed).

    Each rank gets ``cores // ranks`` threads (at least 1) for tinyfn's kernels and BLAS
    (``TINYFN_NUM_THREADS``, ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``), unless these
    variables are set already: ranks that each use every core would fight over them.
    """
    command = launch_command(ranks, module_args)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = str(max(1, cores // ranks))
    defaults = {name: threads for name in ("TINYFN_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env = {**defaults, **os.environ}
    return subprocess.run(command, env=env).returncode
