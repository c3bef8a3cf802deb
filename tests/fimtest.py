"""Helpers the tests import: paths, fast CLI overrides and the real CLI run in-process.

(A module of its own: several folders have a conftest.py, so `from conftest import` is ambiguous.)
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHARED_DATA = REPO.parent / "shared" / "data"


def fast_args(root: Path, out: Path, image_size: int = 32) -> list[str]:
    """CLI overrides that make any config run in seconds on tiny data."""
    return [f"--data.init_args.root={root}", f"--data.init_args.image_size={image_size}",
            "--data.init_args.batch_size=8", "--data.init_args.num_workers=0",
            f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def run_cli(args: list[str], run: bool = True):
    """`fimvision ARGS` in this process: the real CLI, without paying its imports again. Returns the CLI;
    errors are raised (use ``run_main`` for the exit status and message). ``run=False``: no subcommand,
    only build the trainer, model and data module."""
    from fimvision.cli import build_cli

    return build_cli([str(a) for a in args], run=run)


def run_main(args: list[str]) -> int:
    """`fimvision ARGS` in this process; returns its exit status, as the console script would."""
    from fimvision.cli import main

    return main([str(a) for a in args])


def study_main(args: list, capsys) -> tuple[int, str, str]:
    """`fimvision-study ARGS` in this process (the runs are in-process there too): its exit status, stdout and
    stderr. The installed command's own exit statuses are checked as subprocesses in test_entry_points.py."""
    import logging

    from fimvision.study.cli import main

    capsys.readouterr()
    level = logging.getLogger("fimvision").level
    try:
        code = main([str(a) for a in args])
    finally:
        logging.getLogger("fimvision").setLevel(level)  # main sets INFO for the process
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, message: str) -> None:
    """In-process twin of ``user_error``: exit status 2 and one `error:` line that says ``message``."""
    assert code == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, err[-2000:]
    assert "Traceback" not in err and "usage:" not in err, err[-2000:]


def run_in_process(cmd: list, capsys) -> subprocess.CompletedProcess:
    """``cmd``, a `fimvision ...` command line as ``run`` takes it, through the same ``main`` in this process (from
    the current folder): its exit status, stdout and stderr, shaped as ``run``'s result."""
    capsys.readouterr()
    code = run_main([str(c) for c in cmd[1:]])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess([str(c) for c in cmd], code, out, err)


def rewrite_manifest(root: Path, change) -> pd.DataFrame:
    """Rewrite ``root/manifest.csv`` as ``change(frame)`` (text as read, empty cells kept); returns the new frame."""
    frame = change(pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False))
    frame.to_csv(root / "manifest.csv", index=False)
    return frame


# ------------------------------------------------------------ the installed entry points, as subprocesses
BIN = Path(sys.executable).parent
ENV = {**os.environ, "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
if os.environ.get("PYTEST_XDIST_WORKER"):  # as the worker itself (conftest.py): one thread a process on shared cores,
    ENV["OMP_NUM_THREADS"] = "1"            # so a process's run and an in-process rerun do the same arithmetic
SUPERVISED = CONFIGS / "supervised" / "resnet18_color.yaml"


def exe(name: str) -> str:
    path = BIN / name
    assert path.is_file(), f"{path} is missing: install the package (`make test` does: pip install -e .)"
    return str(path)


def study_cmd(*args) -> list:
    """`fimvision-study ARGS`, the installed command."""
    return [exe("fimvision-study"), *[str(a) for a in args]]


def run(cmd: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def run_all(cmds: list[list], cwd: Path, at_once: int = 3) -> list[subprocess.CompletedProcess]:
    """Run independent commands a few at a time (each pays the same import cost; two cores share it)."""
    results: list[subprocess.CompletedProcess | None] = [None] * len(cmds)
    pending = list(enumerate(cmds))
    running: list[tuple[int, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < at_once:
            i, cmd = pending.pop(0)
            cmd = [str(c) for c in cmd]
            running.append((i, subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE, text=True)))
        i, proc = running.pop(0)
        out, err = proc.communicate(timeout=300)
        results[i] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results  # type: ignore[return-value]


def user_error(result: subprocess.CompletedProcess, message: str) -> None:
    """Exit status 2 and one `error:` line that says ``message``; no traceback, no usage dump."""
    what = f"{' '.join(result.args[1:4])}...:\n{result.stderr[-2000:]}"
    assert result.returncode == 2, what
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, what
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr, what


def fit_cmd(*extra: str, save_dir: str = "runs") -> list:
    return [exe("fimvision"), "fit", "--config", SUPERVISED, "--data.init_args.root=data",
            "--data.init_args.image_size=32", "--data.init_args.batch_size=8", "--data.init_args.num_workers=0",
            "--model.init_args.backbone=test_resnet", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--trainer.logger.init_args.save_dir={save_dir}",
            "--trainer.log_every_n_steps=1", *extra]


def fit_on_one_batch(args: list, out: Path, steps: int = 8):
    """`fimvision fit ARGS` on one fixed batch (Lightning's overfit_batches) for ``steps`` steps, logging every
    step. Returns the CLI and the run's metrics.csv as a frame."""
    cli = run_cli(["fit", *args, "--trainer.overfit_batches=1", f"--trainer.max_epochs={steps}",
                   "--trainer.log_every_n_steps=1", f"--trainer.logger.init_args.save_dir={out}",
                   "--trainer.limit_val_batches=1"])
    return cli, pd.read_csv(Path(cli.trainer.log_dir) / "metrics.csv")


def losses_of(metrics: pd.DataFrame) -> list[float]:
    return metrics.dropna(subset=["train_loss"]).sort_values("step")["train_loss"].tolist()


def assert_learns(metrics: pd.DataFrame, what: str = "") -> None:
    """The training loss on a fixed batch falls: the mean of the last three steps is below the first step."""
    losses = losses_of(metrics)
    assert len(losses) >= 6 and sum(losses[-3:]) / 3 < losses[0], (what, losses)


def assert_logged(metrics: pd.DataFrame, *names: str) -> None:
    """Each documented metric was logged with a finite value."""
    for name in names:
        assert name in metrics.columns and metrics[name].dropna().map(math.isfinite).all() \
            and metrics[name].notna().any(), (name, sorted(metrics.columns))


def read_wandb_run(run_dir: Path) -> dict:
    """An offline W&B run folder read back: ``history`` (one dict a logged step), ``config`` and ``files``.

    The ``.wandb`` file is W&B's record log: a 7-byte header, then records in 32 KiB blocks, each with a
    7-byte header (CRC, length, type: full / first / middle / last) and a protobuf ``Record``.
    """
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(run_dir).glob("run-*.wandb")
    data, pos, block, pending, records = path.read_bytes(), 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
        elif kind == 0:
            break
    history, config = [], {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind in ("config", "run"):  # wandb.init's config comes with the run record, later ones apart
            updates = record.config.update if kind == "config" else record.run.config.update
            config.update({item.key: json.loads(item.value_json) for item in updates})
    files = sorted(str(p.relative_to(run_dir / "files")) for p in (run_dir / "files").rglob("*") if p.is_file())
    return {"history": history, "config": config, "files": files}


def sample_sweep_parameters(parameters: dict, rng) -> dict:
    """One draw of a W&B sweep's ``parameters``, from each parameter's own distribution (W&B's ``sweeps``
    engine would downgrade numpy here, so its draws are emulated): value, values, and the uniform,
    log-uniform, integer, quantised and normal distributions."""
    import math

    drawn = {}
    for name, spec in parameters.items():
        kind = spec.get("distribution")
        if "value" in spec:
            drawn[name] = spec["value"]
        elif "values" in spec:
            drawn[name] = spec["values"][int(rng.integers(len(spec["values"])))]
        elif kind == "log_uniform_values":
            drawn[name] = float(math.exp(rng.uniform(math.log(spec["min"]), math.log(spec["max"]))))
        elif kind == "int_uniform" or (kind is None and isinstance(spec.get("min"), int)):
            drawn[name] = int(rng.integers(spec["min"], spec["max"] + 1))
        elif kind in ("uniform", None):
            drawn[name] = float(rng.uniform(spec["min"], spec["max"]))
        elif kind == "q_uniform":
            drawn[name] = float(round(rng.uniform(spec["min"], spec["max"]) / spec["q"]) * spec["q"])
        elif kind == "normal":
            drawn[name] = float(rng.normal(spec.get("mu", 0.0), spec.get("sigma", 1.0)))
        else:
            raise ValueError(f"parameter {name}: distribution {kind} not emulated")
    return drawn


def wandb_runs(folder: Path) -> list[Path]:
    """The offline W&B run folders under ``folder``."""
    return sorted(folder.rglob("offline-run-*"))


def run_as_wandb_agent(sweep: dict, args: dict, run_id: str, *, wait: bool = True):
    """Start one run of ``sweep`` exactly as the installed `wandb agent` does: its own Agent code renders
    the command (``${env}``, ``${args}``, ``${envvar:...}`` macros) and launches it. Returns the exit
    status, or the agent's process handle when not ``wait``."""
    from wandb.wandb_agent import Agent

    agent = Agent(api=None, queue=None, sweep_id=os.environ.get("WANDB_SWEEP_ID"))
    agent._sweep_command = list(sweep["command"])
    agent._command_run({"run_id": run_id, "program": sweep["program"],
                        "args": {name: {"value": value} for name, value in args.items()}})
    process = agent._run_processes[run_id]
    return process.wait() if wait else process


def write_mat_domains(path: str | Path, source: tuple, target: tuple) -> Path:
    """Write two domains ((images N x side x side in 0-1, labels 0-based), ...) as an HDF5 ``.mat`` in the
    shared sets' layout (``Xs``/``Ys``/``Xt``/``Yt``, rows in C order, 1-based labels)."""
    import h5py
    import numpy as np

    path = Path(path)
    with h5py.File(path, "w") as f:
        for key, (images, labels) in (("s", source), ("t", target)):
            images = np.asarray(images, dtype=np.float64)
            f[f"X{key}"] = images.reshape(len(images), -1)
            f[f"Y{key}"] = (np.asarray(labels, dtype=np.float64) + 1)[None, :]
    return path


def write_digits(path: Path, per_class: int = 12, classes: int = 10, side: int = 16, seed: int = 0) -> Path:
    """Tiny learnable digits-like domains in the shared .mat layout: class c lights row c (the target a
    little dimmer). Name the file MNIST_vs_USPS.mat for the MNIST/USPS domain names."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    x = rng.uniform(0, 0.2, (len(labels), side, side))
    x[np.arange(len(labels)), labels, :] = 1.0
    return write_mat_domains(path, (x, labels), (0.8 * x, labels))


# ------------------------------------------------------------ tiny studies (tests/study)
# Every run of the tiny studies: a tiny CNN on the tiny dataset, a few steps.
STUDY_TINY = ["--model.init_args.backbone=test_resnet", "--data.init_args.image_size=32",
              "--data.init_args.batch_size=8", "--data.init_args.num_workers=0", "--trainer.max_epochs=1",
              "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=2"]


def write_study(path: Path, root: Path, *, seeds=(0, 1), pretrain: bool = False, extra: list[str] | None = None) -> Path:
    """A tiny study: (an SSL pretraining per modality and) a CNN (and its SSL-pretrained twin) x modality x seed."""
    import yaml

    main = {"args": ["--config", str(CONFIGS / "supervised" / "resnet18_color.yaml"), f"--data.init_args.root={root}",
                     *STUDY_TINY, *(extra or [])],
            "axes": {"modality": {"values": ["color", "mono"], "args": ["--data.init_args.modality={}"]},
                     "seed": {"values": list(seeds), "args": ["--seed_everything={}", "--data.init_args.seed={}"]}}}
    stages = {"main": main}
    if pretrain:
        stages = {"pretrain": {"args": ["--config", str(CONFIGS / "ssl" / "pretrain.yaml"), "--model",
                                        str(CONFIGS / "ssl" / "models" / "simclr_resnet18.yaml"),
                                        f"--data.init_args.root={root}", *STUDY_TINY,
                                        "--trainer.check_val_every_n_epoch=1"],
                               "test": False,
                               "axes": {"modality": main["axes"]["modality"]}}, "main": main}
        main["needs"] = {"ssl": "pretrain"}
        main["axes"] = {"model": {"named": {"cnn": [], "ssl_cnn": ["--model.init_args.backbone_checkpoint={ssl}"]}},
                        **main["axes"]}
    path.write_text(yaml.safe_dump({"name": "tiny", "stages": stages}, sort_keys=False))
    return path


def executed(output: str) -> list[str]:
    """The runs a `fimvision-study` process ran (one line each: '<run id>: test_acc ...')."""
    import re

    return re.findall(r"((?:main|pretrain)__[^\s:]+): (?:test_acc|val_knn_acc)", output)  # amid progress bars
