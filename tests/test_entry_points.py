"""The installed console scripts and tools/ scripts as a user, a CI job or a sweep agent runs them: as
subprocesses, judged by their exit status (0 success, 2 bad input, 130 interrupted, 1 internal error) and
the key line of their message (most bad-settings cases through the same `main`, in this process). (Runs
themselves, as subprocesses too: test_runs.py.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fimtest import (
    CONFIGS,
    ENV,
    REPO,
    SHARED_DATA,
    assert_user_error,
    exe,
    fit_cmd,
    run,
    run_all,
    run_main,
    user_error,
)

TOOLS = sorted((REPO / "tools").glob("*.py"))
SUPERVISED = CONFIGS / "supervised" / "resnet18_color.yaml"
pytestmark = pytest.mark.slow  # every test starts console scripts as processes: their imports each time


def test_bad_settings_data_and_checkpoints_exit_2_with_one_line(fitted, work, monkeypatch, capsys, caplog):
    bad = work / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "empty.ckpt").write_bytes(b"")
    good = (fitted / "checkpoints" / "last.ckpt").read_bytes()
    (bad / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    torch.save({"weights": torch.zeros(2)}, bad / "foreign.ckpt")
    mono = ["--data.init_args.modality=mono"]
    cases = {
        "unknown key": (["--model.init_args.lrr=0.1"], "--model.init_args.lrr: ParticleClassifier has no argument "
                                                      "'lrr'. Did you mean lr?"),
        "bad type": (["--model.init_args.lr=abc"], "--model.init_args.lr: expected a float, got 'abc'"),
        "trainer typo": (["--trainer.max_epoch=3"], "unknown option --trainer.max_epoch. Did you mean "
                                                   "--trainer.max_epochs"),
        "missing data": (["--data.init_args.root=nowhere"], "dataset folder nowhere does not exist"),
        "unknown backbone": (["--model.init_args.backbone=resnet181"], "unknown timm model 'resnet181'. Close "
                                                                       "matches: resnet18"),
        "missing checkpoint": (["--ckpt_path=bad/none.ckpt"], "bad/none.ckpt does not exist"),
        "empty checkpoint": (["--ckpt_path=bad/empty.ckpt"], "bad/empty.ckpt is empty (0 bytes)"),
        "truncated checkpoint": (["--ckpt_path=bad/truncated.ckpt"], "bad/truncated.ckpt is truncated or corrupt"),
        "foreign checkpoint": (["--ckpt_path=bad/foreign.ckpt"], "bad/foreign.ckpt is not a Lightning checkpoint"),
        "colour checkpoint, mono data": ([*mono, f"--ckpt_path={fitted / 'checkpoints' / 'last.ckpt'}"],
                                         "Settings that fit it: --data.init_args.modality=color"),
    }
    cmds = {name: fit_cmd(*args, save_dir="bad_runs") for name, (args, _) in cases.items()}
    for name, cmd in cmds.items():
        if "checkpoint" in name:
            cmd[1] = "test"
    # The installed command as a process for one settings error and one checkpoint error; the same `main` in this
    # process for the other cases (each its own message; the exit status and the one line are main's).
    as_processes = ["unknown key", "truncated checkpoint"]
    for name, result in zip(as_processes, run_all([cmds[n] for n in as_processes], work), strict=True):
        user_error(result, cases[name][1])
        if "checkpoint" in name:  # refused before any image was decoded
            assert "cached" not in result.stderr and "decoding images" not in result.stderr, name
    monkeypatch.chdir(work)
    for name in [n for n in cases if n not in as_processes]:
        capsys.readouterr()
        caplog.clear()
        code = run_main(cmds[name][1:])
        err = capsys.readouterr().err
        assert_user_error(code, err, cases[name][1])
        if "checkpoint" in name:  # refused before any image was decoded
            assert "cached" not in caplog.text + err and "decoding images" not in err, name


def test_internal_errors_exit_1_with_a_traceback(work):
    (work / "broken_model.py").write_text(
        "from fimvision.models.classifier import ParticleClassifier\n\n"
        "class Broken(ParticleClassifier):\n"
        "    def training_step(self, batch, batch_idx):\n"
        "        raise RuntimeError('a bug, not bad input')\n")
    cmd = fit_cmd("--model=broken_model.Broken", "--trainer.max_epochs=1", save_dir="broken")
    result = subprocess.run([str(c) for c in cmd], cwd=work, env={**ENV, "PYTHONPATH": str(work)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: a bug, not bad input" in result.stderr


def script_in_process(main: Callable, args: list, capsys) -> subprocess.CompletedProcess:
    """A console script's ``main(args)`` in this process (what its installed wrapper calls, `sys.exit(main())`):
    the exit status, stdout and stderr, shaped as ``run``'s result."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:  # --help and argparse usage errors
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess([str(a) for a in args], code, out, err)


def test_help_of_every_console_script(work, capsys):
    # (Each tool's --help is checked in tests/curation/test_curation_tools_cli.py; below each tool runs here.)
    from fimvision.baselines import main as baseline_main
    from fimvision.demo import main as demo_main
    from fimvision.efficiency.cli import main as efficiency_main
    from fimvision.study.cli import main as study_main

    # As processes, the scripts whose imports could probe for CUDA; the others' `main` in this process.
    cmds = [[exe("fimvision"), "--help"], [exe("fimvision-efficiency"), "--help"]]
    results = run_all(cmds, work, at_once=2)
    for cmd, result in zip(cmds, results, strict=True):
        assert result.returncode == 0 and result.stdout.startswith("usage:"), (cmd, result.stderr[-500:])
        # No CUDA probe noise ("No CUDA runtime is found, using CUDA_HOME=..." from torch.utils.cpp_extension, which
        # torch.utils.benchmark imports) on a machine without a GPU: no line mentions CUDA at all.
        assert not [line for line in (result.stdout + result.stderr).splitlines() if "cuda" in line.lower()], cmd
    for main, args in ((demo_main, ["--help"]), (baseline_main, ["--help"]), (study_main, ["--help"]),
                       (efficiency_main, ["benchmark", "--help"])):
        result = script_in_process(main, args, capsys)
        assert result.returncode == 0 and result.stdout.startswith("usage:"), (main, result.stderr[-500:])
    for name in ("fimvision-demo", "fimvision-baseline", "fimvision-study"):
        exe(name)  # their installed wrappers exist (exe asserts it)
    main_help = results[0].stdout
    assert "flow imaging microscopy" in main_help
    assert sum(line.strip().startswith(("fimvision fit", "fimvision test", "fimvision predict"))
               for line in main_help.splitlines()) == 3


def test_other_console_scripts_and_tools_exit_codes(work, tmp_path, monkeypatch, capsys):
    from fimvision.baselines import main as baseline_main
    from fimvision.efficiency.cli import main as efficiency_main
    from fimvision.study.cli import main as study_main

    study = tmp_path / "study.yaml"
    study.write_text("name: s\nstages: {a: {axes: {seed: {values: [0]}}, model: nope.yaml}}\n")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "MNIST_vs_USPS.mat").write_bytes(b"not the published file")
    (tmp_path / "fake" / "COIL1_vs_COIL2.mat").write_bytes(b"")
    efficiency = [exe("fimvision-efficiency"), "benchmark", f"--config={SUPERVISED}",
                  "--model.init_args.backbone=test_resnet", "--data.init_args.image_size=32", "--batch_sizes=[2]",
                  "--repeats=1", "--warmup=0", "--precisions=[32-true]", "--backends=[math]", "--mfu=false",
                  f"--out={tmp_path / 'eff'}", "--device=cpu"]
    tool = {t.stem: [sys.executable, t] for t in TOOLS}
    # Every tools/ script as a process; the console scripts' bad-input cases through their `main` in this process (one
    # real run of fimvision-efficiency is the process; `fimvision-study` processes: tests/study/test_study_runs.py).
    cases = [
        (efficiency, 0, None),
        ([*tool["make_synthetic"], "--out", "data", "--antibodies", "1"], 2, "not empty"),
        ([*tool["fetch_data"], "domain-adaptation", "--out", tmp_path / "da", "--from", tmp_path / "fake"], 2,
         "checksum does not match"),
        ([*tool["curate_flowcam"], tmp_path / "no-run", "--out", tmp_path / "c"], 2, "error:"),
        ([*tool["curate_mfi"], tmp_path / "no.csv", "--out", tmp_path / "m"], 2, "error:"),
        ([*tool["split_collages"], tmp_path / "no.tif", "--out", tmp_path / "s"], 2, "error:"),
        ([*tool["filter_dataset"], tmp_path / "nowhere", "--out", tmp_path / "f"], 2, "error:"),
        ([*tool["split_dataset"], "data", "--out", tmp_path / "sp", "--strategy", "group", "--fold", "9"], 2, "fold 9"),
        ([*tool["merge_datasets"], "data", tmp_path / "nowhere", "--out", tmp_path / "mg"], 2, "error:"),
        ([*tool["preview"], tmp_path / "nowhere", "--out", tmp_path / "p.png"], 2, "error:"),
        ([*tool["split_dataset"], "data", "--out", tmp_path / "sp2"], 0, None),
    ]
    assert {Path(c[0][1]).stem for c in cases if c[0][0] == sys.executable} == set(tool), "a tool without a case"
    for (cmd, code, message), result in zip(cases, run_all([c[0] for c in cases], work), strict=True):
        if code == 2:
            user_error(result, message)
        else:
            assert result.returncode == 0, (cmd, result.stderr[-1500:])
        assert "No CUDA runtime" not in result.stderr, cmd
    monkeypatch.chdir(work)
    in_process = [
        (efficiency_main, ["benchmark", "--config=missing.yaml"], "config file missing.yaml does not exist"),
        (efficiency_main, ["bench"], "error:"),
        (baseline_main, ["--config", SUPERVISED, "--data.init_args.root=data"], "needs features"),
        (baseline_main, ["--data.init_args.root=data"], "--config FILE"),
        (study_main, ["run", "--config", study, "--out", tmp_path / "study"], "model"),
        (study_main, ["report", tmp_path / "nowhere"], "results.csv does not exist"),
    ]
    for main, args, message in in_process:
        user_error(script_in_process(main, args, capsys), message)
    if (SHARED_DATA / "domain-adaptation").is_dir():  # the fetch tool's checked copy, where the real files exist
        result = run([*tool["fetch_data"], "domain-adaptation", "--out", tmp_path / "da",
                      "--from", SHARED_DATA / "domain-adaptation"], work)
        assert result.returncode == 0 and (tmp_path / "da" / "MNIST_vs_USPS.mat").is_file(), result.stderr
