"""Writing results safely: a file or folder is either the old one or the complete new one, never half of each."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType

from fimvision.errors import CurationError


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a hidden temporary file next to ``path``, then rename it to ``path`` (atomic on
    one file system), so readers and interrupted runs never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _sibling(path: Path, tag: str) -> Path:
    """A new hidden name next to ``path`` (same file system, so renames are atomic)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(3)}")


def _is_within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


class OutputFolder:
    """Context manager giving a temporary folder that becomes ``out`` on success.

    The folder is built as a hidden sibling of ``out`` and renamed into place only when complete; on an
    exception it is removed and ``out`` is left as it was. An existing non-empty ``out`` is refused
    unless ``overwrite``; an ``out`` that is, contains or lies inside one of ``inputs`` (the files and
    folders read) is refused always, so inputs are never modified. Refusals are :class:`CurationError`.
    """

    def __init__(self, out: str | Path, *, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> None:
        self.out = Path(out).expanduser().resolve()
        self.tmp: Path | None = None
        for source in inputs:
            source = Path(source).expanduser().resolve()
            if _is_within(self.out, source) or _is_within(source, self.out):
                raise CurationError(f"the output folder overlaps the input {source}", file=self.out,
                                    hint="choose an output folder outside the inputs; inputs are never modified")
        if self.out.exists() and not self.out.is_dir():
            raise CurationError("the output exists and is a file, not a folder", file=self.out,
                                hint="choose another --out")
        if self.out.is_dir() and any(self.out.iterdir()) and not overwrite:
            raise CurationError("the output folder exists and is not empty", file=self.out,
                                hint="choose a new folder, or pass --overwrite to replace it")

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _sibling(self.out, "tmp")
        self.tmp.mkdir()  # unlike mkdtemp, keeps the user's umask permissions
        return self.tmp

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        assert self.tmp is not None
        try:
            if kind is None:
                self._replace(self.tmp)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _replace(self, tmp: Path) -> None:
        """Move ``tmp`` into place; an old folder is moved aside first and removed only after the new one
        is there (put back if the second rename fails)."""
        old = _sibling(self.out, "old") if self.out.exists() else None
        if old is not None:
            os.replace(self.out, old)
        try:
            os.replace(tmp, self.out)
        except BaseException:
            if old is not None:
                os.replace(old, self.out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
