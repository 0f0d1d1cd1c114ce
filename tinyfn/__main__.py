"""``python -m tinyfn``: the ``tinyfn`` command, also how ``tinyfn train --ranks N`` starts each
rank (``mpiexec -n N python -m mpi4py -m tinyfn train ...``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
