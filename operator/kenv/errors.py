"""Turn validation failures into messages that name the field and say what to do."""

from __future__ import annotations

from pydantic import ValidationError


class SpecError(ValueError):
    """A spec the operator cannot act on; the message names the field and the fix."""


def field_path(location: tuple[int | str, ...], prefix: str) -> str:
    path = prefix
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not part.startswith(("function-", "str-", "int-")):  # pydantic's union-branch labels
            path += f".{part}"
    return path


def describe_validation_error(error: ValidationError, prefix: str = "spec") -> str:
    """One line per problem: `spec.pip.packages[0]: String should match pattern ...`."""
    lines = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field; check the spelling against `kubectl explain environment.spec`"
        path = field_path(item["loc"], prefix)
        # Model-level checks already name their field in the message.
        lines.append(message if message.startswith(prefix + ".") else f"{path}: {message}")
    return "; ".join(dict.fromkeys(lines))
