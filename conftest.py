"""Runs the documentation as tests (with Sybil): every ```python block in README.md and
docs/*.md, and every doctest (``>>>``) in the package's docstrings. Blocks in one file share
their names, top to bottom, like a reader's session."""

from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser
from sybil.parsers.rest import DocTestParser

markdown = Sybil(parsers=[PythonCodeBlockParser(), SkipParser()], patterns=["README.md", "docs/*.md"])
docstrings = Sybil(parsers=[DocTestParser()], patterns=["tinyfn/*.py", "tinyfn/**/*.py"])

pytest_collect_file = (markdown + docstrings).pytest()
