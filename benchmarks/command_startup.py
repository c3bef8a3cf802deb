#!/usr/bin/env python
"""What a short `fimvision` command costs as a process, with and without CPython's last garbage collection at
exit (which `fimvision.console.prepare_script` skips in every console script).

    .venv/bin/python benchmarks/command_startup.py [--repeats 5]

Times `fimvision --help` and a one-batch `fimvision fit` (test_resnet at 32 px on a small generated dataset),
each through the same `main`: as the installed script runs it, and with the exit hook taken back just before
exit (the collection runs as it did before). The two variants alternate, so the machine's load falls on both;
prints medians of wall and CPU time and their ratio.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "skip last collection": "import sys; from fimvision.cli import main; sys.exit(main(sys.argv[1:]))",
    "with last collection": ("import atexit, gc, sys; from fimvision.cli import main; code = main(sys.argv[1:]); "
                             "atexit.unregister(gc.freeze); sys.exit(code)"),
}


def timed(args: list[str], env: dict) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, children) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    env = {**os.environ, "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run([sys.executable, REPO / "tools" / "make_synthetic.py", "--out", data, "--antibodies", "2",
                        "--per-class", "16", "--particles-per-vial", "8", "--no-progress"], check=True,
                       stdout=subprocess.DEVNULL)
        commands = {
            "fimvision --help": ["--help"],
            "fimvision fit (1 batch)": [
                "fit", "--config", str(REPO / "configs" / "supervised" / "resnet18_color.yaml"),
                f"--data.init_args.root={data}", "--data.init_args.image_size=32", "--data.init_args.num_workers=0",
                "--model.init_args.backbone=test_resnet", "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
                "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
                f"--trainer.logger.init_args.save_dir={tmp}/runs"],
        }
        print(f"{'command':<26}{'variant':<24}{'wall s':>8}{'CPU s':>8}")
        for name, args in commands.items():
            times: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
            for _ in range(repeats):
                for variant, code in VARIANTS.items():
                    times[variant].append(timed([sys.executable, "-c", code, *args], env))
            medians = {v: [statistics.median(t[i] for t in ts) for i in (0, 1)] for v, ts in times.items()}
            for variant, (wall, cpu) in medians.items():
                print(f"{name:<26}{variant:<24}{wall:8.2f}{cpu:8.2f}")
            (skip_wall, skip_cpu), (with_wall, with_cpu) = medians.values()
            print(f"{name:<26}{'ratio skip / with':<24}{skip_wall / with_wall:8.2f}{skip_cpu / with_cpu:8.2f}")


if __name__ == "__main__":
    main()
