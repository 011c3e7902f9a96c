"""A griffe extension that turns the reST markup of flowjax's docstrings into Markdown.

flowjax's docstrings are Google style with a few reST constructs, which read well in
`help()` and in an editor: ``:func:`name` `` and the other roles, inline ``:math:`...` ``
and ``.. math::`` blocks. mkdocstrings renders docstrings as Markdown, so this extension
rewrites them when the docs are built (the source is not changed):

* ``:class:`X` ``, ``:func:`X` ``, ``:meth:`X` ``, ``:mod:`X` ``, ``:attr:`X` ``,
  ``:data:`X` ``, ``:exc:`X` `` become inline code `` `X` `` (a leading ``~`` is dropped);
* ``:math:`x` `` becomes ``$x$`` and a ``.. math::`` block a ``$$ ... $$`` block, which
  ``pymdownx.arithmatex`` hands to MathJax.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`~?([^`]+)`")
_MATH = re.compile(r":math:`([^`]+)`")
_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<rest>.*)$")


def _math_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _BLOCK.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent = match.group("indent")
        body = [match.group("rest")] if match.group("rest").strip() else []
        i += 1
        while i < len(lines) and (not lines[i].strip()
                                  or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            body.append(lines[i].strip())
            i += 1
        while body and not body[-1]:
            body.pop()
        body = [line for line in body if line]  # a blank line would end the math block
        if out and out[-1].strip():
            out.append("")
        out += [indent + "$$", *(indent + line for line in body), indent + "$$", ""]
    return "\n".join(out)


def rest_to_markdown(text: str) -> str:
    """The Markdown of a docstring written with reST roles and math."""
    text = _math_blocks(text)
    text = _MATH.sub(lambda m: "$" + m.group(1).strip() + "$", text)
    return _ROLE.sub(lambda m: "`" + m.group(1) + "`", text)


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring griffe loads (see the module docstring)."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rest_to_markdown(obj.docstring.value)


_EQX_MODULE = {"equinox.Module", "equinox._module.Module", "equinox._module._module.Module"}


def _is_equinox_module(cls: griffe.Class, seen: frozenset = frozenset()) -> bool:
    if cls.path in seen:
        return False
    for base in cls.resolved_bases if hasattr(cls, "resolved_bases") else ():
        if isinstance(base, griffe.Class) and _is_equinox_module(base, seen | {cls.path}):
            return True
    return any(getattr(b, "canonical_path", str(b)) in _EQX_MODULE for b in cls.bases)


def _fields(cls: griffe.Class) -> list[griffe.Parameter]:
    params = []
    for member in cls.members.values():
        if member.is_alias or not member.is_attribute or member.annotation is None:
            continue
        if "property" in member.labels or (
                "class-attribute" in member.labels and "instance-attribute" not in member.labels):
            continue  # a property or a ClassVar
        default = member.value
        value = default
        if isinstance(value, griffe.ExprCall) and str(value.function).split(".")[-1] == "field":
            args = {getattr(a, "name", None): getattr(a, "value", None) for a in value.arguments}
            if str(args.get("init")) == "False":
                continue
            default = args.get("default")
            if "default_factory" in args:
                default = griffe.ExprCall(function=args["default_factory"], arguments=[])
        params.append(griffe.Parameter(member.name, annotation=member.annotation,
                                       kind=griffe.ParameterKind.positional_or_keyword,
                                       default=default, docstring=member.docstring))
    return params


_STRUCT_DATACLASS = {"flax.struct.dataclass", "flowjax._pytree.dataclass"}


def _is_struct_dataclass(cls: griffe.Class) -> bool:
    return any(str(getattr(d.value, "canonical_path", "")) in _STRUCT_DATACLASS
               for d in cls.decorators)


class EquinoxInit(griffe.Extension):
    """Gives each `equinox.Module` (and `flax.struct.dataclass`) without its own
    `__init__` the signature of its fields.

    equinox makes a Module a dataclass at class creation, which static analysis does not
    see; this extension adds the `__init__` the dataclass has (fields of the bases first,
    `lineno=0` marking it as made here), so the API pages show the constructor and its
    documented arguments.
    """

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        for cls in _classes(pkg):
            if "__init__" in cls.members or not (_is_equinox_module(cls)
                                                   or _is_struct_dataclass(cls)):
                continue
            try:
                mro = [c for c in reversed(cls.mro()) if isinstance(c, griffe.Class)]
            except ValueError:
                mro = []
            by_name: dict[str, griffe.Parameter] = {}
            for parent in [*mro, cls]:
                init = parent.members.get("__init__")
                if init is not None and init.lineno != 0 and parent is not cls:
                    by_name = {}  # a parent with its own __init__: its fields are not args
                    continue
                for param in _fields(parent):
                    by_name[param.name] = param
            cls.set_member("__init__", griffe.Function(
                "__init__", lineno=0, endlineno=0, parent=cls, returns="None",
                parameters=griffe.Parameters(
                    griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword),
                    *by_name.values())))


def _classes(obj):
    for member in obj.members.values():
        if member.is_alias:
            continue
        if member.is_class:
            yield member
            yield from _classes(member)
        elif member.is_module:
            yield from _classes(member)
