"""Which primitives have a gradient test: test modules mark theirs with ``@covers("name", ...)``,
and ``test_primitive_coverage.py`` fails if a registered primitive is not covered."""

COVERED: set[str] = set()


def covers(*names):
    """Mark the decorated test as the finite-difference gradient test of the named primitives."""

    def mark(test):
        COVERED.update(names)
        return test

    return mark
