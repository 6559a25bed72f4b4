"""One config tree: frozen dataclasses, filled from YAML (or ROS parameters) by name.

Unknown keys are errors that name the full path (``mapper.window.keyframs``),
so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, where: str = "config", base: T | None = None) -> T:
    """Build dataclass ``cls`` from nested mappings; missing keys keep their
    defaults, those of ``base`` when given. A nested section starts from its
    parent's default for that field (``mapper.solver`` from MapperConfig's
    solver, not from a bare SolverConfig), so a partial override changes only
    what it names."""
    base = cls() if base is None else base
    if data is None:
        return base
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; {cls.__name__} has {sorted(fields)}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[name] = from_mapping(hint, value, f"{where}.{name}", getattr(base, name))
        else:
            values[name] = _convert(hint, value, f"{where}.{name}")
    try:
        return dataclasses.replace(base, **values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def to_mapping(config: Any) -> dict[str, Any]:
    """The inverse of ``from_mapping``: plain dicts, lists and scalars (YAML-safe)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = to_mapping(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


# What reading a YAML file can raise besides a parse error: RecursionError for
# deeply nested flow collections, TypeError for unhashable (sequence) keys.
_UNREADABLE = (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError, TypeError)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except _UNREADABLE as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def load_versioned_yaml(path: Path, key: str, version: int, what: str, error: type[Exception], hint: str = "") -> dict[str, Any]:
    """The mapping in ``path`` whose ``key`` holds ``version`` (safe load only),
    else ``error`` naming the file and the problem; ``hint`` ends a version mismatch's message."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except _UNREADABLE as exc:
        raise error(f"{path}: cannot read {what}: {type(exc).__name__}: {exc}") from None
    if not isinstance(document, dict) or key not in document:
        raise error(f"{path}: not a dsg_ros {what} (no '{key}' version key)")
    found = document[key]
    if isinstance(found, bool) or found != version:
        raise error(f"{path}: {what} version {found!r} is not supported (expected {version}){hint}")
    return document


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings → dotted names, as ROS reads a nested params file."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted names → nested mappings (the inverse of :func:`flatten`)."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def section(data: Mapping[str, Any], name: str, where: str = "config") -> Mapping[str, Any] | None:
    """The ``name`` section of a YAML document as nested mappings, from either
    form the project's files take: plain (``mapper: {...}``, as run-sim's
    config) or a ROS 2 parameters file (``/**: ros__parameters: {mapper: ...}``,
    nested or with dotted names ``mapper.window.keyframes``; every node block
    that has the section contributes, later ones winning, as ROS merges them).
    None when a parameters file leaves the section at its defaults; ValueError
    when the document is neither form."""
    if name in data:
        return data[name]
    blocks = [block["ros__parameters"] for block in data.values() if isinstance(block, Mapping) and "ros__parameters" in block]
    if not blocks:
        raise ValueError(f"{where}: neither a '{name}:' section nor a ROS parameters file ('<node>: ros__parameters:'); top-level keys {sorted(data)}")
    found: dict[str, Any] = {}
    for params in blocks:
        if not isinstance(params, Mapping):
            raise ValueError(f"{where}: ros__parameters must be a mapping, got {type(params).__name__}")
        found.update({key[len(name) + 1 :]: value for key, value in flatten(params).items() if key.startswith(name + ".")})
    return unflatten(found) if found else None


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        if args and args[-1] is not Ellipsis:  # tuple[float, float]: a fixed length
            if len(value) != len(args):
                raise ValueError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ValueError(f"{where}: {value!r} is not one of {typing.get_args(hint)}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in typing.get_args(hint):
            return None
        for arg in typing.get_args(hint):
            if arg is not type(None):
                return _convert(arg, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        if hint is int and float(value) != int(value):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return hint(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value
