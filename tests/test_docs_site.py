"""The built documentation site renders where users look.

The site is built once per module (``mkdocs build --strict``, about 5 s) into a temporary folder, and
its HTML is checked for what Markdown or mkdocstrings leave behind when a docstring or page is written
for another renderer: raw Sphinx roles, lists collapsed into a paragraph, starred base classes,
unformatted signatures, private names in the API reference. The checkers are tested on small HTML
snippets first, so a check that silently stops catching its problem fails too.
"""

from __future__ import annotations

import ast
import html
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIGNATURE_NOTICE = "Formatting signatures requires"
SPHINX_ROLE = re.compile(r":(?:func|class|meth|attr|data|mod|exc|obj):")
REST_DIRECTIVE = re.compile(r"(?:^|\n)\s*\.\. [a-z-]+::")
LIST_ITEM_LINE = re.compile(r"^\s*(?:[-*+] |\d+[.)] )")
# What signatures are formatted to (mkdocs.yml: line_length). Ruff splits a longer signature over several
# lines (it may still leave a long string literal on one), so a long one-line signature went unformatted.
SIGNATURE_LINE_LENGTH = 88
# Internals that the API reference leaves out on purpose (they are importable, but not promised).
INTERNAL_NAMES = (
    "SpectrumProblem",
    "ProblemLayout",
    "WindowAccumulator",
    "CovarianceMoments",
    "CovarianceRows",
    "CrossCorrelationSums",
    "TrackedPoint",
    "PointSpec",
    "EmbeddingTap",
    "HostSolver",
    "ProblemCounter",
)


@dataclass
class Page:
    """What the checks read from one HTML page."""

    name: str
    paragraphs: list[str] = field(default_factory=list)
    headings: list[tuple[str, str]] = field(default_factory=list)  # (id, text)
    signatures: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # outside <pre>, <script> and <style>


class _PageParser(HTMLParser):
    """Collects paragraphs, headings, signatures and the running text of one page."""

    _SKIP = frozenset({"pre", "script", "style"})
    _CAPTURE = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self, page: Page) -> None:
        super().__init__(convert_charrefs=True)
        self.page = page
        self._skip = 0
        self._open: list[tuple[str, str, list[str]]] = []  # (tag, id, text) of open paragraphs and headings
        self._signature: list[str] | None = None
        self._signature_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if self._signature is not None and tag == "div":
            self._signature_depth += 1
        elif tag == "div" and "doc-signature" in (attributes.get("class") or "").split():
            self._signature, self._signature_depth = [], 1
        if tag in self._SKIP:
            self._skip += 1
        if tag in self._CAPTURE:
            self._open.append((tag, attributes.get("id") or "", []))

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        if self._signature is not None and tag == "div":
            self._signature_depth -= 1
            if not self._signature_depth:
                self.page.signatures.append("".join(self._signature))
                self._signature = None
        if self._open and self._open[-1][0] == tag:
            _, ident, parts = self._open.pop()
            text = "".join(parts)
            if tag == "p":
                self.page.paragraphs.append(text)
            else:
                self.page.headings.append((ident, text.replace("¶", "").strip()))

    def handle_data(self, data: str) -> None:
        if self._signature is not None:
            self._signature.append(data)
        if self._skip:
            return
        self.page.text.append(data)
        for _, _, parts in self._open:
            parts.append(data)


def parse_page(name: str, source: str) -> Page:
    """Parse one page's HTML.

    Examples:
        >>> parse_page("x", "<h2 id='a'>A</h2><p>one<code>two</code></p>").paragraphs
        ['onetwo']
    """
    page = Page(name)
    parser = _PageParser(page)
    parser.feed(source)
    parser.close()
    return page


def _snippet(text: str, start: int = 0, width: int = 120) -> str:
    return " ".join(html.unescape(text[max(0, start - 30) : start + width]).split())


def raw_sphinx_roles(page: Page) -> list[str]:
    """Sphinx roles and reST directives left as text (``:func:`x``` renders as ``:func:`` + code)."""
    text = "".join(page.text)
    found = [_snippet(text, m.start()) for m in SPHINX_ROLE.finditer(text)]
    found += [_snippet(text, m.start()) for m in REST_DIRECTIVE.finditer(text)]
    return found + [_snippet(p, len(p) - 80) for p in page.paragraphs if re.search(r"\w::\s*$", p)]


def collapsed_lists(page: Page) -> list[str]:
    """Paragraphs holding literal list items: a list written without the blank line before it."""
    found = []
    for paragraph in page.paragraphs:
        for line in paragraph.splitlines()[1:]:
            if LIST_ITEM_LINE.match(line):
                found.append(_snippet(paragraph, paragraph.find(line)))
                break
    return found


def starred_bases(page: Page) -> list[str]:
    """``Bases:`` lines showing a starred expression (``class C(*_BASES)``) instead of a class."""
    return [_snippet(p) for p in page.paragraphs if p.strip().startswith("Bases:") and "*" in p]


def unformatted_signatures(page: Page) -> list[str]:
    """Signatures left on one long line (no Black or Ruff, or no ``line_length``): cut off at the right."""
    found = []
    for signature in page.signatures:
        line = signature.strip()
        if "\n" not in line and "," in line and len(line) > SIGNATURE_LINE_LENGTH:
            found.append(_snippet(line, 0, 160))
    text = "".join(page.text)
    if SIGNATURE_NOTICE in text:
        found.append(_snippet(text, text.index(SIGNATURE_NOTICE)))
    return found


def private_headings(page: Page) -> list[str]:
    """Headings of private names (``_x``, dunders included) in an API page."""
    return [
        f"{ident}: {text}"
        for ident, text in page.headings
        if any(part.startswith("_") for part in ident.split(".")) or text.split("(")[0].strip().startswith("_")
    ]


def internal_headings(page: Page) -> list[str]:
    """Headings of the internals the API reference leaves out."""
    return [ident for ident, _ in page.headings if ident.split(".")[-1] in INTERNAL_NAMES]


def exported_names() -> list[str]:
    """``lightning_stepwise.__all__``, read without importing the package (no torch needed)."""
    tree = ast.parse((ROOT / "lightning_stepwise" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("lightning_stepwise/__init__.py has no __all__")


def report(problems: dict[str, list[str]]) -> str:
    """One line per page and problem, for the assertion message."""
    return "\n".join(f"{page}: {snippet}" for page, snippets in problems.items() for snippet in snippets)


# ---------------------------------------------------------------------------------------------- checkers


def test_checkers_catch_the_old_problems() -> None:
    broken = parse_page(
        "broken.html",
        """
        <h3 id="lightning_stepwise.tracker._Window">_Window</h3>
        <h3 id="lightning_stepwise.spectrum.SpectrumProblem">SpectrumProblem</h3>
        <p class="doc doc-class-bases">Bases: <code>*_CALLBACK_BASES</code></p>
        <p>Returns the records of <code>:func:</code><code>detect_onsets</code>, see :class:`Foo`.</p>
        <p>The options are:
        - <code>min_rise</code>: the factor;
        - <code>smoothing</code>: rows.</p>
        <p>Per batch, every rank calls::</p>
        <div class="doc-signature highlight"><pre><code>StepwiseMonitor(module: str | None = None, *, """
        + ", ".join(f"option_{i}: int = {i}" for i in range(12))
        + """)</code></pre></div>
        <p>Formatting signatures requires either Black or Ruff to be installed.</p>
        """,
    )
    assert len(raw_sphinx_roles(broken)) == 3  # :func:, :class:, and the reST literal-block marker
    assert collapsed_lists(broken) and "min_rise" in collapsed_lists(broken)[0]
    assert starred_bases(broken) == ["Bases: *_CALLBACK_BASES"]
    assert len(unformatted_signatures(broken)) == 2  # the long line, and the notice
    assert [s.split(":")[0] for s in private_headings(broken)] == ["lightning_stepwise.tracker._Window"]
    assert internal_headings(broken) == ["lightning_stepwise.spectrum.SpectrumProblem"]


def test_checkers_accept_what_renders_well() -> None:
    good = parse_page(
        "good.html",
        """
        <h3 id="lightning_stepwise.monitor.StepwiseMonitor">StepwiseMonitor</h3>
        <p class="doc doc-class-bases">Bases: <code><a href="#x">Callback</a></code></p>
        <p>The options are:</p>
        <ul><li><code>min_rise</code>: the factor;</li></ul>
        <p>A range, 3 - 5 rows, and a ratio 1:2.</p>
        <pre><code>example::\n- not a list, code\n:func: in code</code></pre>
        <div class="doc-signature highlight"><pre><code>StepwiseMonitor(
            module: str | None = None,
        )</code></pre></div>
        """,
    )
    for check in (raw_sphinx_roles, collapsed_lists, starred_bases, unformatted_signatures, private_headings):
        assert check(good) == [], check.__name__
    assert internal_headings(good) == []


# ---------------------------------------------------------------------------------------------- the site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Page], str]:
    """The site built with ``mkdocs build --strict``: its pages by path, and the build's log."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs and mkdocstrings are not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    if result.returncode:
        pytest.fail(f"mkdocs build --strict failed:\n{log[-4000:]}")
    pages = {
        path.relative_to(out).as_posix(): parse_page(path.relative_to(out).as_posix(), path.read_text("utf-8"))
        for path in sorted(out.rglob("*.html"))
    }
    return pages, log


def _problems(pages: dict[str, Page], check: Callable[[Page], list[str]]) -> dict[str, list[str]]:
    return {name: found for name, page in pages.items() if (found := check(page))}


def test_no_raw_sphinx_roles(site: tuple[dict[str, Page], str]) -> None:
    problems = _problems(site[0], raw_sphinx_roles)
    assert not problems, "Sphinx roles or reST markup rendered as text:\n" + report(problems)


def test_no_collapsed_lists(site: tuple[dict[str, Page], str]) -> None:
    problems = _problems(site[0], collapsed_lists)
    assert not problems, "list items inside a paragraph (a blank line is missing before the list):\n" + report(problems)


def test_no_starred_bases(site: tuple[dict[str, Page], str]) -> None:
    problems = _problems(site[0], starred_bases)
    assert not problems, "base classes shown as a starred expression:\n" + report(problems)


def test_signatures_are_formatted(site: tuple[dict[str, Page], str]) -> None:
    pages, log = site
    assert SIGNATURE_NOTICE not in log, "install ruff (it is in the docs extra) to format the API signatures"
    assert pages["api/index.html"].signatures, "the API page shows no signature"
    problems = _problems(pages, unformatted_signatures)
    assert not problems, "signatures on one long line:\n" + report(problems)


def test_api_page_shows_the_public_api_only(site: tuple[dict[str, Page], str]) -> None:
    api = site[0]["api/index.html"]
    assert not private_headings(api), "private names in the API reference:\n" + "\n".join(private_headings(api))
    assert not internal_headings(api), "internals in the API reference:\n" + "\n".join(internal_headings(api))
    documented = {ident.split(".")[-1] for ident, _ in api.headings}
    missing = sorted(set(exported_names()) - documented)
    assert not missing, f"exported by lightning_stepwise but not in the API reference: {missing}"


def test_callbacks_show_their_callback_base(site: tuple[dict[str, Page], str]) -> None:
    api = site[0]["api/index.html"]
    bases = [" ".join(p.split()) for p in api.paragraphs if p.strip().startswith("Bases:")]
    assert bases.count("Bases: Callback") >= 2, bases  # StepwiseMonitor and LinearProbe
    both = "Bases: lightning.pytorch.callbacks.Callback, pytorch_lightning.callbacks.Callback"
    assert both in bases, "the package's Callback shows both Lightning namespaces"


def test_changelog_and_troubleshooting_are_in_the_site(site: tuple[dict[str, Page], str]) -> None:
    pages = site[0]
    changelog = pages["changelog/index.html"]
    lines = (ROOT / "CHANGELOG.md").read_text("utf-8").splitlines()
    first_release = next(line[3:].strip(" []") for line in lines if line.startswith("## "))
    headings = [text.strip(" []") for _, text in changelog.headings]
    assert "Changelog" in headings and first_release in headings, headings
    assert "--8<--" not in "".join(changelog.text)
    assert "troubleshooting/index.html" in pages
    navigation = "".join(pages["index.html"].text)
    assert "Troubleshooting" in navigation and "Changelog" in navigation
