"""What `fimvision-study run` costs over running the same runs one after another by hand.

    .venv/bin/python benchmarks/study_overhead.py [--only 'main__model=cnn__*'] [--out runs/bench/study_overhead]

By hand: for each run of the quick colour-versus-mono study (all by default; ``--only`` picks some),
`fimvision fit ARGS` then `fimvision test ARGS --ckpt_path=<its best checkpoint>`, as separate commands, one
after another, a run that needs another's checkpoint given the path by hand. Study:
`fimvision-study run` on the same runs (checks before the first run, locks, results.csv and the report
included). Prints both wall times, their ratio, and the study's own share: its wall time less the time its
runs took inside it. Run on a quiet machine; the two halves run back to back, the same data cached.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from fimvision.study.config import load_study, relative_args  # noqa: E402
from fimvision.study.runner import StudyRunner  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(cmd: list) -> float:
    start = time.perf_counter()
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs/study/color_vs_mono-quick.yaml"))
    parser.add_argument("--only", nargs="+", default=["*"])
    parser.add_argument("--out", default="runs/bench/study_overhead")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    study = load_study(args.config)
    runner = StudyRunner(study, out / "study")
    runner.prepare()
    runs = [runner.runs[i] for i in runner.select(args.only)]

    by_hand, checkpoints = 0.0, {}
    for run in runs:
        folder = out / "by_hand" / run.id
        own = [*run.args, f"--trainer.logger.init_args.save_dir={folder.parent}", "--trainer.logger.init_args.name=",
               f"--trainer.logger.init_args.version={folder.name}", f"--trainer.default_root_dir={folder}",
               "--trainer.enable_progress_bar=false"]
        for placeholder, needed in run.needs:
            own = [a.replace(f"{{{placeholder}}}", str(checkpoints[needed])) for a in own]
        by_hand += timed([BIN / "fimvision", "fit", *own])
        saved = sorted((folder / "checkpoints").glob("*.ckpt"))
        checkpoints[run.id] = next((c for c in saved if c.name.startswith("best")), None) or \
            next(c for c in saved if c.name != "last.ckpt")
        if run.test:
            by_hand += timed([BIN / "fimvision", "test", *own, f"--ckpt_path={checkpoints[run.id]}"])
        print(f"by hand: {run.id} done ({by_hand:.0f} s so far)", flush=True)

    study_wall = timed([BIN / "fimvision-study", "run", "--config", args.config, "--out", out / "study",
                        "--only", *args.only])
    inside = sum(json.loads((runner.folder(r) / "result.json").read_text())["wall_s"] for r in runs)
    print(f"\n{len(runs)} runs of {Path(args.config).name} ({', '.join(args.only)}), e.g. "
          f"`fimvision fit {' '.join(relative_args(runs[0].args, study.folder))}`")
    print(f"{'by hand (fit + test commands)':<42}{by_hand:>9.1f} s")
    print(f"{'fimvision-study run':<42}{study_wall:>9.1f} s   ratio study / by hand: {study_wall / by_hand:.3f}")
    print(f"{'  of which the runs themselves':<42}{inside:>9.1f} s   the study's own share: "
          f"{(study_wall - inside) / study_wall:.1%}")


if __name__ == "__main__":
    main()
