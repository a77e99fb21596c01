"""Protobuf text format from plain data: dicts are messages, lists of dicts repeated messages,
lists of scalars repeated fields, strings quoted, names in ENUMS written bare."""

from __future__ import annotations

import json
from typing import Any

ENUMS = {"TYPE_FP32", "TYPE_INT32", "TYPE_INT64", "TYPE_STRING", "KIND_CPU", "KIND_GPU", "KIND_AUTO"}


def render(message: dict[str, Any], comments: tuple[str, ...] = ()) -> str:
    lines = [f"# {c}" for c in comments]
    lines += _fields(message, 0)
    return "\n".join(lines) + "\n"


def _fields(message: dict[str, Any], depth: int) -> list[str]:
    pad, out = "  " * depth, []
    for key, value in message.items():
        if isinstance(value, dict):
            out += [f"{pad}{key} {{", *_fields(value, depth + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                out += [f"{pad}{key} {{", *_fields(item, depth + 1), f"{pad}}}"]
        elif isinstance(value, list):
            out.append(f"{pad}{key}: [{', '.join(_scalar(v) for v in value)}]")
        else:
            out.append(f"{pad}{key}: {_scalar(value)}")
    return out


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if value in ENUMS:
        return str(value)
    return json.dumps(str(value))     # a JSON string literal is a valid protobuf text string


def parameters(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Triton's `parameters` map: key -> {string_value}; non-strings are stored as JSON."""
    return [{"key": k, "value": {"string_value": v if isinstance(v, str) else json.dumps(v)}}
            for k, v in values.items()]
