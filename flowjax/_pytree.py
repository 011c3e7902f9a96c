"""Frozen dataclasses registered as pytrees whose structure knows their class.

`jax.tree_util.register_dataclass` (and so `flax.struct.dataclass`) builds
tree definitions that compare equal for two classes with the same field
names: `Cosine()` and `RectifiedFlow()`, or `ConstantNoise(0.1)` and
`BridgeNoise(0.1)`, have equal `PyTreeDef`s although their hashes differ. A
jit cache that finds one under the other's hash bucket then runs the other
class's compiled program, a silently wrong result. :func:`dataclass` registers
the class as an ordinary custom node instead, whose definitions compare by
class as well as by the static field values.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import jax

T = TypeVar("T")


def field(*, pytree_node: bool = True, **kwargs):
    """A dataclass field; `pytree_node=False` makes it static (part of the tree definition)."""
    metadata = dict(kwargs.pop("metadata", None) or {}, pytree_node=pytree_node)
    return dataclasses.field(metadata=metadata, **kwargs)


def dataclass(cls: type[T]) -> type[T]:
    """`cls` as a frozen dataclass and a pytree: array fields are leaves, static ones aux data.

    Rebuilding from leaves (inside `jax.jit`, `jax.vmap`, ...) skips
    `__init__` and `__post_init__`, as `flax.struct.dataclass` does, so the
    checks there run on concrete values only. `obj.replace(**changes)` returns
    a copy with some fields changed.
    """
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    data = tuple(f.name for f in fields if f.metadata.get("pytree_node", True))
    meta = tuple(f.name for f in fields if not f.metadata.get("pytree_node", True))
    keys = tuple(jax.tree_util.GetAttrKey(name) for name in data)

    def flatten_with_keys(obj):
        return ([(k, getattr(obj, n)) for k, n in zip(keys, data)],
                tuple(getattr(obj, n) for n in meta))

    def flatten(obj):
        return [getattr(obj, n) for n in data], tuple(getattr(obj, n) for n in meta)

    def unflatten(aux, children):
        obj = object.__new__(cls)
        for name, value in zip(data, children):
            object.__setattr__(obj, name, value)
        for name, value in zip(meta, aux):
            object.__setattr__(obj, name, value)
        return obj

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    if "replace" not in cls.__dict__:
        cls.replace = lambda self, **changes: dataclasses.replace(self, **changes)
    return cls


__all__ = ["dataclass", "field"]
