"""Typed settings from mappings: build nested frozen dataclasses, apply ``a.b.c=value``, list every key.

A config section is a frozen dataclass; a field whose default is itself a
dataclass (``field(default_factory=LoraSettings)``) is a nested table
(``[defense.lora]`` in TOML, ``defense.lora.r`` as a dotted key). The meaning
of a field is the trailing ``# comment`` on its line in the class source: the
one place it is written, read by :func:`describe` (``freqlens run
--list-keys``).

- :func:`build`: a dataclass from a mapping; unknown keys are named in dotted
  form, renamed ones (a class's ``RENAMED``) with their new name.
- :func:`apply_override`: set ``a.b.c=value`` (TOML syntax for the value) in
  nested mappings, at any depth.
- :func:`describe`: every setting of a dataclass, nested ones included, with
  its default and meaning.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
import sys
import textwrap
import tokenize
from collections.abc import Iterator, Mapping
from functools import cache
from io import StringIO
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def nested_type(field: dataclasses.Field) -> type | None:
    """The dataclass a field holds as a nested table (its ``default_factory`` is one), else None."""
    factory = field.default_factory
    if factory is not dataclasses.MISSING and isinstance(factory, type) and dataclasses.is_dataclass(factory):
        return factory
    return None


def build(cls: type, values: Mapping[str, Any], key: str):
    """Build the dataclass ``cls`` from ``values``, nested tables included.

    Args:
        cls: a dataclass; fields holding a dataclass (see :func:`nested_type`)
            are built from a nested mapping.
        values: the settings given (a TOML table).
        key: the dotted name of the table (``"defense"``, ``"defense.ga"``),
            used in errors.

    Returns:
        ``cls(**values)`` with nested mappings built into their dataclasses.

    Raises:
        ValueError: a key ``cls`` does not have (named in dotted form, with the
            keys it has; a key in ``cls.RENAMED`` with the name it has now), a
            nested table given as a plain value, or a value of the wrong type;
            and whatever the dataclasses' own checks raise.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"Expected `{key}` to be a table of settings but got {values!r}.")
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    renamed = getattr(cls, "RENAMED", {}) or {}
    moved = [name for name in values if name not in known and name in renamed]
    if moved:
        raise ValueError("; ".join(f"`{key}.{name}` is now `{key}.{renamed[name]}`" for name in moved)
                         + f": write {', '.join(f'`{key}.{renamed[name]}`' for name in moved)} instead "
                         "(in a file, as a key of the nested table).")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"Unknown config key(s) {[f'{key}.{name}' for name in unknown]}; "
                         f"`{key}` has {sorted(known)}.")
    kwargs = {}
    for name, value in values.items():
        inner = nested_type(known[name])
        if inner is not None and not isinstance(value, inner):
            if not isinstance(value, Mapping):
                keys = ", ".join(f"{key}.{name}.{inner_field.name}" for inner_field in dataclasses.fields(inner))
                raise ValueError(f"Expected `{key}.{name}` to be a table of settings ({keys}) but got {value!r}.")
            value = build(inner, value, f"{key}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as error:  # wrong types that the dataclass itself rejects
        message = str(error)  # a section's own check already names its key: kept as it is
        raise ValueError(message if message.startswith("Expected `") else
                         f"Invalid value in config section `{key}`: {message.rstrip('.')}.") from error


def parse_value(text: str) -> Any:
    """A value written on the command line: TOML syntax (3, 2e-5, true, "text", [1, 2]), else the bare text."""
    try:
        return tomllib.loads(f"value = {text.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        return text.strip()  # a bare string: model.name=prajjwal1/bert-tiny


def apply_override(data: dict, override: str) -> tuple[str, ...]:
    """Set ``section.key=value`` (or ``section.table.key=value``, any depth) in ``data``, in place.

    Tables on the way are created when missing. Returns the key's parts.

    Raises:
        ValueError: no ``=``, fewer than two dotted parts, an empty part, or a
            part on the way that holds a value rather than a table.
    """
    key, sep, text = override.partition("=")
    parts = tuple(part.strip() for part in key.strip().split("."))
    if not sep or len(parts) < 2 or not all(parts):
        raise ValueError(f"Expected an override like `section.key=value` (or `section.table.key=value`) "
                         f"but got {override!r}.")
    table = data
    for depth, part in enumerate(parts[:-1]):
        inner = table.setdefault(part, {})
        if not isinstance(inner, dict):
            where = ".".join(parts[:depth + 1])
            raise ValueError(f"Expected `{where}` to be a table for the override {override!r} but it holds the "
                             f"value {inner!r}.")
        table = inner
    table[parts[-1]] = parse_value(text)
    return parts


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its dotted key, default and meaning."""

    key: str  # e.g. "defense.ga.mu"
    default: Any
    meaning: str  # the trailing comment of the field ("" when it has none)

    def line(self) -> str:
        """``key = default  # meaning``, the default in TOML syntax where TOML has one."""
        text = f"{self.key} = {format_value(self.default)}"
        return f"{text}  # {self.meaning}" if self.meaning else text


def format_value(value: Any) -> str:
    """``value`` as TOML would write it (strings quoted, booleans lower case, lists bracketed);
    None (TOML has no null) as ``None``."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {format_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def describe(cls: type, key: str) -> Iterator[Setting]:
    """Every setting of the dataclass ``cls`` under the dotted ``key``, nested tables expanded, in field order."""
    meanings = field_comments(cls)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        inner = nested_type(field)
        if inner is not None:
            yield from describe(inner, f"{key}.{field.name}")
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None
        yield Setting(f"{key}.{field.name}", default, meanings.get(field.name, ""))


def field_comments(cls: type) -> dict[str, str]:
    """The meaning of each field of the dataclass ``cls`` (base classes included), by name.

    A field's meaning is written once, where the field is defined: the
    trailing ``# comment`` on its line (a field written over several lines
    takes the comments of all its lines, joined), or, for a class documented
    the Google way, its entry under ``Attributes:`` in the class docstring.
    Fields whose class source cannot be read (defined in an interactive
    session) have only their docstring entry, if any.
    """
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            found.update(_docstring_attributes(klass))
            found.update(_class_comments(klass))
    return found


def _docstring_attributes(cls: type) -> dict[str, str]:
    """The entries under ``Attributes:`` in ``cls``' own docstring, by name, each on one line."""
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
    found: dict[str, str] = {}
    lines = doc.splitlines()
    if "Attributes:" not in (line.strip() for line in lines):
        return found
    start = [line.strip() for line in lines].index("Attributes:") + 1
    indent = None
    current = None
    for line in lines[start:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent or depth == 0:
            break
        name, colon, text = line.strip().partition(":")
        if depth == indent and colon and name.isidentifier():
            current = name
            found[name] = text.strip()
        elif current is not None:
            found[current] = f"{found[current]} {line.strip()}".strip()
    return {name: _plain_text(text) for name, text in found.items()}


def _plain_text(text: str) -> str:
    """reStructuredText markup off: ``:func:`~a.b``` -> ``b``, double backquotes -> none."""
    text = re.sub(r":[a-z]+:`~?(?:[\w.]+\.)?([\w]+)`", r"\1", text)
    return text.replace("``", "")


@cache
def _class_comments(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    tree = ast.parse(source)
    klass = next(node for node in tree.body if isinstance(node, ast.ClassDef))
    found = {}
    for node in klass.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            lines = range(node.lineno, (node.end_lineno or node.lineno) + 1)
            text = " ".join(comments[line] for line in lines if line in comments)
            if text:
                found[node.target.id] = text
    return found
