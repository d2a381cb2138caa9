"""A Dockerfile's instructions as BuildKit reads them, for the questions kenv asks of a user's Dockerfile
(incremental.py: does the final stage declare an ARG or SHELL?). Parser directives (`# escape=`), comments,
continuation lines and heredoc bodies are handled, so text inside a RUN heredoc is never taken for an
instruction and an instruction split over lines is one."""

from __future__ import annotations

import re
import shlex

DIRECTIVE_RE = re.compile(r"#\s*([A-Za-z]+)\s*=\s*(\S+)\s*")
HEREDOC_RE = re.compile(r"<<(-?)([\"']?)([A-Za-z0-9_.-]+)\2")
HEREDOC_INSTRUCTIONS = frozenset({"RUN", "COPY", "ADD"})


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, its arguments) for each instruction, continuation lines joined."""
    lines = text.replace("\r\n", "\n").split("\n")
    escape, start = "\\", 0
    while start < len(lines) and (directive := DIRECTIVE_RE.fullmatch(lines[start].strip())):
        if directive.group(1).lower() == "escape" and directive.group(2) in ("\\", "`"):
            escape = directive.group(2)
        start += 1
    found: list[tuple[str, str]] = []
    parts: list[str] | None = None  # the instruction being read, over continuation lines
    heredocs: list[tuple[bool, str]] = []  # (strip tabs, end word) of heredocs whose bodies follow
    for line in lines[start:]:
        if heredocs:
            strip_tabs, word = heredocs[0]
            if (line.lstrip("\t") if strip_tabs else line) == word:
                heredocs.pop(0)
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # a comment or blank line, also inside a continued instruction
        if stripped.endswith(escape):
            parts = [*(parts or []), stripped[:-1].rstrip()]
            continue
        logical = " ".join([*(parts or []), stripped])
        parts = None
        word, _, arguments = logical.partition(" ")
        found.append((word.upper(), arguments.strip()))
        if word.upper() in HEREDOC_INSTRUCTIONS:
            heredocs = [(dash == "-", end) for dash, _, end in HEREDOC_RE.findall(logical)]
    return found


def final_stage(text: str) -> list[tuple[str, str]]:
    """The instructions after the last FROM."""
    found = instructions(text)
    starts = [index for index, (instruction, _) in enumerate(found) if instruction == "FROM"]
    return found[starts[-1] + 1:] if starts else found


def arg_names(arguments: str) -> list[str]:
    """The names an ARG instruction declares (`ARG A=1 B`: A and B)."""
    try:
        words = shlex.split(arguments)
    except ValueError:
        words = arguments.split()
    return [word.split("=", 1)[0] for word in words]
