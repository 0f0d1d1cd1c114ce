"""tinyfn.distributed: sharding, the collectives, the data-parallel step and the launch.

The first tests run in this process, in a world of one rank (no MPI). The others start
``mpiexec`` (the one beside this Python, where the mpich wheel puts it) with 2 and 4 local
ranks, more than this machine's cores, and are skipped when mpi4py is not installed. Their
scripts are in tests/distributed_scripts/. Every process runs its kernels and BLAS on one
thread, so the single-process reference computes each micro-batch exactly as a rank does.
"""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyfn import checkpoint, cli, distributed, random, tasks, train, tree
from tinyfn.optim import sgd

SCRIPTS = Path(__file__).resolve().parent / "distributed_scripts"
ROOT = SCRIPTS.parents[1]
ONE_THREAD = {"TINYFN_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
LAUNCHER_VARIABLES = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")


def clean_env(**extra) -> dict:
    """This environment without an MPI launcher's variables, one thread per process, tinyfn importable."""
    env = {name: value for name, value in os.environ.items() if name not in LAUNCHER_VARIABLES}
    python_path = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **ONE_THREAD, "PYTHONPATH": python_path, **extra}


def mpiexec_or_skip() -> str:
    pytest.importorskip("mpi4py")
    path = Path(sys.executable).parent / "mpiexec"
    if not path.is_file():
        pytest.skip(f"no mpiexec beside {sys.executable} (pip install mpich)")
    return str(path)


def run_python(*args, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=clean_env(), capture_output=True, text=True, timeout=timeout,
                          **kwargs)


def assert_same_bits(actual, expected, where=""):
    assert tree.structure(actual) == tree.structure(expected), where
    for (path, a), e in zip(tree.leaves_with_path(actual), tree.leaves(expected)):
        a, e = np.asarray(a), np.asarray(e)
        assert (a.dtype, a.shape) == (e.dtype, e.shape), f"{where}{path}"
        assert a.tobytes() == e.tobytes(), f"{where}{path}: {a.ravel()[:4]} ... differs from {e.ravel()[:4]} ..."


class FakeComm:
    """Enough of a communicator for World.shard, which only asks for the rank and size."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size


# ----------------------------------------------------------------------------- one process


@given(n=st.integers(0, 300), size=st.integers(1, 40))
def test_shard_bounds_split_like_numpy_array_split(n, size):
    bounds = distributed.shard_bounds(n, size)
    assert bounds[0] == 0 and bounds[-1] == n and len(bounds) == size + 1
    assert [int(c) for c in np.diff(bounds)] == [len(part) for part in np.array_split(np.arange(n), size)]


@pytest.mark.parametrize("n, size", [(30, 4), (8, 8), (13, 1), (32, 3)])
def test_the_shards_of_the_ranks_make_up_the_batch(n, size):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    y = np.arange(n)
    shards = [distributed.World(FakeComm(r, size)).shard((x, y)) for r in range(size)]
    np.testing.assert_array_equal(np.concatenate([xs for xs, _ in shards]), x)
    np.testing.assert_array_equal(np.concatenate([ys for _, ys in shards]), y)
    assert max(len(ys) for _, ys in shards) - min(len(ys) for _, ys in shards) <= 1


def test_bad_batches_for_sharding_are_refused():
    four = distributed.World(FakeComm(2, 4))
    with pytest.raises(ValueError, match=r"^World.shard: a batch of 3 samples cannot be shared by 4 ranks: expected "
                                         r"at least 4 samples \(a larger batch, or fewer ranks\)$"):
        four.shard((np.zeros((3, 2)), np.zeros(3)))
    with pytest.raises(ValueError, match=r"^World.shard: expected arrays of one length along axis 0, found lengths "
                                         r"\[5, 6\]$"):
        four.shard((np.zeros((6, 2)), np.zeros(5)))


def test_a_world_of_one_rank_returns_its_input_as_new_arrays():
    world = distributed.World()
    assert (world.rank, world.size) == (0, 1)
    values = {"w": np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "b": np.array([-0.0, 2.5]), "n": np.array(3)}
    summed = world.psum(values)
    assert_same_bits(summed, values)
    assert all(s is not v for s, v in zip(tree.leaves(summed), tree.leaves(values)))
    floats = {"w": values["w"], "b": values["b"]}
    assert_same_bits(world.pmean(floats), floats)
    broadcast = world.broadcast({"params": {"w": np.ones(2)}, "step": 3})
    assert broadcast["step"] == 3 and not broadcast["params"]["w"].flags.writeable


def test_pmean_refuses_integer_leaves():
    with pytest.raises(TypeError, match=r"^World.pmean: expected floating-point leaves, found int64 at 'count'$"):
        distributed.World().pmean({"count": np.array(3, np.int64), "w": np.ones(2)})


def digits_mlp_setup():
    task = tasks.get_task("digits")
    data = task.load(0)
    images, labels, model = data.x_train, data.y_train, task.model()
    optimizer = sgd(0.05, momentum=0.9)
    state = train.init_train_state(model, optimizer, random.key(0), (-1, 64))
    return model, optimizer, state, list(zip(np.array_split(images[:96], 3), np.array_split(labels[:96], 3)))


def test_on_one_rank_the_data_parallel_step_is_the_supervised_step():
    model, optimizer, state, batches = digits_mlp_setup()
    parallel = distributed.data_parallel_step(model, optimizer, world=distributed.World())
    alone = train.supervised_step(model, optimizer)
    a = b = state
    for batch in batches:
        (a, metrics_a), (b, metrics_b) = parallel(a, batch), alone(b, batch)
        assert metrics_a == metrics_b
    assert_same_bits(a, b)


def test_without_a_launcher_the_world_is_one_rank_without_mpi():
    code = "import sys; from tinyfn import distributed; w = distributed.current_world(); " \
           "print(w.rank, w.size, 'mpi4py.MPI' in sys.modules)"
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "1", "False"]


def test_a_launched_rank_without_mpi4py_says_how_to_install_it():
    code = "import sys; sys.modules['mpi4py'] = None; from tinyfn import distributed; distributed.current_world()"
    result = subprocess.run([sys.executable, "-c", code], env=clean_env(PMI_SIZE="2", PMI_RANK="0"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert ("ImportError: distributed training needs mpi4py, which is not installed: pip install 'tinyfn[mpi]'"
            in result.stderr)


def test_the_launch_command_runs_tinyfn_under_mpi4py_with_the_mpiexec_beside_python():
    mpiexec = mpiexec_or_skip()
    command = distributed.launch_command(3, ["train", "digits", "--ranks", "3"])
    assert command == [mpiexec, "-n", "3", sys.executable, "-m", "mpi4py", "-m", "tinyfn", "train", "digits",
                       "--ranks", "3"]


def test_no_mpiexec_is_an_error_naming_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"^distributed training needs mpiexec, found none in {tmp_path} or "
                                                "on PATH: pip install 'tinyfn\\[mpi\\]'"):
        distributed.mpiexec()


# ----------------------------------------------------------------------------- MPI ranks


def train_digits(out: Path, ranks: int) -> dict:
    """Run train_digits.py on ``ranks`` ranks and as the one-process reference; the saved results."""
    mpiexec = mpiexec_or_skip()
    script = str(SCRIPTS / "train_digits.py")
    launched = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py", script, str(out)],
                              env=clean_env(), capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    reference = run_python(script, str(out), "--reference", str(ranks), timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]
    return {name: checkpoint.load(out / f"{name}.msgpack")
            for name in [f"rank{r}" for r in range(ranks)] + [f"reference{ranks}"]}


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("ranks", [2, 4])
def test_ranks_train_bit_for_bit_like_one_process_accumulating_their_shards(tmp_path, ranks):
    results = train_digits(tmp_path, ranks)
    rank0 = results["rank0"]
    for r in range(1, ranks):
        assert_same_bits(results[f"rank{r}"], rank0, where=f"rank {r} vs rank 0: ")

    # The fixed-order sum is the sum in rank order, also for buffers shorter than the number of ranks.
    inputs = [load_script("train_digits").psum_input(r) for r in range(ranks)]
    in_rank_order = {name: inputs[0][name] for name in inputs[0]}
    for later in inputs[1:]:
        in_rank_order = {name: in_rank_order[name] + later[name] for name in later}
    assert_same_bits(rank0["psum"], in_rank_order, where="psum ")

    reference = results[f"reference{ranks}"]
    for model in ("mlp", "cnn"):
        assert_same_bits(rank0[model]["state"], reference[model]["state"], where=f"{model} vs reference: ")
        assert rank0[model]["loss"] == reference[model]["loss"]
    # BatchNorm's running averages moved, and they are the ranks' mean, not rank 0's alone.
    running_mean = rank0["cnn"]["state"]["model_state"]["batch_norm_1"]["mean"]
    assert np.all(running_mean != 0)


@pytest.mark.parametrize("failure", ["raise", "kill"])
def test_a_failing_rank_ends_the_whole_job_within_seconds(failure):
    mpiexec = mpiexec_or_skip()
    started = time.monotonic()
    result = subprocess.run([mpiexec, "-n", "4", sys.executable, "-m", "mpi4py", str(SCRIPTS / "crash.py"), failure],
                            env=clean_env(), capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode != 0
    if failure == "raise":
        assert "RuntimeError: rank 1 fails at step 3" in result.stderr


# ----------------------------------------------------------------------------- tinyfn train --ranks


def test_train_on_ranks_without_mpiexec_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mpi4py")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cli.main(["train", "digits", "--ranks", "2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == (f"tinyfn train: error: --ranks 2: distributed training needs mpiexec, found none in {tmp_path} or "
                   "on PATH: pip install 'tinyfn[mpi]' (mpi4py, and the mpich wheel for an MPI of its own)\n")
    assert not (tmp_path / "run").exists()


def test_train_on_ranks_without_mpi4py_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if it were not installed
    assert cli.main(["train", "digits", "--ranks", "2", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == ("tinyfn train: error: --ranks 2: distributed training needs mpi4py, which is "
                                       "not installed: pip install 'tinyfn[mpi]' (mpi4py, and the mpich wheel for an "
                                       "MPI of its own)\n")


def tinyfn_train(*args, **popen) -> subprocess.Popen:
    """``python -m tinyfn train ...`` in a process group of its own (mpiexec and the ranks with it)."""
    return subprocess.Popen([sys.executable, "-m", "tinyfn", "train", *args, "--no-progress"], env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **popen)


def finished(process: subprocess.Popen, timeout=300) -> tuple:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def descendants(pid: int) -> list[int]:
    """The processes started by ``pid``, its children's children included (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def rank_process(pid: int, rank: int) -> int | None:
    """The pid of rank ``rank`` among the processes started by ``pid``, or None (not started yet)."""
    for child in descendants(pid):
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if f"PMI_RANK={rank}".encode() in environ and b"mpi4py" in command:
            return child
    return None


def saved_epoch(folder: Path) -> int:
    try:
        return checkpoint.read_metadata(folder / "checkpoint.msgpack")["epoch"]
    except (OSError, ValueError):
        return 0


def test_a_killed_distributed_run_ends_and_resumes_bit_for_bit(tmp_path):
    mpiexec_or_skip()
    if not Path("/proc/self/environ").exists():
        pytest.skip("finding the ranks' processes needs Linux's /proc")
    flags = ["digits", "--ranks", "2", "--epochs", "30"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    run = tinyfn_train(*flags, "--out", str(killed))
    while saved_epoch(killed) < 2 and run.poll() is None:
        time.sleep(0.01)
    rank0 = rank_process(run.pid, 0)
    assert rank0 is not None, finished(run)
    os.kill(rank0, signal.SIGKILL)  # the rank that writes the checkpoints
    killed_at = time.monotonic()
    status, _, err = finished(run, timeout=60)
    assert time.monotonic() - killed_at < 30
    assert status != 0, err
    epoch = saved_epoch(killed)
    assert 2 <= epoch < 30  # the checkpoint is intact (it loads), and the run was stopped before its end

    status, out, err = finished(tinyfn_train("digits", "--resume", "--out", str(killed)))  # 2 ranks, as saved
    assert status == 0, err
    assert f"resuming {killed} after epoch {epoch} of 30" in out
    status, out, err = finished(tinyfn_train(*flags, "--out", str(whole)))
    assert status == 0, err
    assert out.count(f"wrote {whole / 'checkpoint.msgpack'}") == 1  # rank 0 alone speaks and writes
    assert "on 2 ranks" in out

    resumed, straight = checkpoint.load(killed / "checkpoint.msgpack"), checkpoint.load(whole / "checkpoint.msgpack")
    assert_same_bits(resumed["state"], straight["state"])
    for name, values in straight["history"].items():
        if name != "seconds":
            assert_same_bits(resumed["history"][name], values, where=f"history {name}: ")
    assert resumed["state"]["step"] == 30 * 39  # 1,222 training samples in batches of 32, per epoch
