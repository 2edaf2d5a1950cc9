"""The config reference (docs/config.md), generated from the pydantic models in lengthwise.config.

The models are the single source of truth: each key's type and default come from the model, its
meaning from the class docstring and the comment written next to (or just above) the field in
config.py. A test fails when docs/config.md is stale; regenerate it with

    python -m lengthwise.config_reference > docs/config.md
"""

from __future__ import annotations

import inspect
import io
import re
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from lengthwise import config

_FIELD_LINE = re.compile(r"^    (\w+)\s*:")


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> its comment in config.py: the comment on the field's line, after the
    block of full-line comments right above it."""
    source = inspect.getsource(model)
    comments: dict[int, str] = {}  # line number -> comment text
    own_line: set[int] = set()  # lines holding nothing but a comment
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
            if not tok.line[: tok.start[1]].strip():
                own_line.add(tok.start[0])
    lines = source.splitlines()
    out: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        match = _FIELD_LINE.match(line)
        if not match or match.group(1) not in model.model_fields:
            continue
        above, k = [], number - 1
        while k in own_line:
            above.insert(0, comments[k])
            k -= 1
        parts = [*above, comments.get(number, "") if number not in own_line else ""]
        out[match.group(1)] = " ".join(p for p in parts if p)
    return out


def type_name(annotation: Any) -> str:
    """A short, readable type: ``pad | concat_chunk``, ``int``, ``list[int]``, ``path``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(names) + (" \\| null" if type(None) in args else "")
    if origin is not None:
        inner = ", ".join(type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is Path:
        return "path"
    if _is_model(annotation):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "**required**"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path):
        return f"`{value}`"
    return f"`{value!r}`" if isinstance(value, str) else f"`{value}`"


def _nested(annotation: Any) -> tuple[type[BaseModel], str] | None:
    """The model inside a section field, with the key suffix it is documented under."""
    if _is_model(annotation):
        return annotation, ""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and args and _is_model(args[0]):
        return args[0], "[]"
    if origin is dict and len(args) == 2 and _is_model(args[1]):
        return args[1], ".<name>"
    models = [a for a in args if _is_model(a)]  # an optional section: `Model | None`
    if origin in (typing.Union, types.UnionType) and len(models) == 1 and len(args) == 2:
        return models[0], ""
    return None


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _section(model: type[BaseModel], key: str) -> list[str]:
    doc = inspect.cleandoc(model.__doc__ or "")
    comments = field_comments(model)
    out = [f"## `{key}`", ""]
    if doc:
        out += [" ".join(doc.split()), ""]
    out += ["| key | type | default | meaning |", "|---|---|---|---|"]
    children = []
    for name, field in model.model_fields.items():
        nested = _nested(field.annotation)
        meaning = comments.get(name, "")
        if nested:
            child_key = f"{key}.{name}{nested[1]}"
            children.append((nested[0], child_key))
            meaning = f"see [`{child_key}`](#{_anchor(child_key)}) {meaning}".strip()
        meaning = meaning.replace("|", "\\|")
        typ, default = type_name(field.annotation), default_text(field)
        out.append(f"| `{name}` | {typ} | {default} | {meaning} |")
    out.append("")
    for child, child_key in children:
        out += _section(child, child_key)
    return out


def _anchor(key: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "", key.lower())


def reference() -> str:
    """docs/config.md: every section and key of a run config, in the order of the models."""
    head = [
        "# Config reference",
        "",
        "<!-- generated by `python -m lengthwise.config_reference > docs/config.md`; "
        "do not edit -->",
        "",
        "A run config is one YAML file with the sections below (only `data` is required); "
        "`lengthwise train CONFIG key.sub=value ...` overrides any key. Unknown keys and bad "
        "values are errors that name the key.",
        "",
    ]
    body: list[str] = []
    for name, field in config.Config.model_fields.items():
        nested = _nested(field.annotation)
        assert nested is not None, name
        body += _section(nested[0], name)
    return "\n".join(head + body).rstrip() + "\n"


if __name__ == "__main__":
    print(reference(), end="")
