"""Share of argument-check lines in the bodies of flowjax's public functions.

An AST count over every module of the package (private modules included,
since the public names are defined there):

- **Functions counted**: every function or method whose name does not start
  with `_` (dunder methods are skipped too), at module level or in a class
  whose name does not start with `_`. Functions nested inside a counted
  function belong to its body. The check helpers themselves are not counted
  (their callers' calls to them are): the module `flowjax/_checks.py` and
  functions named `check_*` wherever they live. An abstract method (a body
  that only raises `NotImplementedError`) has no argument checks and counts
  as body lines only.
- **Body lines**: the source lines spanned by the body's statements, without
  the docstring (blank lines between statements are not counted; comment lines
  inside a multi-line statement are).
- **Check lines**: the lines spanned by, anywhere in a body,
  a `raise` statement; an `if` statement whose branches only raise (or only
  hold further such `if` statements); and an expression, assignment or
  `return` whose value is a call to a check helper: a function whose name
  starts with `check_` or `_check`, or is `error_if` (also as an attribute,
  e.g. `eqx.error_if`).

Usage::

    python tools/check_share.py [package_dir] [--top N]

prints the share and the functions with the most check lines.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import sys
from typing import NamedTuple

_ROOT = pathlib.Path(__file__).resolve().parents[1] / "flowjax"


class FunctionShare(NamedTuple):
    """Body and check line counts of one public function."""

    name: str
    body: int
    checks: int


def _lines(node: ast.AST) -> set[int]:
    return set(range(node.lineno, (node.end_lineno or node.lineno) + 1))


def _is_check_call(node: ast.AST | None) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name.startswith(("check_", "_check")) or name == "error_if"


def _only_raises(body: list[ast.stmt]) -> bool:
    return bool(body) and all(
        isinstance(s, ast.Raise) or (isinstance(s, ast.If) and _is_raising_if(s)) for s in body)


def _is_raising_if(node: ast.If) -> bool:
    return _only_raises(node.body) and (not node.orelse or _only_raises(node.orelse))


def _is_not_implemented(stmt: ast.Raise) -> bool:
    exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
    return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"


def _is_check(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Raise):
        return not _is_not_implemented(stmt)
    if isinstance(stmt, ast.If):
        return _is_raising_if(stmt)
    if isinstance(stmt, (ast.Expr, ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Return)):
        value = stmt.value
        if isinstance(value, ast.Tuple):  # `a, b = check_x(...), check_y(...)`
            return bool(value.elts) and all(_is_check_call(v) for v in value.elts)
        return _is_check_call(value)
    return False


def _body(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.stmt]:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return body


def _count(fn) -> tuple[int, int]:
    body_lines: set[int] = set()
    check_lines: set[int] = set()
    for stmt in _body(fn):
        body_lines |= _lines(stmt)
        for node in ast.walk(stmt):
            if isinstance(node, ast.stmt) and _is_check(node):
                check_lines |= _lines(node)
    return len(body_lines), len(check_lines & body_lines)


def _public(name: str) -> bool:
    return not name.startswith("_")


def _counted(name: str) -> bool:
    return _public(name) and not name.startswith("check_")


#: Modules whose functions are the check helpers (relative to the package root).
HELPER_MODULES = ("_checks.py",)


def count_file(path: pathlib.Path, module: str) -> list[FunctionShare]:
    """The counts of every public function and method of one module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _counted(node.name):
            found.append(FunctionShare(f"{module}.{node.name}", *_count(node)))
        elif isinstance(node, ast.ClassDef) and _public(node.name):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                        and _counted(item.name):
                    found.append(FunctionShare(f"{module}.{node.name}.{item.name}",
                                               *_count(item)))
    return found


def count_package(root: pathlib.Path = _ROOT) -> list[FunctionShare]:
    """The counts of every public function and method under `root`."""
    root = pathlib.Path(root)
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).as_posix() in HELPER_MODULES:
            continue
        module = ".".join((root.name,) + path.relative_to(root).with_suffix("").parts)
        found.extend(count_file(path, module))
    return found


def share(counts: list[FunctionShare]) -> float:
    """Check lines over body lines, summed over the functions."""
    body = sum(c.body for c in counts)
    return sum(c.checks for c in counts) / body if body else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(_ROOT))
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    counts = count_package(pathlib.Path(args.root))
    body, checks = sum(c.body for c in counts), sum(c.checks for c in counts)
    print(f"{len(counts)} public functions, {body} body lines, {checks} check lines: "
          f"share {share(counts):.1%}")
    print(f"\ntop {args.top} by check lines:")
    for c in sorted(counts, key=lambda c: (-c.checks, c.name))[:args.top]:
        print(f"  {c.checks:4d} / {c.body:4d}  {c.name}")
    by_package: dict[str, list[FunctionShare]] = {}
    for c in counts:
        by_package.setdefault(".".join(c.name.split(".")[:2]), []).append(c)
    print("\nby subpackage:")
    for name, group in sorted(by_package.items()):
        print(f"  {share(group):6.1%}  {sum(c.checks for c in group):4d} / "
              f"{sum(c.body for c in group):4d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
