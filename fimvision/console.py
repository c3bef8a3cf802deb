"""Exit codes and argument parsing shared by every console script and ``tools/`` script.

0 success; 2 a user error (:class:`~fimvision.errors.FimvisionError`), reported as one line
``error: ...`` on stderr; 130 interrupted (Ctrl-C); 1 an unexpected internal error, with its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence

from fimvision.errors import FimvisionError

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def one_line(message: object) -> str:
    """``message`` with its whitespace (line breaks included) collapsed to single spaces."""
    return " ".join(str(message).split())


def report_user_error(err: BaseException) -> int:
    """Print ``error: <message>`` on stderr and return the user-error exit status."""
    print(f"error: {one_line(err)}", file=sys.stderr)
    return EXIT_USER_ERROR


def user_error_in(err: BaseException) -> FimvisionError | None:
    """The :class:`FimvisionError` that ``err`` is or wraps (libraries such as jsonargparse re-raise), if any."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, FimvisionError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call a script's ``main(argv)`` and return its exit status (see the module docstring).

    ``SystemExit`` (argparse's usage errors and ``--help``) passes through unchanged.
    """
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        user = user_error_in(err)
        if user is None:
            raise
        return report_user_error(user)
    return int(code or 0)


# Lightning's advertising tips, and its note that a model's own checkpoint callback (SHOT, NRC, AaD select
# their checkpoint themselves) replaces the trainer's: by design, on every such run.
DROPPED_MESSAGES = ("💡 Tip", "The following callbacks returned in `LightningModule.configure_callbacks`")


class ToolParser(argparse.ArgumentParser):
    """argparse, with a usage error reported as one ``error:`` line (exit status 2) like every other error."""

    def error(self, message: str):
        print(f"error: {message}. `{self.prog} --help` shows the options.", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def make_parser(prog: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    """A tool's ``ArgumentParser``: keeps the description's and epilog's line breaks, one-line usage errors."""
    return ToolParser(prog=prog, description=description, epilog=epilog,
                      formatter_class=argparse.RawDescriptionHelpFormatter)


def run_tool(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a tool's ``main`` and exit with its status (0, 2 bad input, 130 interrupted, 1 internal error)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.exit(run_main(main, argv))


# torch.utils.cpp_extension (imported by torch.utils.benchmark, e.g. for `fimvision-efficiency`) looks for a CUDA
# toolkit when imported and warns "No CUDA runtime is found" on every machine that has one but no GPU. It concerns
# compiling C++ extensions, which fimvision never does; a missing GPU is reported where it matters (--device=cuda).
DROPPED_CUDA_PROBE = ("No CUDA runtime is found",)


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def tqdm_disable(progress: bool = True) -> bool | None:
    """tqdm's ``disable`` for a bar the caller asked for (``progress``): None, tqdm's "only on a terminal", so a
    log redirected to a file gets no bar lines; True when not asked for."""
    return None if progress else True


def _add_filter(logger: str, prefixes: tuple[str, ...]) -> None:
    target = logging.getLogger(logger)
    if not any(isinstance(f, _DropMessages) and f.prefixes == prefixes for f in target.filters):  # once per process
        target.addFilter(_DropMessages(prefixes))


def quiet_third_party() -> None:
    """Silence noise that third-party libraries print on every run and that says nothing about this run."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        _add_filter(name, DROPPED_MESSAGES)
    _add_filter("torch.utils.cpp_extension", DROPPED_CUDA_PROBE)
    # torch deprecated LeafSpec; Lightning 2.6 still uses it internally.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # jsonargparse warns when args are passed in-process, which is how the demo and the study runner call the CLI.
    warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter is intended.*")
