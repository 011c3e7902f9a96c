"""The README: its quickstart runs and prints what it says, its extras table matches
pyproject.toml, and its relative links point at files of the repository."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text of the `## title` section, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README,
                      re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def quickstart_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", section("Quickstart"), re.DOTALL)
    assert len(blocks) == 1, "the quickstart is one python block"
    return blocks[0]


def extras_in_table() -> set[str]:
    rows = re.findall(r"^\| `([A-Za-z0-9_-]+)` \|", section("Install"), re.MULTILINE)
    return set(rows)


def test_quickstart_runs_and_prints_nfe_and_w2():
    code = quickstart_code()
    assert 20 <= len(code.strip().splitlines()) <= 30
    # A fresh interpreter, as a user would run it (no state from other tests).
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    match = re.fullmatch(r"NFE (\d+) W2 ([0-9.]+)\n", out.stdout)
    assert match, out.stdout
    nfe, w2 = int(match.group(1)), float(match.group(2))
    assert nfe == 8  # Heun: two evaluations per step, four steps
    # Measured 0.366 on a 2-core x86 CPU; two independent 1,000-point samples of the
    # moons are about 0.32 apart, and the untrained source is about 2 away.
    assert 0.25 < w2 < 0.6, w2


def test_extras_table_names_exactly_the_extras_of_pyproject():
    with open(ROOT / "pyproject.toml", "rb") as f:
        extras = set(tomllib.load(f)["project"]["optional-dependencies"])
    assert extras  # the check below must compare something
    assert extras_in_table() == extras


def test_extras_table_is_read_from_the_install_section():
    # The parser finds table rows of the form "| `name` | ..." and nothing else.
    assert "data" in extras_in_table() and "install" not in extras_in_table()


def relative_links(text: str) -> list[str]:
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    return [link for link in links
            if not re.match(r"^[a-z][a-z0-9+.-]*:", link) and not link.startswith("#")]


def test_relative_links_resolve():
    links = relative_links(README)
    assert links  # the README links its docs, results and benchmarks
    missing = [link for link in links
               if not (ROOT / link.split("#", 1)[0]).is_file()]
    assert not missing, f"README.md links to missing files: {missing}"


@pytest.mark.parametrize("text, expected", [
    ("[a](docs/x.md) [b](https://e.org) [c](#top) [d](LICENSE#l1)", ["docs/x.md", "LICENSE#l1"]),
    ("no links", []),
])
def test_relative_links_parser(text, expected):
    assert relative_links(text) == expected
