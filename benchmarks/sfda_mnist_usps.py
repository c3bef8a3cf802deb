"""MNIST -> USPS (shared .mat): source-only, SHOT, NRC, AaD, FT 1- and 3-shot, LP-FT 3-shot over seeds 0, 1, 2.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sfda_mnist_usps.py --out runs/bench/sfda_mnist_usps

Runs configs/sfda/grid/mnist_usps.yaml through the grid runner (CPU-sized step counts: see that file) and
prints the mean ± std table with CPU minutes per run (process CPU time, all threads). Reruns resume.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from fimvision.study.sfda import GridRunner, load_grid, plan_runs, write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench/sfda_mnist_usps")
    parser.add_argument("--config", default=str(REPO / "configs/sfda/grid/mnist_usps.yaml"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    config = load_grid(args.config)
    config.seeds = args.seeds
    methods = dict(config.methods)
    runs = []
    # FT at 1 and 3 shots, LP-FT at 3 shots, the shot-free methods once per seed.
    for names, shots in ((["source_only", "ft", "shot", "nrc", "aad"], [1, 3]), (["lp_ft"], [3])):
        config.methods, config.shots = {n: methods[n] for n in names}, shots
        runs += plan_runs(config)
    config.methods = methods
    results = GridRunner(config, out).run_all(runs)
    print(write_report(results, out))
    print(f"torch threads: {torch.get_num_threads()}; results: {out / 'results.csv'}")


if __name__ == "__main__":
    main()
