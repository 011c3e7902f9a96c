"""MkDocs hooks of the flowjax site (``hooks:`` in mkdocs.yml).

Two jobs, both without executing anything:

* Tutorials are jupytext percent-format scripts, ``docs/tutorials/NN_name.py``. Each one
  becomes the page ``tutorials/NN_name.md``: ``# %% [markdown]`` cells (lines of ``# ``
  comments) become Markdown, ``# %%`` cells become Python code blocks. The script itself
  is still copied into the site, and the page links to it.
* The "Tutorials" and "Results" sections of the nav list the pages they will hold. An
  entry whose page (or tutorial script) is not in ``docs/`` is dropped, and a page that is
  there but not listed is appended, so the nav follows the files that exist and a missing
  one never breaks ``mkdocs build --strict``.
"""

from __future__ import annotations

import logging
import os
import re

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.flowjax")

TUTORIALS = "tutorials"
DISCOVERED = ("tutorials", "results")  # nav sections that follow the files that exist
_CELL = re.compile(r"^# %%(?P<rest>.*)$")
_SCRIPT = re.compile(r"^\d\d_[A-Za-z0-9_]+\.py$")


def percent_to_markdown(source: str, script_name: str | None = None) -> str:
    """Markdown of a percent-format script: markdown cells as text, code cells as blocks.

    A leading module docstring or jupytext header (a ``# ---`` block) is dropped; a code
    cell with nothing but blank lines is dropped; ``# %% [markdown]`` cells lose one
    leading ``# `` (or a bare ``#``) per line.
    """
    lines = source.splitlines()
    if lines and lines[0].strip() == "# ---":  # jupytext YAML header
        end = next((i for i in range(1, len(lines)) if lines[i].strip() == "# ---"), None)
        if end is not None:
            lines = lines[end + 1:]
    cells: list[tuple[str, list[str]]] = []
    kind, body = "code", []
    for line in lines:
        match = _CELL.match(line)
        if match:
            cells.append((kind, body))
            rest = match.group("rest")
            kind = "markdown" if re.search(r"\[\s*(markdown|md)\s*\]", rest) else "code"
            body = []
        else:
            body.append(line)
    cells.append((kind, body))

    out: list[str] = []
    for kind, body in cells:
        while body and not body[0].strip():
            body = body[1:]
        while body and not body[-1].strip():
            body = body[:-1]
        if not body:
            continue
        if kind == "markdown":
            text = [re.sub(r"^# ?", "", line) if line.startswith("#") else line
                    for line in body]
            out += text + [""]
        else:
            out += ["```python", *body, "```", ""]
    if script_name is not None:
        out += [f"[Download the script]({script_name}) (run it with "
                f"`python docs/tutorials/{script_name}`, "
                "or open it as a notebook with jupytext)."]
    return "\n".join(out).rstrip() + "\n"


def on_files(files, config):
    """Adds a generated Markdown page for each tutorial script in docs/tutorials/."""
    for file in list(files):
        src = file.src_uri
        folder, _, name = src.rpartition("/")
        if folder != TUTORIALS or not _SCRIPT.match(name):
            continue
        with open(file.abs_src_path, encoding="utf-8") as f:
            markdown = percent_to_markdown(f.read(), script_name=name)
        page_uri = src[:-3] + ".md"
        if files.get_file_from_path(page_uri) is not None:
            log.warning("tutorial %s and page %s both exist; keeping the page", src, page_uri)
            continue
        files.append(File.generated(config, page_uri, content=markdown))
    return files


def _entry_path(entry):
    """The page path of a nav entry (`"a.md"` or `{"Title": "a.md"}`), else None."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and len(entry) == 1:
        value = next(iter(entry.values()))
        if isinstance(value, str):
            return value
    return None


def _exists(docs_dir: str, page: str) -> bool:
    if os.path.isfile(os.path.join(docs_dir, page)):
        return True
    if page.startswith(TUTORIALS + "/") and page.endswith(".md"):
        return os.path.isfile(os.path.join(docs_dir, page[:-3] + ".py"))
    return False


def _pages_in(docs_dir: str, folder: str) -> list[str]:
    root = os.path.join(docs_dir, folder)
    if not os.path.isdir(root):
        return []
    pages = set()
    for name in sorted(os.listdir(root)):
        if name.endswith(".md"):
            pages.add(f"{folder}/{name}")
        elif folder == TUTORIALS and _SCRIPT.match(name):
            pages.add(f"{folder}/{name[:-3]}.md")
    return sorted(pages)


def on_config(config):
    """Makes the nav's tutorial and result sections list exactly the pages that exist."""
    docs_dir = config["docs_dir"]
    nav = config.get("nav")
    if not nav:
        return config
    new_nav = []
    for section in nav:
        if not (isinstance(section, dict) and len(section) == 1):
            new_nav.append(section)
            continue
        title, entries = next(iter(section.items()))
        if not isinstance(entries, list):
            new_nav.append(section)
            continue
        paths = [_entry_path(e) for e in entries]
        folders = {p.split("/", 1)[0] for p in paths if p and "/" in p}
        if len(folders) != 1 or not folders <= set(DISCOVERED):
            new_nav.append(section)
            continue
        (folder,) = folders
        kept = [e for e, p in zip(entries, paths) if p is None or _exists(docs_dir, p)]
        listed = {p for p in paths if p}
        kept += [p for p in _pages_in(docs_dir, folder) if p not in listed]
        if any(_entry_path(e) is not None for e in kept):
            new_nav.append({title: kept})
    config["nav"] = new_nav
    return config
