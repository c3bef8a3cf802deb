"""Running a study: every run an ordinary `fimvision fit` then `test`, through the same CLI code, in its own folder.

The study folder holds ``runs/<run id>/`` (the run's folder: config.yaml, checkpoints, metrics.csv,
test predictions, and ``result.json`` once it is done), ``locks/<run id>.lock`` and ``results.csv``.
Several processes (``--workers``) or machines sharing the folder never run a run twice: a run is
claimed by creating its lock file exclusively; the lock names its host and process and is touched
while the run goes on, so the lock of a process that was killed is recognised as stale (its process
is gone, or the lock has not been touched for ``stale_after`` seconds) and the run is run again. A
finished run (its ``result.json``) is never run again; a crashed one is, from scratch.

A run's result (a row of ``results.csv``) holds the ``test_*`` metrics of the checkpoint that was tested (the
best, else the last) and the ``val_*`` metrics of that same checkpoint's validation with its epoch
(``best_epoch``), read from the run's ``metrics.csv``; not those of the last epoch.
"""

from __future__ import annotations

import contextlib
import enum
import fnmatch
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fimvision.cli import build_cli, fit_and_test, parse_config
from fimvision.console import tqdm_disable
from fimvision.errors import ConfigError, FimvisionError
from fimvision.files import write_atomically
from fimvision.study.checkpoint import checkpoint_metrics
from fimvision.study.config import TEST_ONLY, RunSpec, StudyConfig, expand, relative_args

log = logging.getLogger(__name__)

RESULT = "result.json"
FAILED = "failed.json"
HEARTBEAT_S = 20.0


class RunState(enum.Enum):
    """How a run of ``run_all`` ended."""

    DONE = "done"
    FAILED = "failed"  # here: its failed.json says why
    FAILED_ELSEWHERE = "failed in another process"  # not retried before the next start
    NEED_FAILED = "a run it needs failed"


@dataclass(frozen=True)
class Outcome:
    """A run's state and, when it failed, why."""

    state: RunState
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.state is not RunState.DONE

    def __str__(self) -> str:
        return f"{self.state.value}: {self.message}" if self.message else self.state.value


DONE = Outcome(RunState.DONE)


class RunLock:
    """An exclusive claim on one run that its holder refreshes and that outlives a killed holder as stale."""

    def __init__(self, path: Path, stale_after: float) -> None:
        self.path, self.stale_after = path, stale_after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def stale(self) -> bool:
        """Whether the lock's holder is gone: a dead process on this host, or no heartbeat for a while."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        owner = self._owner()
        if owner.get("host") == socket.gethostname() and owner.get("pid"):
            try:
                os.kill(int(owner["pid"]), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
        return age > self.stale_after

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self.stale():
                    return False
                log.warning("%s: its holder is gone (killed?); taking the run over", self.path)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as file:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}, file)
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
            return True
        return False

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        self._stop.set()
        self.path.unlink(missing_ok=True)


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    handlers = [h for lg in loggers for h in getattr(lg, "handlers", [])
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    return list(dict.fromkeys(handlers))  # a handler on two loggers once: else its console stream is lost


@contextlib.contextmanager
def output_to(path: Path):
    """Send what a run prints and logs (Lightning's tables, warnings, data logs) to ``path`` instead of the
    console, where the study's progress is shown."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as file:
        console = {}
        for handler in _stream_handlers():
            console[handler], handler.stream = handler.stream, file  # no flush: a stream may be closed
        try:
            with contextlib.redirect_stdout(file), contextlib.redirect_stderr(file):
                yield
        finally:
            for handler in _stream_handlers():  # with those a library made meanwhile, on this file
                if handler in console:
                    handler.stream = console[handler]
                elif handler.stream is file:
                    handler.stream = sys.stderr


class StudyRunner:
    """Runs the runs of a study in this process, claiming each (see the module docstring).

    ``extra`` arguments go to every run (e.g. ``--wandb.enabled=true``).
    """

    def __init__(self, study: StudyConfig, out: str | Path, *, extra: list[str] | None = None,
                 stale_after: float = 600.0) -> None:
        self.study, self.out, self.extra, self.stale_after = study, Path(out), list(extra or []), stale_after
        self.runs = {run.id: run for run in expand(study)}

    def folder(self, run: RunSpec) -> Path:
        return self.out / "runs" / run.id

    def log_file(self, run_id: str) -> Path:
        return self.out / "logs" / f"{run_id}.log"

    def result(self, run_id: str) -> dict | None:
        path = self.out / "runs" / run_id / RESULT
        return json.loads(path.read_text()) if path.is_file() else None

    def lock(self, run_id: str) -> RunLock:
        return RunLock(self.out / "locks" / f"{run_id}.lock", self.stale_after)

    # -- before the first run
    def missing_synthetic(self) -> list[str]:
        """The study's synthetic dataset folders that do not exist yet (`prepare` generates them)."""
        from fimvision.data.manifest import MANIFEST_NAME

        return [folder for folder in self.study.synthetic if not (Path(folder) / MANIFEST_NAME).is_file()]

    def prepare(self, progress: bool = True) -> None:
        """Generate the study's synthetic datasets that are missing."""
        from fimvision.data.synthetic import SyntheticConfig, write_dataset

        for folder in self.missing_synthetic():
            fields = self.study.synthetic[folder]
            log.info("generating the SYNTHETIC dataset %s (%s)", folder, fields)
            write_dataset(folder, SyntheticConfig(**fields), workers=min(2, os.cpu_count() or 1), progress=progress)

    # -- running
    def _arguments(self, run: RunSpec) -> list[str]:
        """The run's own arguments with its needs filled in and its folder set."""
        args = list(run.args)
        for placeholder, needed in run.needs:
            done = self.result(needed)
            args = [a.replace(f"{{{placeholder}}}", done["checkpoint"]) for a in args]
        folder = self.folder(run)
        return [a for a in args if a != TEST_ONLY] + [
            f"--trainer.logger.init_args.save_dir={folder.parent}", "--trainer.logger.init_args.name=",
            f"--trainer.logger.init_args.version={folder.name}", f"--trainer.default_root_dir={folder}",
            "--trainer.enable_progress_bar=false", *self.extra]

    def execute(self, run: RunSpec) -> dict:
        """Fit and test one run (its needs must be done); writes and returns its result."""
        folder = self.folder(run)
        shutil.rmtree(folder, ignore_errors=True)  # what a crashed attempt left
        args = self._arguments(run)
        start, cpu = time.perf_counter(), time.process_time()
        metrics: dict[str, Any] = {}
        checkpoint = ""
        if run.test_only:
            checkpoint = next((a.split("=", 1)[1] for a in args if a.startswith("--ckpt_path=")), "")
            cli = build_cli(["test", *args])
            metrics.update({k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test_")})
        else:
            done = fit_and_test(args, test=run.test)
            cli, checkpoint = done.fit, done.checkpoint
            last = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val_")}
            metrics.update(checkpoint_metrics(folder, checkpoint) if checkpoint else {})
            if not any(k.startswith("val_") for k in metrics):  # no metrics.csv: the last epoch's, said so
                log.warning("run %s: no validation logged for its checkpoint; val_* are the last epoch's", run.id)
                metrics.update(last)
            metrics["steps"] = cli.trainer.global_step
            metrics.update(done.test_metrics)
        result = {"run": run.id, "stage": run.stage, **run.axis_values, **metrics, "checkpoint": checkpoint,
                  "run_dir": str(folder), "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
                  "finished": time.time(), "args": relative_args(run.args, self.study.folder)}
        write_atomically(folder / RESULT, lambda p: p.write_text(json.dumps(result, indent=1)))
        return result

    def _ready(self, run: RunSpec) -> bool:
        return all(self.result(needed) is not None for _, needed in run.needs)

    def run_all(self, only: list[str] | None = None, progress: bool = True) -> dict[str, str]:
        """Run every run not done yet (or those of ``only`` and what they need), skipping runs other processes
        hold; wait for those before returning. Returns run id -> its outcome."""
        from tqdm.auto import tqdm

        wanted = self.select(only) if only else list(self.runs)
        status: dict[str, Outcome] = {}
        started = time.time()
        bar = tqdm(total=len(wanted), desc=f"study {self.study.name}", unit="run", disable=tqdm_disable(progress))
        while True:
            pending = [i for i in wanted if i not in status and self.result(i) is None]
            for run_id in [i for i in wanted if i not in status and self.result(i) is not None]:
                status[run_id] = DONE
                bar.update()
            if not pending:
                break
            progressed = False
            for run_id in pending:
                run = self.runs[run_id]
                failed = self.folder(run) / FAILED
                if failed.is_file() and failed.stat().st_mtime >= started and not self.lock(run_id).path.exists():
                    status[run_id] = Outcome(RunState.FAILED_ELSEWHERE, f"see {failed}")
                    bar.update()
                    continue
                if any(status[n].failed for _, n in run.needs if n in status):
                    status[run_id] = Outcome(RunState.NEED_FAILED, ", ".join(n for _, n in run.needs
                                                                              if n in status and status[n].failed))
                    bar.update()
                    continue
                if not self._ready(run):
                    continue
                lock = self.lock(run_id)
                if not lock.acquire():
                    continue
                progressed = True
                try:
                    if self.result(run_id) is None:  # another process may have finished it meanwhile
                        self.log_file(run_id).unlink(missing_ok=True)
                        with output_to(self.log_file(run_id)):
                            result = self.execute(run)
                        scores = ", ".join(f"{k} {v:.3f}" for k, v in result.items() if k in ("test_acc", "val_knn_acc"))
                        bar.write(f"{run_id}: {scores or 'done'} ({result['wall_s']:.0f} s)")
                    status[run_id] = DONE
                except Exception as err:  # one run's failure is reported; the others go on
                    status[run_id] = Outcome(RunState.FAILED, f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
                    failure = json.dumps({"run": run_id, "error": str(err), "log": str(self.log_file(run_id)),
                                          "traceback": traceback.format_exc()}, indent=1)
                    write_atomically(self.folder(run) / FAILED, lambda p, text=failure: p.write_text(text))
                    log.error("run %s %s (its log: %s)", run_id, status[run_id], self.log_file(run_id))
                finally:
                    lock.release()
                bar.update()
            if not progressed:  # the rest is held by other processes (or waits for what they hold)
                time.sleep(1.0)
        bar.close()
        return status

    def select(self, patterns: list[str]) -> list[str]:
        """The runs that ``patterns`` name (run ids or shell patterns such as ``mnist_usps__*``) and the runs they
        need, in the study's order."""
        chosen: list[str] = []
        for pattern in patterns:
            match = fnmatch.filter(self.runs, pattern)
            if not match:
                raise ConfigError(f"no run of study {self.study.name} matches '{pattern}'; "
                                  "`fimvision-study run --dry-run` lists them.")
            chosen += match
        wanted = set()
        todo = list(chosen)
        while todo:
            run_id = todo.pop()
            if run_id not in wanted:
                wanted.add(run_id)
                todo += [n for _, n in self.runs[run_id].needs]
        return [i for i in self.runs if i in wanted]

    def collect(self) -> pd.DataFrame:
        """``results.csv`` from the runs' result files (one row a finished run, in the study's order)."""
        return self._write_results([r for r in (self.result(i) for i in self.runs) if r is not None])

    def collect_from_wandb(self, sweep_path: str, api=None) -> pd.DataFrame:
        """``results.csv`` from the summaries of a W&B sweep's finished runs (``ENTITY/PROJECT/SWEEP_ID``): what
        `fimvision-study run-one` logged there, when the run folders are not on this machine."""
        if api is None:
            import wandb

            api = wandb.Api()
        by_id = {}
        for wandb_run in api.sweep(sweep_path).runs:
            summary = dict(wandb_run.summary)
            run_id = summary.get("run") or wandb_run.config.get("run")
            if run_id in self.runs and wandb_run.state == "finished" and "wall_s" in summary:
                by_id[run_id] = {k: v for k, v in summary.items() if not k.startswith("_")}
        return self._write_results([by_id[i] for i in self.runs if i in by_id])

    def _write_results(self, rows: list[dict]) -> pd.DataFrame:
        frame = pd.DataFrame(rows).drop(columns=["args"], errors="ignore")
        self.out.mkdir(parents=True, exist_ok=True)
        write_atomically(self.out / "results.csv", lambda p: frame.to_csv(p, index=False))
        return frame


def validate(runner: StudyRunner, not_yet: list[str] | tuple[str, ...] = ()) -> None:
    """Parse the settings of every run of ``runner``'s study, check every dataset it names (but those of
    ``not_yet``, folders still to be generated) and that no finished run was made with other arguments,
    before anything runs; raises a ConfigError naming the run. Writes nothing."""
    from fimvision.data.domains.readers import root_kind
    from fimvision.data.manifest import load_manifest

    checked: set[str] = {str(Path(folder).resolve()) for folder in not_yet}
    for run in runner.runs.values():
        done = runner.result(run.id)
        args = relative_args(run.args, runner.study.folder)
        if done is not None and done.get("args") != args:
            raise ConfigError(f"run {run.id} in {runner.out} finished with other arguments ({done.get('args')}) "
                              f"than the study now gives it ({args}). Use a new --out folder, or delete "
                              f"{runner.folder(run)} to run it again.")
        args = [a for a in run.args if a != TEST_ONLY and not a.startswith("--ckpt_path")]  # a command's own
        for placeholder, _ in run.needs:  # a checkpoint that does not exist yet
            args = [a.replace(f"{{{placeholder}}}", "checkpoint-of-a-later-run.ckpt") for a in args]
        try:
            config = parse_config([*args, *runner.extra])
            data = config.data or {}
            root = str((data.get("init_args") or {}).get("root", ""))
            if root and str(Path(root).resolve()) not in checked:
                checked.add(str(Path(root).resolve()))
                if str(data.get("class_path", "")).endswith("DomainDataModule"):
                    root_kind(root)  # a .mat file, a dataset or a folder of domains, or a clear error
                else:
                    load_manifest(root, require_labels=False)
        except FimvisionError as err:
            raise ConfigError(f"run {run.id}: {err}") from err
