"""Data pipeline throughput: cached decode + train augmentation + collate, images/s at 64 px per worker count.

    python benchmarks/data_pipeline.py [--workers 0 1 2] [--batches 40]
"""

from __future__ import annotations

import argparse
import time

from _common import synthetic_dataset

from fimvision.data.datamodule import ParticleDataModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    root = synthetic_dataset()
    start = time.perf_counter()
    dm = ParticleDataModule(root=str(root), image_size=args.image_size, batch_size=64)
    dm.setup("fit")
    decode = time.perf_counter() - start
    n = len(dm.manifest.frame)
    print(f"decode + cache: {n} particles in {decode:.2f} s ({n / decode:.0f} img/s), "
          f"cache {dm._images.nbytes / 1e6:.1f} MB")
    print(f"{'workers':>8} {'img/s':>10}")
    for workers in args.workers:
        dm.num_workers = workers
        loader = dm.train_dataloader()
        seen, it = 0, iter(loader)
        next(it)  # worker start-up is not throughput
        t = time.perf_counter()
        for _ in range(args.batches):
            try:
                batch = next(it)
            except StopIteration:
                it = iter(loader)
                batch = next(it)
            seen += len(batch["image"])
        print(f"{workers:>8} {seen / (time.perf_counter() - t):>10.0f}")


if __name__ == "__main__":
    main()
