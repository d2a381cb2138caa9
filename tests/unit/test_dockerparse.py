"""dockerparse: a Dockerfile's instructions as BuildKit reads them (heredoc bodies, continuations, comments and
the escape directive), and the ARG names of an instruction."""

from __future__ import annotations

import pytest

from kenv import dockerparse


def test_heredoc_bodies_are_not_instructions_and_continuations_are_joined():
    text = ("FROM python:3.11 AS base\nARG A\nFROM base\nRUN python3 <<EOF\nfrom pathlib import Path\nARG inside\n"
            "EOF\nRUN <<-'END' cat\n\tSHELL text\n\tEND\nENV X=1 \\\n  # a comment inside\n  Y=2\n"
            "arg b=\"two words\"\n")
    assert dockerparse.final_stage(text) == [
        ("RUN", "python3 <<EOF"), ("RUN", "<<-'END' cat"), ("ENV", "X=1 Y=2"), ("ARG", 'b="two words"')]


def test_the_escape_directive_changes_what_continues_a_line():
    text = "# escape=`\nFROM windows\nRUN dir c:\\\nARG X\nRUN echo a `\n  b\n"
    assert dockerparse.instructions(text) == [("FROM", "windows"), ("RUN", "dir c:\\"), ("ARG", "X"),
                                              ("RUN", "echo a b")]
    # only at the top: after a comment it is a comment itself
    assert dockerparse.instructions("# a comment\n# escape=`\nRUN a `\nARG X\n") == [("RUN", "a `"), ("ARG", "X")]


@pytest.mark.parametrize(("arguments", "names"), [
    ("A", ["A"]), ("A=1 B", ["A", "B"]), ('A="x y" B=2', ["A", "B"]), ('A="unclosed B', ["A", "B"])])
def test_arg_names(arguments, names):
    assert dockerparse.arg_names(arguments) == names
