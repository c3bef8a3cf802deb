"""The one error curation raises for bad input: it names the file, the line and what to do."""

from __future__ import annotations

from pathlib import Path

from fimvision.errors import FimvisionError


class CurationError(FimvisionError):
    """An instrument export or dataset that cannot be curated as it is.

    The message reads ``FILE, line N, column 'C': what is wrong. What to do.``; the parts are also
    kept as attributes (``file``, ``line``, ``column``, ``hint``) for callers and tests.
    """

    def __init__(self, problem: str, *, file: str | Path | None = None, line: int | None = None,
                 column: str | None = None, hint: str | None = None) -> None:
        self.problem = problem
        self.file = Path(file) if file is not None else None
        self.line = line
        self.column = column
        self.hint = hint
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column '{column}'")
        text = (", ".join(where) + ": " if where else "") + problem.rstrip(".") + "."
        if hint:
            text += " " + hint[0].upper() + hint[1:].rstrip(".") + "."
        super().__init__(text)
