"""`fimvision-efficiency SUBCOMMAND --config MODEL.yaml [--settings RUN.yaml] [--out DIR] [options]`.

Subcommands: deviation, benchmark, profile, drift, chai. ``--config`` is a `fimvision fit` config (the
model and data sections are used; ``--model.init_args.*`` / ``--data.init_args.*`` / ``--trainer.*`` overrides
and ``--model FILE`` / ``--data FILE`` work as with `fimvision fit`); ``--settings`` a YAML of the subcommand's
options (configs/efficiency/). Each writes JSON (and CSV/PNG where useful) to ``--out`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, fields
from pathlib import Path

import torch

from fimvision.console import EXIT_OK, EXIT_USER_ERROR, one_line, prepare_script, run_main
from fimvision.errors import FimvisionError

MODEL_PREFIXES = ("--model", "--data", "--trainer", "--seed_everything", "--wandb")


def subcommand_table() -> dict:
    """Each subcommand: its typed settings and the function that runs it (in the module of its concern).

    Imported when called, after :func:`main` has set up logging: ``benchmark`` imports
    ``torch.utils.benchmark``, whose import probes for a CUDA toolkit and warns on every machine with one
    but no GPU (see :func:`fimvision.console.prepare_script`).
    """
    from fimvision.efficiency.benchmark import BenchmarkSettings, run_benchmark
    from fimvision.efficiency.chai import ChaiSettings, run_chai
    from fimvision.efficiency.deviation import DeviationSettings, run_deviation
    from fimvision.efficiency.drift import DriftSettings, run_drift
    from fimvision.efficiency.profile import ProfileSettings, run_profile

    return {"deviation": (DeviationSettings, run_deviation), "benchmark": (BenchmarkSettings, run_benchmark),
            "profile": (ProfileSettings, run_profile), "drift": (DriftSettings, run_drift),
            "chai": (ChaiSettings, run_chai)}

# The subcommands that use the dataset when it exists (the others measure on synthetic batches).
USE_DATA = ("chai", "drift")


def build_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="fimvision-efficiency", description=__doc__.splitlines()[0], exit_on_error=False)
    subcommands = parser.add_subcommands(dest="subcommand")
    for name, (settings, _) in subcommand_table().items():
        sub = ArgumentParser(exit_on_error=False, description=settings.__doc__.splitlines()[0])
        sub.add_argument("--config", type=str, required=True,
                         help="a `fimvision fit` config (model and data sections are used)")
        sub.add_argument("--settings", action=ActionConfigFile, help="YAML with this subcommand's options")
        sub.add_argument("--out", type=str, default=f"runs/efficiency/{name}", help="output folder")
        sub.add_argument("--device", type=str, default="auto", help="auto, cpu or cuda[:N]")
        sub.add_argument("--synthetic", type=bool, default=False,
                         help="use synthetic input even when the dataset exists")
        sub.add_argument("--num_classes", type=int, default=2,
                         help="classes of the model when there is no dataset and the config names none")
        sub.add_class_arguments(settings)
        subcommands.add_subcommand(name, sub, help=settings.__doc__.splitlines()[0])
    return parser


def split_model_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """(own args, `fimvision fit` overrides such as --model.init_args.x=1 or --model FILE)."""
    own, overrides, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith(MODEL_PREFIXES):
            overrides.append(arg)
            if "=" not in arg and i + 1 < len(args):
                overrides.append(args[i + 1])
                i += 1
        else:
            own.append(arg)
        i += 1
    return own, overrides


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FimvisionError("--device=cuda, but PyTorch sees no CUDA device here; use --device=cpu.")
    return device


def run(args: list[str]) -> int:
    """Parse ``args``, run the subcommand, write its JSON; returns the exit status."""
    own, overrides = split_model_overrides(args)
    parser = build_parser()
    try:
        cfg = parser.parse_args(own)
    except argparse.ArgumentError as err:  # a usage error, not a crash: one line, like every fimvision tool
        print(f"error: {one_line(err)}. `fimvision-efficiency --help` lists the subcommands and options.",
              file=sys.stderr)
        return EXIT_USER_ERROR
    from fimvision.efficiency.target import load_target

    name = cfg.subcommand
    sub = cfg[name]
    settings_type, run_subcommand = subcommand_table()[name]
    device = resolve_device(sub.device)
    settings = settings_type(**{f.name: sub[f.name] for f in fields(settings_type)})
    out = Path(sub.out)
    out.mkdir(parents=True, exist_ok=True)
    target = load_target(sub.config, overrides, num_classes=sub.num_classes, use_data=name in USE_DATA and not sub.synthetic)
    target.module.to(device)
    result = run_subcommand(target, settings, device, out)
    result.update({"subcommand": name, "config": sub.config, "overrides": overrides, "settings": asdict(settings),
                   "torch": torch.__version__, "threads": torch.get_num_threads()})
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwrote {path}")
    return EXIT_OK


def main(args: list[str] | None = None) -> int:
    """The `fimvision-efficiency` console script; returns its exit status (0, 2 bad input, 130, 1)."""
    logging.basicConfig(format="%(message)s")
    logging.getLogger("fimvision").setLevel(logging.INFO)
    prepare_script()
    return run_main(run, list(sys.argv[1:] if args is None else args))


if __name__ == "__main__":
    sys.exit(main())
