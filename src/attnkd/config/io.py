"""Read, check, override and write typed configs (YAML is only the serialised form).

Generic over any tree of dataclasses whose fields are ``str``, ``int``, ``float``, ``bool``,
``list[X]``, ``X | None``, another dataclass or ``dict[str, Any]`` (a free mapping: a stage's
overrides, checked when :mod:`attnkd.config.stages` merges them), so the schema can grow without
touching this file.
Every problem raises :class:`attnkd.errors.ConfigError` naming the dotted key (``losses[1].weight``)
and, for files, ``file:line``. YAML is read with the safe loader only: no tags that run code.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import os
import reprlib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from attnkd.atomic import write_text
from attnkd.config.schema import DistillConfig
from attnkd.errors import ConfigError

T = TypeVar("T")
_ROOT = "<root>"


class _Invalid(Exception):
    """Internal: a problem at a dotted key, turned into a ConfigError at the public boundary."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key, self.message = key, message


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> DistillConfig:
    """Read a YAML recipe (empty file -> defaults), check it strictly, then apply ``key=value``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), f"cannot read config file: {err}") from None
    data, lines = _parse_yaml(text, str(path))
    try:
        cfg = _build(DistillConfig, {} if data is None else data, "")
    except _Invalid as bad:
        line = lines.get(bad.key)
        where = f"{path}:{line}" if line is not None else str(path)
        raise ConfigError(bad.key or _ROOT, f"{where}: {bad.message}") from None
    from attnkd.config.stages import check_stages

    try:
        check_stages(cfg)  # each stage's overrides merge into a valid config
    except ConfigError as bad:
        line = _nearest_line(lines, bad.key)
        where = f"{path}:{line}" if line is not None else str(path)
        raise ConfigError(bad.key, f"{where}: {bad.message}") from None
    cfg = apply_overrides(cfg, overrides)
    check_stages(cfg)
    return cfg


def _nearest_line(lines: dict[str, int], key: str) -> int | None:
    """The line of ``key`` or of the nearest enclosing key that has one."""
    while key:
        if key in lines:
            return lines[key]
        key = key.rpartition(".")[0] if "." in key else key.rpartition("[")[0]
    return None


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from plain data; missing keys keep defaults.

    ``where`` is the dotted key of ``data`` itself (e.g. ``"losses[0]"``), used in error messages.
    """
    try:
        return _build(cls, {} if data is None else data, where)
    except _Invalid as bad:
        raise ConfigError(bad.key or _ROOT, bad.message) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dicts/lists of a dataclass tree, in field order (a deep copy)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any, path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML atomically (temp file + ``os.replace``); ``load_config`` reads it."""
    text = yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    write_text(path, text)


def apply_overrides(cfg: T, overrides: Iterable[str]) -> T:
    """Return a new config with ``a.b=value`` / ``losses.0.weight=2`` overrides applied in order.

    Values are parsed with ``yaml.safe_load`` and checked like file values; a section or list given
    whole (``losses=[{name: relation}]``) replaces the old one, its missing keys taking defaults.
    """
    for raw in overrides:
        key, sep, text = raw.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(raw, f"malformed override '{raw}': expected key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(
                key, f"override '{raw}': value is not valid YAML ({yaml_problem(err)})"
            ) from None
        data = to_dict(cfg)
        try:
            _set_path(data, key.split("."), value)
            cfg = _build(type(cfg), data, "")
        except _Invalid as bad:
            raise ConfigError(bad.key or _ROOT, f"override '{raw}': {bad.message}") from None
    return cfg


# --- checking -------------------------------------------------------------------------------


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in names}


def _join(where: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{where}[{name}]"
    return f"{where}.{name}" if where else name


def _optional_arg(tp: Any) -> Any | None:
    """``X`` for ``X | None``; None when ``tp`` is not optional."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) != 1 or len(typing.get_args(tp)) != 2:
        raise TypeError(f"config fields support only 'X | None' unions, not {tp}")
    return args[0]


def _type_name(tp: Any) -> str:
    if (inner := _optional_arg(tp)) is not None:
        return f"{_type_name(inner)} or null"
    if typing.get_origin(tp) is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if typing.get_origin(tp) is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 50, 50


def _got(value: Any) -> str:
    """'got str 'fast'' with a bounded repr (values may be huge or self-referencing)."""
    return "got null" if value is None else f"got {type(value).__name__} {_SHORT.repr(value)}"


def _expected(tp: Any, value: Any, nullable: bool) -> str:
    return f"expected {_type_name(tp)}{' or null' if nullable else ''}, {_got(value)}"


def _unknown(key: str, name: Any, known: Iterable[str]) -> _Invalid:
    known = list(known)
    near = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    hint = f"did you mean '{near[0]}'?" if near else f"known keys: {', '.join(known)}"
    return _Invalid(key, f"unknown key '{name}'; {hint}")


def _build(tp: Any, value: Any, key: str, nullable: bool = False) -> Any:
    """Check ``value`` against type ``tp`` and return it converted (dataclasses built)."""
    if (inner := _optional_arg(tp)) is not None:
        return None if value is None else _build(inner, value, key, nullable=True)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Invalid(key, _expected(tp, value, nullable))
        hints = _hints(tp)
        kwargs = {}
        for name, item in value.items():
            if not isinstance(name, str):
                raise _Invalid(key, f"keys must be strings, {_got(name)}")
            if name not in hints:
                raise _unknown(_join(key, name), name, hints)
            kwargs[name] = _build(hints[name], item, _join(key, name))
        return tp(**kwargs)
    if typing.get_origin(tp) is dict and typing.get_args(tp) == (str, Any):  # checked later
        if not isinstance(value, dict):
            raise _Invalid(key, _expected(tp, value, nullable))
        for name in value:
            if not isinstance(name, str):
                raise _Invalid(key, f"keys must be strings, {_got(name)}")
        return copy.deepcopy(value)
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise _Invalid(key, _expected(tp, value, nullable))
        (item_tp,) = typing.get_args(tp)
        return [_build(item_tp, v, _join(key, i)) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise _Invalid(key, f"{_expected(tp, value, nullable)} (write true or false)")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _Invalid(key, f"{_expected(tp, value, nullable)} (quote it to make it a string)")
        return value
    if tp in (int, float):
        return _number(tp, value, key, _expected(tp, value, nullable))
    raise TypeError(f"unsupported config field type {tp!r} at '{key}'")


def _number(tp: type, value: Any, key: str, expected: str) -> int | float:
    """int/float fields; also numeric strings, which YAML 1.1 leaves unparsed (e.g. '3e-4')."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Invalid(key, expected)
    if isinstance(value, str):
        try:
            number: int | float = int(value.strip()) if tp is int else float(value.strip())
        except ValueError:
            try:  # '1e3' for an int field
                number = float(value.strip())
            except ValueError:
                raise _Invalid(key, f"{expected}, which is not a number") from None
    else:
        number = value
    if tp is float:
        try:
            return float(number)
        except OverflowError:
            raise _Invalid(key, f"{expected}, which is too large") from None
    if isinstance(number, float) and not number.is_integer():
        raise _Invalid(key, f"{expected}, which is not a whole number")
    return int(number)


class _Dumper(yaml.SafeDumper):
    """Block style for sections, ``[a, b]`` flow style for lists of scalars."""

    def represent_list(self, data: list) -> yaml.Node:
        flow = all(not isinstance(v, dict | list) for v in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)


# --- overrides and YAML ---------------------------------------------------------------------


def _set_path(data: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set ``value`` at dotted ``parts`` inside plain data; digits index lists."""
    node: Any = data
    key = ""
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, dict):
            # a stage's section (stages.N.train) is a free mapping: a new key may be added
            free = parts[0] in ("stages", "chain") and depth >= (3 if parts[0] == "stages" else 2)
            if part not in node and not (free and last):
                raise _unknown(_join(key, part), part, node)
            key = _join(key, part)
            if last:
                node[part] = value
            node = node[part]
        elif isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise _Invalid(key, f"'{part}' is not an index of this list (length {len(node)})")
            key = _join(key, int(part))
            if last:
                node[int(part)] = value
            node = node[int(part)]
        else:
            raise _Invalid(
                key,
                f"cannot set '{part}' inside a value that is not a section or list ({_got(node)})",
            )


def yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a YAML error: the problem with its line and column, and what it was
    parsing (PyYAML's own text spans several lines with a drawn caret)."""
    problem = getattr(err, "problem", None)
    if not problem:
        return " ".join(str(err).split())
    text = problem
    mark = getattr(err, "problem_mark", None)
    if mark is not None:
        text += f" at line {mark.line + 1}, column {mark.column + 1}"
    context, cmark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context:
        text += f" ({context}"
        text += f" started at line {cmark.line + 1}, column {cmark.column + 1})" if cmark else ")"
    return text


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    """Safe-load one YAML document; also return the 1-based line of every dotted key."""
    loader = yaml.SafeLoader(text)
    loader.name = source  # marks in YAML errors then name the file
    lines: dict[str, int] = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lines
        _record_lines(node, "", lines, source, set())
        return loader.construct_document(node), lines
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(where, f"invalid YAML: {yaml_problem(err)}") from None
    finally:
        loader.dispose()


def _record_lines(
    node: yaml.Node, key: str, lines: dict[str, int], source: str, visited: set[int]
) -> None:
    """Fill ``lines``; nodes reached again through an alias are not walked twice (no blow-up)."""
    if id(node) in visited:
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode) or k.tag == "tag:yaml.org,2002:merge":
                continue  # '<<' merges are resolved by the loader; other odd keys fail in _build
            child = _join(key, k.value)
            if k.value in seen:
                raise ConfigError(child, f"{source}:{k.start_mark.line + 1}: duplicate key")
            seen.add(k.value)
            lines[child] = k.start_mark.line + 1
            _record_lines(v, child, lines, source, visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            lines[_join(key, i)] = v.start_mark.line + 1
            _record_lines(v, _join(key, i), lines, source, visited)
