"""Ranks that sum gradients step after step, until rank 1 fails at step 3.

    mpiexec -n N python -m mpi4py crash.py raise    # rank 1 raises an exception
    mpiexec -n N python -m mpi4py crash.py kill     # rank 1 is killed (SIGKILL)

The other ranks are then waiting in the step's collective, where they would wait forever;
the test checks that the job ends, with a non-zero status, within seconds.
"""

import os
import signal
import sys

import numpy as np

from tinyfn import distributed

world = distributed.current_world()
grads = {"w": np.ones((64, 32), np.float32)}
for step in range(1000):
    if world.rank == 1 and step == 3:
        if sys.argv[1] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("rank 1 fails at step 3")
    grads = world.pmean(grads)
