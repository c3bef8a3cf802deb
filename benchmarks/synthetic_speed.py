"""Throughput of the synthetic data generator: particles written per second (PNG tiles + manifest).

Generates about ``--particles`` particles into a temporary folder with ``write_dataset`` (the code
path of ``tools/make_synthetic.py``) and prints the wall-clock rate, which includes worker start-up,
rendering, PNG encoding and file creation. It also prints the CPU time per particle (this process
and its workers), which stays meaningful when other jobs share the cores.

Usage: python benchmarks/synthetic_speed.py [--particles 3000] [--workers N] [--dir TMPDIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from fimvision.data.synthetic import SyntheticConfig, particle_count, write_dataset


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--particles", type=int, default=3000, help="about this many particles (default 3000)"
    )
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the temporary folder")
    args = parser.parse_args(argv)

    antibodies = 3
    config = SyntheticConfig(
        antibodies=antibodies, per_class=max(1, args.particles // (2 * antibodies)), seed=args.seed
    )
    n = particle_count(config)
    with tempfile.TemporaryDirectory(prefix="fimvision-synthetic-bench-", dir=args.dir) as tmp:
        cpu, start = cpu_seconds(), time.perf_counter()
        write_dataset(Path(tmp) / "data", config, workers=args.workers, progress=False)
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    print(
        f"synthetic generator: {n} particles in {seconds:.2f} s with {args.workers} worker(s): "
        f"{n / seconds:.0f} particles/s wall clock; {cpu / n * 1e3:.2f} ms CPU per particle "
        f"(all processes; {args.workers * n / cpu:.0f} particles/s if {args.workers} cores were free)"
    )


if __name__ == "__main__":
    main()
