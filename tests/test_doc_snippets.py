"""The Python blocks of the README and the docs' home, quickstart and troubleshooting pages run as users paste them.

Each page's blocks run in one namespace (a later block may use the names of an earlier one), in a
temporary folder, with ``max_steps`` cut to 20 so that the suite stays fast: a snippet that uses a name
it never defines, or an API that changed, fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/index.md", "docs/quickstart.md", "docs/troubleshooting.md", "docs/atlas.md",
         "docs/equalizer.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


def test_the_pages_have_python_blocks_to_run():
    for page in PAGES:
        assert python_blocks(ROOT / page), f"{page}: no ```python block found (the pattern or the page changed)"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__snippet__"}
    for number, block in enumerate(python_blocks(ROOT / page), 1):
        code = re.sub(r"max_steps=\d+", "max_steps=20", block)
        try:
            exec(compile(code, f"{page} block {number}", "exec"), namespace)
        except Exception as error:  # the page and block in the failure, not just a traceback into exec
            pytest.fail(f"{page}, python block {number} failed: {type(error).__name__}: {error}\n{block}")
    if "trainer.fit(" in "".join(python_blocks(ROOT / page)):
        assert list(tmp_path.rglob("spectrum.npz")), f"{page}: the monitored fit wrote no spectrum.npz"
        assert list(tmp_path.rglob("stepwise.png")), f"{page}: the monitored fit drew no stepwise.png"
