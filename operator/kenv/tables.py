"""Plain-text tables for the CLI, laid out like kubectl's: columns padded to their widest cell, the last one
free (it may be long or empty), trailing spaces dropped."""

from __future__ import annotations

from collections.abc import Sequence


def aligned(rows: Sequence[Sequence[str]]) -> str:
    columns = len(rows[0]) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(columns)]
    return "\n".join("  ".join([*(cell.ljust(width) for cell, width in zip(row[:columns], widths, strict=True)),
                                row[columns]]).rstrip() for row in rows) + "\n"
