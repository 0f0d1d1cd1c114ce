"""Runs the documentation as tests (with Sybil): every ```python block in README.md, docs/*.md
and the book (docs/book/*.md), and every doctest (``>>>``) in the package's docstrings. Blocks
in one file share their names, top to bottom, like a reader's session.

At the end of the run, the terminal summary says how many documentation examples ran and how
many passed, so that the CI log shows the number.
"""

from collections import Counter

from sybil import Sybil
from sybil.evaluators.doctest import DocTestEvaluator
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser
from sybil.parsers.rest import DocTestParser

markdown = Sybil(
    parsers=[PythonCodeBlockParser(), SkipParser()],
    patterns=["README.md", "docs/*.md", "docs/book/*.md"],
)
docstrings = Sybil(parsers=[DocTestParser()], patterns=["tinyfn/*.py", "tinyfn/**/*.py"])

pytest_collect_file = (markdown + docstrings).pytest()

# ----------------------------------------------------------------------------- the count

_KINDS = {PythonEvaluator: "python blocks in markdown", DocTestEvaluator: "doctests in docstrings"}
_kind_of_item: dict[str, str] = {}  # nodeid -> kind, for the documentation examples collected
_outcome_of_item: dict[str, str] = {}  # nodeid -> "passed", "failed" or "skipped"


def pytest_collection_modifyitems(items):
    for item in items:
        evaluator = getattr(getattr(getattr(item, "example", None), "region", None), "evaluator", None)
        kind = _KINDS.get(type(evaluator))
        if kind is not None:
            _kind_of_item[item.nodeid] = kind


def pytest_runtest_logreport(report):
    if report.nodeid not in _kind_of_item:
        return
    # a failure in any phase counts; otherwise the outcome of the call (or of a skipped setup)
    if report.failed or report.when == "call" or (report.when == "setup" and report.skipped):
        if _outcome_of_item.get(report.nodeid) != "failed":
            _outcome_of_item[report.nodeid] = report.outcome


def pytest_terminal_summary(terminalreporter):
    if not _outcome_of_item:
        return
    terminalreporter.section("documentation examples")
    for kind in _KINDS.values():
        outcomes = Counter(outcome for nodeid, outcome in _outcome_of_item.items() if _kind_of_item[nodeid] == kind)
        ran = outcomes["passed"] + outcomes["failed"]
        if ran or outcomes["skipped"]:
            terminalreporter.write_line(
                f"{kind}: {ran} ran, {outcomes['passed']} passed, {outcomes['failed']} failed, {outcomes['skipped']} skipped"
            )
