"""The documentation: API pages list every public name, the site builds with --strict, the
tutorial hook turns percent scripts into pages, and the docstring examples run."""

from __future__ import annotations

import doctest
import importlib
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SUBPACKAGES = ("analytic", "couplings", "data", "losses", "metrics", "models", "paths",
               "sample", "time", "train")


def public_names(module) -> list[str]:
    """`__all__`, or the public names a subpackage's `__init__` binds (submodules excluded)."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items()
                 if not n.startswith("_") and not isinstance(v, type(module))]
    return [n for n in names if not isinstance(getattr(module, n), type(module))]


def documented_names(page: str, module: str) -> set[str]:
    """The names a page documents: `::: module.Name` entries and `members:` lists."""
    names = set(re.findall(rf"^:::\s+{re.escape(module)}\.([A-Za-z_][A-Za-z0-9_]*)\s*$",
                           page, re.M))
    for block in re.findall(rf"^:::\s+{re.escape(module)}\s*\n((?:[ \t]+.*\n?)*)", page, re.M):
        names |= set(re.findall(r"^\s+-\s+([A-Za-z_][A-Za-z0-9_]*)\s*$", block, re.M))
    return names


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_api_page_lists_every_public_name(sub):
    module = importlib.import_module(f"flowjax.{sub}")
    page = (DOCS / "api" / f"{sub}.md").read_text()
    missing = sorted(set(public_names(module)) - documented_names(page, f"flowjax.{sub}"))
    assert not missing, f"docs/api/{sub}.md does not document {missing}"


def test_root_api_page_lists_the_root_exports():
    import flowjax

    exports = [n for n in flowjax.__all__ if n not in SUBPACKAGES]
    assert exports  # the version and the value-check switches
    page = (DOCS / "api" / "flowjax.md").read_text()
    missing = sorted(set(exports) - documented_names(page, "flowjax"))
    assert not missing, f"docs/api/flowjax.md does not document {missing}"
    for sub in SUBPACKAGES:  # and every subpackage has its page in the nav
        assert f"api/{sub}.md" in (ROOT / "mkdocs.yml").read_text()


def test_documented_names_reads_both_forms():
    page = ("::: flowjax.x.A\n\n::: flowjax.x.B\n    options:\n      heading_level: 3\n"
            "::: flowjax.x\n    options:\n      members:\n        - C\n        - D\n")
    assert documented_names(page, "flowjax.x") == {"A", "B", "C", "D"}
    assert documented_names(page, "flowjax.y") == set()


def _hooks():
    sys.path.insert(0, str(DOCS))
    try:
        return importlib.import_module("_hooks")
    finally:
        sys.path.remove(str(DOCS))


def test_percent_script_to_markdown():
    source = ("# ---\n# jupyter:\n#   jupytext: {}\n# ---\n\n"
              "# %% [markdown]\n# # Title\n#\n# Text with `code`.\n\n"
              "# %%\nimport jax\n\nx = 1\n\n"
              "# %% [md]\n# More text.\n#   indented\n\n"
              "# %%\n\n\n"  # an empty code cell is dropped
              "# %% tags=['hide']\nprint(x)  # a comment stays\n")
    md = _hooks().percent_to_markdown(source, script_name="01_x.py")
    assert md == ("# Title\n\nText with `code`.\n\n"
                  "```python\nimport jax\n\nx = 1\n```\n\n"
                  "More text.\n  indented\n\n"
                  "```python\nprint(x)  # a comment stays\n```\n\n"
                  "[Download the script](01_x.py) (run it with "
                  "`python docs/tutorials/01_x.py`, or open it as a notebook with jupytext).\n")


def test_nav_follows_the_files_that_exist(tmp_path):
    (tmp_path / "tutorials").mkdir()
    (tmp_path / "tutorials" / "index.md").write_text("# T\n")
    (tmp_path / "tutorials" / "02_b.py").write_text("# %%\n")
    (tmp_path / "tutorials" / "05_extra.py").write_text("# %%\n")
    (tmp_path / "tutorials" / "utils.py").write_text("")  # not NN_name.py: not a tutorial
    (tmp_path / "index.md").write_text("# H\n")
    config = {"docs_dir": str(tmp_path), "nav": [
        {"Home": "index.md"},
        {"Tutorials": ["tutorials/index.md", "tutorials/01_a.md", {"B": "tutorials/02_b.md"}]},
        {"Results": ["results/toy2d.md", "results/images.md"]},
        {"Missing": "missing.md"},  # outside the discovered sections: left for mkdocs to report
    ]}
    nav = _hooks().on_config(config)["nav"]
    assert nav == [
        {"Home": "index.md"},
        {"Tutorials": ["tutorials/index.md", {"B": "tutorials/02_b.md"},
                       "tutorials/05_extra.md"]},
        {"Missing": "missing.md"},
    ]


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None
                    or importlib.util.find_spec("mkdocstrings_handlers") is None,
                    reason="needs the docs extra: pip install -e '.[docs]'")
def test_site_builds_strict(tmp_path):
    """`mkdocs build --strict`: a broken reference, a griffe warning or a bad link fails."""
    docs = tmp_path / "repo"
    shutil.copytree(DOCS, docs / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "mkdocs.yml", docs / "mkdocs.yml")
    os.symlink(ROOT / "flowjax", docs / "flowjax")
    # A tutorial script and a results page: the hook renders one, the nav keeps the other.
    (docs / "docs" / "tutorials" / "01_otcfm_2d.py").write_text(
        "# %% [markdown]\n# # OT-CFM in 2D\n#\n# Text.\n\n# %%\nprint(1)\n")
    (docs / "docs" / "results").mkdir(exist_ok=True)
    (docs / "docs" / "results" / "toy2d.md").write_text("# Toy 2D\n\nA table.\n")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(docs)}
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                          "-d", str(tmp_path / "site")], cwd=docs, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    site = tmp_path / "site"
    page = (site / "tutorials" / "01_otcfm_2d" / "index.html").read_text()
    assert "OT-CFM in 2D" in page and "01_otcfm_2d.py" in page
    assert (site / "results" / "toy2d" / "index.html").exists()
    api = (site / "api" / "sample" / "index.html").read_text()
    assert 'id="flowjax.sample.solve_ode"' in api and 'id="flowjax.sample.ModelVelocity"' in api
    assert ":func:" not in api and ":class:" not in api  # the reST roles were rewritten
    home = (site / "index.html").read_text()
    assert 'href="tutorials/01_otcfm_2d/"' in home and 'href="results/toy2d/"' in home


def _modules_with_examples() -> list[str]:
    names = []
    for path in sorted((ROOT / "flowjax").rglob("*.py")):
        if ">>>" in path.read_text():
            rel = path.relative_to(ROOT).with_suffix("")
            names.append(".".join(rel.parts).removesuffix(".__init__"))
    return names


def test_docstring_examples_run():
    modules = _modules_with_examples()
    failures, attempted = 0, 0
    for name in modules:
        result = doctest.testmod(importlib.import_module(name), optionflags=(
            doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE), verbose=False)
        failures += result.failed
        attempted += result.attempted
    assert modules and attempted >= len(modules)  # every module with `>>>` ran its examples
    assert failures == 0
