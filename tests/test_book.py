"""The book in docs/book/ covers the package and holds together: every registered primitive and
every public layer has its VJP derived under an anchor (``<a id="vjp-NAME">`` for a primitive,
``<a id="layer-name">`` for a layer), the figure script draws every figure the chapters show,
and every relative link and image resolves. (The chapters' code blocks themselves run through
Sybil, configured in the repository's conftest.py.)"""

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tinyfn
from tinyfn import conv, layers
from tinyfn.autodiff import PRIMITIVES

BOOK = Path(__file__).resolve().parent.parent / "docs" / "book"
PACKAGE = Path(tinyfn.__file__).resolve().parent
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]-*.md"))
ANCHOR = re.compile(r'<a id="([^"]+)"></a>')
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)
CODE_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _text(path: Path) -> str:
    """A chapter without its code blocks (links and anchors live in the prose)."""
    return CODE_BLOCK.sub("", path.read_text(encoding="utf-8"))


def _anchors() -> dict[str, list[str]]:
    """Every explicit anchor of the book: id -> the chapters that define it."""
    found: dict[str, list[str]] = {}
    for chapter in CHAPTERS:
        for anchor in ANCHOR.findall(_text(chapter)):
            found.setdefault(anchor, []).append(chapter.name)
    return found


def package_primitives() -> dict[str, Path]:
    """Every primitive defined in the package (after importing all of its modules): name -> the
    file of its VJP rule. Primitives made elsewhere (tests, doc examples) are left out."""
    for module in pkgutil.walk_packages(tinyfn.__path__, "tinyfn."):
        importlib.import_module(module.name)
    found = {}
    for name, primitive in PRIMITIVES.items():
        code = getattr(primitive.vjp, "__code__", None)
        path = Path(code.co_filename).resolve() if code is not None else None
        if path is not None and PACKAGE in path.parents:
            found[name] = path
    return found


def public_layers() -> list[str]:
    """The names of the layer constructors the package exports: the functions of
    ``tinyfn.layers`` and ``tinyfn.conv`` that return a Layer (or a recurrent Cell)."""
    names = []
    for module in (layers, conv):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj) and inspect.signature(obj).return_annotation in ("Layer", "Cell"):
                names.append(name)
    return names


def test_the_book_has_its_chapters():
    assert [c.name[:2] for c in CHAPTERS] == [f"{i:02d}" for i in range(1, 9)]


def test_every_primitive_has_its_vjp_derived():
    primitives = package_primitives()
    assert len(primitives) >= 50  # the enumeration found the package's primitives
    anchors = _anchors()
    missing = sorted(name for name in primitives if f"vjp-{name}" not in anchors)
    assert not missing, f"primitives with no derivation in docs/book (add <a id=\"vjp-NAME\"></a>): {missing}"
    repeated = {a: where for a, where in anchors.items() if len(where) > 1}
    assert not repeated, f"anchors defined more than once: {repeated}"


POINTER = re.compile(r"# VJPs? derived in (docs/book/[\w.-]+\.md)((?:#vjp-\w+(?:, | and )?)+)$", re.MULTILINE)


def test_every_vjp_rule_in_the_code_points_to_its_derivation():
    """Beside each rule, a comment such as ``# VJP derived in docs/book/02-primitives.md#vjp-add``
    names the chapter and anchor of its derivation; the anchor must be in that chapter."""
    anchors = _anchors()
    pointed = {}
    for path in set(package_primitives().values()):
        for chapter, refs in POINTER.findall(path.read_text(encoding="utf-8")):
            for name in re.findall(r"#vjp-(\w+)", refs):
                pointed[name] = (path, chapter)
    for name, path in package_primitives().items():
        assert name in pointed and pointed[name][0] == path, f"{path.name}: the VJP of {name!r} has no pointer to docs/book"
        chapter = Path(pointed[name][1]).name
        assert chapter in anchors.get(f"vjp-{name}", []), f"{path.name}: {name!r} points to {chapter}, which lacks vjp-{name}"


def test_every_public_layer_has_its_vjp_derived():
    names = public_layers()
    assert {"Dense", "Conv2D", "BatchNorm", "LayerNorm", "LSTM", "TransformerBlock", "serial", "residual"} <= set(names)
    anchors = _anchors()
    missing = sorted(name for name in names if f"layer-{name.lower()}" not in anchors)
    assert not missing, f"layers with no derivation in docs/book (add <a id=\"layer-name\"></a>): {missing}"


def _referenced_figures() -> set[str]:
    return {
        Path(target).name
        for chapter in CHAPTERS
        for target in LINK.findall(_text(chapter))
        if target.startswith("figures/")
    }


def test_the_figure_script_draws_every_figure_of_the_chapters(tmp_path):
    pytest.importorskip("matplotlib")
    figures = _referenced_figures()
    assert figures, "the chapters show no figure from docs/book/figures"
    subprocess.run([sys.executable, str(BOOK / "make_figures.py"), str(tmp_path)], check=True, capture_output=True, timeout=300)
    written = {p.name for p in tmp_path.iterdir()}
    assert figures <= written, f"figures the chapters show but make_figures.py did not write: {sorted(figures - written)}"
    for name in figures:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, f"{name} is not a drawn PNG"


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _link_targets():
    for page in [BOOK / "README.md", *CHAPTERS]:
        for target in LINK.findall(_text(page)):
            if not re.match(r"[a-z]+:", target):  # http:, https:, mailto: are not checked here
                yield page, target


@pytest.mark.parametrize("page, target", list(_link_targets()), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_every_relative_link_and_image_resolves(page, target):
    path_part, _, fragment = target.partition("#")
    resolved = (page.parent / path_part).resolve() if path_part else page
    assert resolved.exists(), f"{page.name}: {target} points to {resolved}, which does not exist"
    if fragment and resolved.suffix == ".md":
        text = _text(resolved)
        ids = set(ANCHOR.findall(text)) | {_slug(h) for h in HEADING.findall(text)}
        assert fragment in ids, f"{page.name}: {target} names an anchor that {resolved.name} does not have"
