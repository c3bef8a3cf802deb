"""The errors fimvision reports to users: each message names the file, row and column and what to do.

Every console script and tool maps them to exit status 2 with one line on stderr (see
:mod:`fimvision.console`); anything else that escapes is an internal error (status 1, traceback).
"""

from __future__ import annotations

from pathlib import Path


class FimvisionError(ValueError):
    """Bad user input (data, config or checkpoint). The CLI prints the message and exits with status 2."""


class DataError(FimvisionError):
    """A dataset folder, manifest or image that cannot be used."""


class CurationError(DataError):
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
        where = [str(file)] if file is not None else []
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column '{column}'")
        text = (", ".join(where) + ": " if where else "") + problem.rstrip(".") + "."
        if hint:
            text += " " + hint[0].upper() + hint[1:].rstrip(".") + "."
        super().__init__(text)


class CheckpointError(FimvisionError):
    """A checkpoint that cannot be read, or does not fit the model or data it is loaded into."""


class ConfigError(FimvisionError):
    """A setting that cannot work: an unknown backbone, a wrong option or value."""


class DivergenceError(FimvisionError):
    """Training produced a non-finite loss: the settings (learning rate, warm-up, clipping) need changing."""


class OutputExistsError(FimvisionError):
    """A result file or folder is already there and was not written over."""
