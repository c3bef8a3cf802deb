"""Shared pieces of the ``tools/`` curation scripts: parser set-up and error handling.

A script's ``main(argv)`` parses its arguments, calls the library and prints the summary; wrapped in
:func:`run_tool` a :class:`~fimvision.errors.FimvisionError` (bad input) ends it with exit status 2
and one line ``error: ...`` on stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from fimvision.errors import FimvisionError

EXIT_BAD_INPUT = 2


def make_parser(prog: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    """An ``ArgumentParser`` that keeps the description's and epilog's line breaks."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_output_arguments(parser: argparse.ArgumentParser, *, what: str = "dataset folder to write") -> None:
    """``--out`` (required), ``--overwrite`` and ``--quiet``."""
    parser.add_argument("--out", required=True, help=f"{what} (new, or empty; written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_tool(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a tool's ``main`` and exit: 0 on success, 2 with a one-line message on bad input."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        code = main(argv)
    except FimvisionError as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("error: interrupted; the output folder was not written", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
