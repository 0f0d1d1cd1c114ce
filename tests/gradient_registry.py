"""Which primitives have gradient tests: test modules mark theirs with ``@covers("name", ...)``
(first derivatives) or ``@covers("name", ..., order=2)`` (first and second derivatives), and
``test_primitive_coverage.py`` fails if a registered primitive is not covered to order 2."""

COVERED: dict[int, set[str]] = {1: set(), 2: set()}


def covers(*names, order: int = 1):
    """Mark the decorated test as the finite-difference test of the named primitives'
    derivatives up to ``order``."""

    def mark(test):
        for k in range(1, order + 1):
            COVERED[k].update(names)
        return test

    return mark
