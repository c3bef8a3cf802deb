"""Exit codes, argument parsing and one-line error descriptions shared by every console script and ``tools/`` script.

0 success; 2 a user error (:class:`~fimvision.errors.FimvisionError`), reported as one line
``error: ...`` on stderr; 130 interrupted (Ctrl-C); 1 an unexpected internal error, with its traceback.
"""

from __future__ import annotations

import argparse
import atexit
import difflib
import gc
import logging
import os
import re
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


def prepare_script() -> None:
    """What every console script sets up for its process at start.

    It silences noise that third-party libraries print on every run and that says nothing about this run. At
    exit, it skips CPython's last full garbage collection: with torch and Lightning imported, that collection
    takes a fifth of a short command's time (about 1.5 s of 7 on 2 CPU cores), in every DDP rank and sweep run
    as well. Only objects still alive at exit are affected: their memory goes back with the process, and Python
    does not promise to call their finalizers anyway (fimvision closes its files and W&B runs itself). Measured by
    ``benchmarks/command_startup.py``.
    """
    atexit.unregister(gc.freeze)  # once, however often a script's main runs in one process
    atexit.register(gc.freeze)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        _add_filter(name, DROPPED_MESSAGES)
    _add_filter("torch.utils.cpp_extension", DROPPED_CUDA_PROBE)
    # torch deprecated LeafSpec; Lightning 2.6 still uses it internally.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # jsonargparse warns when args are passed in-process, which is how the demo and the study runner call the CLI.
    warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter is intended.*")


# --- jsonargparse's errors (the `fimvision` CLI, study files), described in one line
# Options that moved: where a config or command line that uses the old place should look now.
MOVED_OPTIONS = {
    "fewshot_batch_size": "--data.init_args.fewshot_batch_size (a loader setting of DomainDataModule)",
    "val_every": "--data.init_args.fewshot_batches (few-shot batches between validations, on DomainDataModule)",
}


def close_match(word: str, options: Sequence[str]) -> str:
    """" Did you mean X?" for the closest of ``options`` to ``word``, or ""."""
    match = difflib.get_close_matches(word, list(options), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(match)}?" if match else ""


def _class_options(class_path: str) -> list[str]:
    """The init arguments a model class accepts (through **kwargs to its bases too), as jsonargparse sees them."""
    import pytorch_lightning as pl
    from jsonargparse import ArgumentParser
    from jsonargparse._typehints import resolve_class_path_by_name  # the CLI's own short-name resolution

    try:
        module, _, name = resolve_class_path_by_name(pl.LightningModule, class_path).rpartition(".")
        cls = getattr(__import__(module, fromlist=[name]), name)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "x", fail_untyped=False)
        return [a.dest.removeprefix("x.") for a in parser._actions if a.dest.startswith("x.")]
    except Exception:  # a suggestion is a courtesy; never fail the error message on it
        return []


def _type_name(text: str) -> str:
    """'<class 'float'>' -> 'a float'; "typing.Literal['a', 'b']" -> "one of 'a', 'b'"."""
    plain = re.fullmatch(r"<class '(?:builtins\.)?(\w+)'>", text)
    if plain:
        return f"a{'n' if plain.group(1)[0] in 'aeiou' else ''} {plain.group(1)}"
    literal = re.fullmatch(r"typing\.Literal\[(.+)\]", text)
    return f"one of {literal.group(1)}" if literal else text


def describe_parse_error(err: BaseException, options: Sequence[str] = ()) -> str:
    """One line for a jsonargparse error: the dotted option, what is wrong with it, and a close match (an unknown
    command-line option is matched against ``options``)."""
    messages = []
    cause: BaseException | None = err
    while cause is not None and len(messages) < 20:
        messages.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    text = "\n".join(messages)
    keys = list(dict.fromkeys(re.findall(r'Parser key "([^"]+)"', text)))
    class_path = re.search(r"Problem with given class_path '([^']+)'", text)
    unknown = re.search(r"Option '([^']+)' is not accepted", text)
    key = ".".join(keys)
    if class_path and keys:
        key = f"{keys[0]}.init_args" + (f".{keys[1]}" if len(keys) > 1 else "")
    if unknown:
        option = unknown.group(1)
        where = f"--{key}.{option}" if key else f"--{option}"
        cls = class_path.group(1).rsplit(".", 1)[-1] if class_path else "this section"
        if option in MOVED_OPTIONS:
            return f"{where}: {cls} has no argument '{option}' any more; it moved to {MOVED_OPTIONS[option]}."
        hint = close_match(option, _class_options(class_path.group(1))) if class_path else ""
        return f"{where}: {cls} has no argument '{option}'.{hint}"
    unrecognized = re.search(r"[Uu]nrecognized arguments: (.+)", text)
    if unrecognized:
        given = unrecognized.group(1).split()[0].split("=")[0]
        return (f"unknown option {given}.{close_match(given, sorted(set(options)))} `fimvision fit --help` lists the "
                "options.")
    expected = re.search(r"Expected a (.+?)\. Got value: (.+)", text)
    if expected:
        return f"--{key}: expected {_type_name(expected.group(1))}, got {expected.group(2).strip()!r}."
    last = [line.strip() for line in messages[-1].splitlines() if line.strip()]
    return (f"--{key}: " if key else "") + (last[0] if last else one_line(err))
