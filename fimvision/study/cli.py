"""`fimvision-study`: a grid of ordinary `fimvision` runs, run here, by several processes or by W&B sweep
agents on many machines, and turned into a report.

    fimvision-study run --config configs/study/color_vs_mono-quick.yaml --out runs/study/cvm-quick [--workers 2]
    fimvision-study report runs/study/cvm-quick           # report.md, report.html and PNGs from results.csv
    fimvision-study sweep --config FILE --out DIR          # DIR/sweep.yaml: a W&B grid sweep over the runs
    fimvision-study collect DIR [--sweep ENTITY/PROJECT/ID] # results.csv from the run folders (or W&B)

Every run is `fimvision fit` then `test` (same CLI code, own folder under DIR/runs with its config.yaml).
`run` is resumable: finished runs are skipped, a crashed one is run again; processes and machines that
share DIR never run a run twice. Exit status 1 when some runs failed (their folders hold failed.json).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from fimvision.console import EXIT_INTERNAL, make_parser, prepare_script, run_main, tqdm_disable
from fimvision.errors import ConfigError
from fimvision.files import write_atomically
from fimvision.study.compare import Design
from fimvision.study.config import load_study, relative_args
from fimvision.study.report import write_report
from fimvision.study.runner import DONE, FAILED, Outcome, RunState, StudyRunner, validate

log = logging.getLogger(__name__)
STUDY_COPY = "study.yaml"  # the study file a folder was run with, so `collect` and `report` need only the folder
SWEEP_METRIC = "test_acc"


def build_parser():
    parser = make_parser("fimvision-study", __doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,report,sweep,collect,run-one}")

    def study_command(name: str, text: str):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--config", required=True, help="study file (e.g. configs/study/color_vs_mono.yaml)")
        sub.add_argument("--out", required=True, help="study folder: runs/, results.csv, report.md")
        return sub

    run = study_command("run", "run the study's runs not done yet, then write results.csv and the report")
    run.add_argument("--workers", type=int, default=1, help="processes running runs at once on this machine")
    run.add_argument("--only", nargs="+", metavar="RUN", help="run only these runs (ids or patterns such as "
                     "'mnist_usps__*') and the runs they need")
    run.add_argument("--wandb", metavar="PROJECT", help="track every run in this W&B project (group: the study "
                     "name) and log the report as a run of its own")
    run.add_argument("--dry-run", action="store_true", help="check the study and list its runs; run nothing")
    run.add_argument("--no-report", action="store_true", help="skip the report at the end")
    run.add_argument("--stale-after", type=float, default=600.0,
                     help="seconds without a heartbeat after which another machine's run lock counts as abandoned")

    sweep = study_command("sweep", "write DIR/sweep.yaml, a W&B grid sweep whose agents run the study's runs")
    sweep.add_argument("--project", default="fimvision", help="W&B project of the sweep")
    sweep.add_argument("--entity", help="W&B team or user (default: yours)")
    sweep.add_argument("--create", action="store_true", help="also create the sweep on the W&B server (network)")

    one = study_command("run-one", "run one run of the study and the runs it needs (what a sweep agent starts)")
    one.add_argument("--run", required=True, help="run id (DIR/runs/<id>)")
    one.add_argument("--stale-after", type=float, default=600.0, help="as for `run`")

    collect = commands.add_parser("collect", help="gather finished runs into DIR/results.csv")
    collect.add_argument("out", help="study folder")
    collect.add_argument("--sweep", metavar="ENTITY/PROJECT/SWEEP_ID",
                         help="read the results from this W&B sweep's runs (network) instead of the run folders")

    report = commands.add_parser("report", help="write report.md, report.html and the figures from results.csv")
    report.add_argument("out", help="study folder")
    return parser


def runner_for(config: str | Path, out: str | Path, extra: list[str] | None = None, stale_after: float = 600.0,
               keep_copy: bool = True) -> StudyRunner:
    """The runner of a study file and folder; keeps a copy of the study file in the folder."""
    study = load_study(config)
    out = Path(out)
    if keep_copy:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / STUDY_COPY).is_file() or (out / STUDY_COPY).read_text() != Path(config).read_text():
            write_atomically(out / STUDY_COPY, lambda p: shutil.copyfile(config, p))
            (out / "study_source.txt").write_text(str(Path(config).resolve()) + "\n")
    return StudyRunner(study, out, extra=extra, stale_after=stale_after)


def runner_of_folder(out: str | Path) -> StudyRunner:
    """The runner of a study folder, from the study file it was run with (or, on a machine where that file is
    elsewhere, the folder's copy of it: enough to list the runs)."""
    copy, source = Path(out) / STUDY_COPY, Path(out) / "study_source.txt"
    if not copy.is_file():
        raise ConfigError(f"{out} is not a study folder (no {STUDY_COPY}); give the --out of a `fimvision-study run` "
                          "or `sweep`.")
    original = Path(source.read_text().strip()) if source.is_file() else copy
    return runner_for(original if original.is_file() else copy, out, keep_copy=False)


def _worker(config: str, out: str, extra: list[str], stale_after: float, threads: int, only: list[str] | None) -> None:
    """One of `run --workers N`'s processes."""
    import torch

    prepare_script()
    torch.set_num_threads(threads)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("fimvision").setLevel(logging.WARNING)
    runner_for(config, out, extra, stale_after, keep_copy=False).run_all(only, progress=False)


def _watch(runner: StudyRunner, workers: list, only: list[str] | None) -> None:
    """A progress bar over the runs while worker processes run them."""
    from tqdm.auto import tqdm

    wanted = runner.select(only) if only else list(runner.runs)
    start = time.time()

    def settled(run_id: str) -> bool:
        failed = runner.folder(runner.runs[run_id]) / FAILED
        return runner.result(run_id) is not None or (failed.is_file() and failed.stat().st_mtime >= start)

    with tqdm(total=len(wanted), desc=f"study {runner.study.name}", unit="run", disable=tqdm_disable()) as bar:
        while any(w.is_alive() for w in workers):
            settled_runs = sum(settled(i) for i in wanted)
            bar.update(settled_runs - bar.n)
            time.sleep(2.0)


def run(args) -> int:
    runner = runner_for(args.config, args.out, stale_after=args.stale_after, keep_copy=not args.dry_run)
    if args.wandb:
        runner.extra = ["--wandb.enabled=true", f"--wandb.project={args.wandb}", f"--wandb.group={runner.study.name}"]
    wanted = runner.select(args.only) if args.only else list(runner.runs)
    done = [i for i in wanted if runner.result(i) is not None]
    print(f"study {runner.study.name}: {len(wanted)} runs, {len(done)} done, {len(wanted) - len(done)} to run "
          f"(folder {args.out})")
    if args.dry_run:
        return dry_run(runner, wanted, done)
    runner.prepare()
    validate(runner)
    start = time.perf_counter()
    if args.workers > 1:
        context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        threads = max(1, (os.cpu_count() or 1) // args.workers)
        workers = [context.Process(target=_worker, args=(args.config, args.out, runner.extra, args.stale_after, threads,
                                                         args.only)) for _ in range(args.workers)]
        for worker in workers:
            worker.start()
        try:
            _watch(runner, workers, args.only)
        finally:
            for worker in workers:
                worker.join()
        status = {i: DONE if runner.result(i) is not None else Outcome(RunState.FAILED, "see its failed.json")
                  for i in wanted}
    else:
        status = runner.run_all(args.only)
    results = runner.collect()
    failed = {i: s for i, s in status.items() if s.failed}
    print(f"\n{len(status) - len(failed)} of {len(status)} runs done in {(time.perf_counter() - start) / 60:.1f} min; "
          f"results: {Path(args.out) / 'results.csv'} ({len(results)} rows)")
    if not args.no_report and len(results):
        report = write_report(args.out, runner.study.title or runner.study.name, Design.of_study(runner.study))
        print(f"report:  {report}\n         {report.with_suffix('.html')}")
        if args.wandb:
            from fimvision.tracking import log_summary

            log_summary(f"{runner.study.name}-report", args.wandb, runner.study.name,
                        {p.stem: p for p in sorted(Path(args.out).glob("*.png"))}, {"results": results}, args.out)
    for run_id, message in failed.items():
        print(f"FAILED {run_id}: {message} ({runner.folder(runner.runs[run_id]) / 'failed.json'})", file=sys.stderr)
    return EXIT_INTERNAL if failed else 0


def dry_run(runner: StudyRunner, wanted: list[str], done: list[str]) -> int:
    """Print the plan (each run, the datasets that would be generated) and check it; write nothing."""
    for run_id in wanted:
        spec = runner.runs[run_id]
        print(f"  {'done ' if run_id in done else 'todo '} {run_id}: {' '.join(relative_args(spec.args, runner.study.folder))}")
    missing = runner.missing_synthetic()
    for folder in missing:
        print(f"  would generate the SYNTHETIC dataset {folder} ({runner.study.synthetic[folder]})")
    validate(runner, not_yet=missing)
    print("every run's config and data check out (dry run: nothing was written).")
    return 0


def sweep(args) -> int:
    """DIR/sweep.yaml: a grid over the run ids; each agent run is `fimvision-study run-one` on the shared folder."""
    runner = runner_for(args.config, args.out)
    runner.prepare()
    validate(runner)
    out = Path(args.out).resolve()
    root = checkout_root(Path(args.config).resolve().parent)
    # paths relative to the checkout (as the study's data roots are): the file works from any clone of it
    config, shared = portable(Path(args.config), root), portable(out, root)
    spec = {"program": "fimvision-study", "name": runner.study.name, "method": "grid",
            "metric": {"name": SWEEP_METRIC, "goal": "maximize"},
            "parameters": {"run": {"values": list(runner.runs)}},
            "command": ["${env}", "fimvision-study", "run-one", "--config", config, "--out", shared, "${args}"]}
    path = out / "sweep.yaml"
    where = (f"# Paths are relative to the repository root ({root.name}/ here): agents run in a checkout of it, started\n"
             "# there (or anywhere, with fimvision installed from the checkout: run-one then works in it).\n"
             if root else "")
    header = (f"# W&B grid sweep over the {len(runner.runs)} runs of study {runner.study.name}. Every agent must see\n"
              f"# {shared} (shared storage) and have fimvision-study on its PATH.\n{where}"
              f"#   wandb sweep --project {args.project} {shared}/sweep.yaml     # prints ENTITY/PROJECT/SWEEP_ID\n"
              "#   wandb agent ENTITY/PROJECT/SWEEP_ID                # on as many machines as you like\n"
              f"#   fimvision-study collect {shared}                      # then: fimvision-study report {shared}\n")
    write_atomically(path, lambda p: p.write_text(header + yaml.safe_dump(spec, sort_keys=False)))
    print(f"sweep file: {path} ({len(runner.runs)} runs)")
    if args.create:
        import wandb

        sweep_id = wandb.sweep(spec, project=args.project, entity=args.entity)
        print(f"created sweep {sweep_id}: wandb agent {args.entity + '/' if args.entity else ''}{args.project}/{sweep_id}")
    else:
        print(f"create it with: wandb sweep --project {args.project} {path}")
    return 0


def checkout_root(start: Path) -> Path | None:
    """The repository checkout holding ``start`` (the nearest folder above it with a pyproject.toml), or None."""
    return next((folder for folder in [start, *start.parents] if (folder / "pyproject.toml").is_file()), None)


def portable(path: Path, root: Path | None) -> str:
    """``path`` relative to the checkout ``root`` when inside it (any clone resolves it), else absolute."""
    path = path.resolve()
    return path.relative_to(root).as_posix() if root and path.is_relative_to(root) else str(path)


def work_in_checkout(config: str) -> None:
    """Resolve a sweep file's relative paths at run time: when ``config`` is not found from the working folder,
    work in the checkout of the installed fimvision if it holds it (data roots, too, are relative to it)."""
    if Path(config).is_absolute() or Path(config).exists():
        return
    import fimvision

    root = checkout_root(Path(fimvision.__file__).resolve().parent)
    if root is None or not (root / config).is_file():
        raise ConfigError(f"study file {config} not found from {Path.cwd()}: start the agent in the repository root "
                          "(the sweep file's paths are relative to it).")
    log.info("working in %s, the checkout that holds %s", root, config)
    os.chdir(root)


def run_one(args) -> int:
    """One run (and what it needs) in the shared folder; under a sweep agent its result becomes the agent's W&B run."""
    work_in_checkout(args.config)
    runner = runner_for(args.config, args.out, extra=["--wandb.enabled=false"], stale_after=args.stale_after,
                        keep_copy=False)
    if args.run not in runner.runs:
        raise ConfigError(f"unknown run '{args.run}' in {args.config}; `fimvision-study run --dry-run` lists them.")
    status = runner.run_all([args.run], progress=False)
    result = runner.result(args.run)
    from fimvision.tracking import under_sweep_agent

    if under_sweep_agent() or os.environ.get("WANDB_RUN_ID"):
        import wandb

        spec = runner.runs[args.run]
        wandb_run = wandb.init(dir=str(runner.folder(spec)), group=runner.study.name, job_type=spec.stage,
                               config={"run": args.run, "stage": spec.stage, **spec.axis_values})
        if result is not None:
            wandb_run.log({k: v for k, v in result.items() if isinstance(v, int | float)})
            wandb_run.summary.update({k: v for k, v in result.items() if k != "args"})
        wandb_run.finish(exit_code=0 if result is not None else 1)
    if result is None:
        print(f"run {args.run} failed: {status.get(args.run)}", file=sys.stderr)
        return EXIT_INTERNAL
    print(f"run {args.run}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()
                                          if k.startswith("test_") and isinstance(v, float)))
    return 0


def collect(args) -> int:
    runner = runner_of_folder(args.out)
    if args.sweep:
        results = runner.collect_from_wandb(args.sweep)
    else:
        results = runner.collect()
    print(f"{len(results)} of {len(runner.runs)} runs finished: {Path(args.out) / 'results.csv'}")
    return 0


def report(args) -> int:
    path = Path(args.out) / "results.csv"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: run `fimvision-study collect {args.out}` first.")
    copy = Path(args.out) / STUDY_COPY
    if copy.is_file():  # the study the folder was run with: its axes, replicates and comparisons
        study = load_study(copy)
        written = write_report(args.out, study.title or study.name, Design.of_study(study))
    else:  # a results.csv alone: every column that is no metric is an axis
        written = write_report(args.out, Path(args.out).name)
    print(f"report: {written}\n        {written.with_suffix('.html')}")
    return 0


COMMANDS = {"run": run, "sweep": sweep, "run-one": run_one, "collect": collect, "report": report}


def main_args(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("fimvision").setLevel(logging.INFO)
    if getattr(args, "workers", 1) < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}.")
    return COMMANDS[args.command](args)


def main(argv: list[str] | None = None) -> int:
    """The `fimvision-study` console script; returns its exit status (0, 1 some runs failed, 2 bad input, 130)."""
    prepare_script()
    return run_main(main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
