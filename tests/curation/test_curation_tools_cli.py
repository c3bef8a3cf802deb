"""The tools/ scripts: --help, printed summaries, and bad input ending in one 'error:' line with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fimvision.console import run_tool

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"

SCRIPTS = ("curate_flowcam", "split_collages", "curate_mfi", "filter_dataset", "split_dataset", "merge_datasets",
           "preview", "make_synthetic", "fetch_data")


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(tool, name, capsys):
    with pytest.raises(SystemExit) as info:
        tool(name)(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {name}.py") and "--out" in text and "example" in text


def test_mfi_help_states_the_assumptions(tool, capsys):
    with pytest.raises(SystemExit):
        tool("curate_mfi")(["--help"])
    text = capsys.readouterr().out
    for phrase in ("ECD(um)", "inclusive", "16-bit", "Frame #", "last number in its name"):
        assert phrase in text, phrase


def _fails(tool, name, argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        run_tool(tool(name), argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_bad_input_gives_one_error_line(tool, tmp_path, small_run, capsys):
    run = small_run(0)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    assert "not empty" in _fails(tool, "curate_flowcam", [str(run), "--out", str(existing), "--quiet"], capsys)
    assert "no .lst file" in _fails(tool, "curate_flowcam", [str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert "collage not found" in _fails(tool, "split_collages", [str(tmp_path / "x.tif"), "--out", str(tmp_path / "o")], capsys)
    assert "MFI particle CSV not found" in _fails(
        tool, "curate_mfi", [str(tmp_path / "p.csv"), "--frames", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert "has no manifest.csv" in _fails(tool, "filter_dataset", [str(tmp_path), "--report"], capsys)
    assert "has no manifest.csv" in _fails(tool, "split_dataset", [str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert "does not exist" in _fails(tool, "merge_datasets", [str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)
    assert "written as PNG" in _fails(tool, "preview", [str(tmp_path), "--out", str(tmp_path / "p.jpg")], capsys)
    assert (existing / "keep.txt").read_text() == "x" and not (tmp_path / "o").exists()


def test_tools_chain_in_process(tool, small_run, tmp_path, capsys):
    runs = [small_run(0, 60), small_run(1, 60)]
    assert tool("curate_flowcam")([*map(str, runs), "--out", str(tmp_path / "ds"), "--quiet", "--group", "g"]) == 0
    assert "wrote 120 particle(s)" in capsys.readouterr().out
    frame = pd.read_csv(tmp_path / "ds" / "manifest.csv", keep_default_na=False)
    # two runs = two samples: give each particle its own 'sample' so a sample split has enough units
    frame["sample"] = frame["run"] + "-" + (frame["particle_id"] % 6).astype(str)
    frame["label"] = ["a" if i % 2 else "b" for i in range(len(frame))]
    frame.to_csv(tmp_path / "ds" / "manifest.csv", index=False)

    assert tool("filter_dataset")([str(tmp_path / "ds"), "--report"]) == 0
    assert "imbalance" in capsys.readouterr().out
    assert tool("filter_dataset")([str(tmp_path / "ds"), "--out", str(tmp_path / "f"), "--quiet", "--esd-min", "4"]) == 0
    out = capsys.readouterr().out
    assert "filter_dataset: wrote" in out and "ESD below 4.0 um" in out
    assert tool("split_dataset")([str(tmp_path / "ds"), "--out", str(tmp_path / "s")]) == 0
    assert "particles per split" in capsys.readouterr().out
    assert tool("merge_datasets")([str(tmp_path / "ds"), str(tmp_path / "s"), "--groups", "x", "y",
                                   "--out", str(tmp_path / "m"), "--quiet"]) == 0
    assert "wrote 240 particle(s)" in capsys.readouterr().out
    assert tool("preview")([str(tmp_path / "m"), "--out", str(tmp_path / "m.png"), "--per-class", "4"]) == 0
    assert (tmp_path / "m.png").stat().st_size > 10_000


def test_as_a_subprocess(mono_collages, tmp_path):
    """The scripts run as programs: summary on stdout, exit 0; bad input: exit 2, one line on stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    collage = mono_collages / "mAb7_200xdilu_SO_100xdilu_50_50_r0_000003.tif"
    ok = subprocess.run([sys.executable, str(TOOLS / "split_collages.py"), str(collage), "--out", str(tmp_path / "t"),
                         "--group", "mAb7"], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "split_collages: wrote 211 particle(s)" in ok.stdout and "211 tile(s)" in ok.stdout
    again = subprocess.run([sys.executable, str(TOOLS / "split_collages.py"), str(collage), "--out", str(tmp_path / "t")],
                           capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.startswith("error: ") and again.stderr.count("\n") == 1 and "--overwrite" in again.stderr


def test_group_from_run_as_a_subprocess(small_run, tmp_path):
    """--group-from run: each run its own group (leave-one-run-out); exclusive with --group/--group-csv."""
    runs = [small_run(0, 8), small_run(1, 6)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(TOOLS / "curate_flowcam.py"), *map(str, runs), "--quiet", "--group-from", "run"]
    ok = subprocess.run([*command, "--out", str(tmp_path / "ds")], capture_output=True, text=True, cwd=REPO, env=env,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    manifest = pd.read_csv(tmp_path / "ds" / "manifest.csv", keep_default_na=False)
    assert (manifest["group"] == manifest["run"]).all()
    assert manifest["group"].value_counts().to_dict() == {runs[0].name: 8, runs[1].name: 6}
    clash = subprocess.run([*command, "--group", "mAb1", "--out", str(tmp_path / "x")], capture_output=True, text=True,
                           cwd=REPO, env=env, timeout=120)
    assert clash.returncode == 2 and clash.stderr.startswith("error: ") and clash.stderr.count("\n") == 1
    assert "--group-from" in clash.stderr and "not allowed with" in clash.stderr and not (tmp_path / "x").exists()


def test_group_from_is_exclusive_in_the_library_call_too(small_run, tmp_path):
    from fimvision.curation.flowcam import FlowCamOptions, curate_flowcam
    from fimvision.errors import CurationError

    run = small_run(0, 3)
    with pytest.raises(CurationError, match="give one of --group, --group-csv and --group-from"):
        curate_flowcam([run], tmp_path / "o", FlowCamOptions(group="g", group_from="run", progress=False))
    with pytest.raises(CurationError, match="unknown group source 'sample'"):
        curate_flowcam([run], tmp_path / "o", FlowCamOptions(group_from="sample", progress=False))
    assert not (tmp_path / "o").exists()


def test_curate_flowcam_flags_build_the_options_object(tool, monkeypatch, tmp_path):
    """The tool's defaults are FlowCamOptions' defaults, and every flag reaches its field."""
    import fimvision.curation.flowcam as flowcam
    from fimvision.curation.flowcam import FlowCamOptions
    from fimvision.curation.output import Summary

    calls = []

    def fake(runs, out, options):
        calls.append((runs, out, options))
        return Summary(tool="curate_flowcam", out=Path(out))

    monkeypatch.setattr(flowcam, "curate_flowcam", fake)
    main = tool("curate_flowcam")
    main(["RUN", "--out", str(tmp_path / "o")])
    assert calls[-1] == (["RUN"], str(tmp_path / "o"), FlowCamOptions())
    main(["A", "B", "--out", "o", "--overwrite", "--quiet", "--masks", "--label-csv", "l.csv", "--classification", "c",
          "--drop-unclassified", "--group-csv", "g.csv", "--instrument", "FC", "--lst-fields", "id, image_x,image_y",
          "--library-class", "file", "--skip-bad"])
    assert calls[-1][2] == FlowCamOptions(
        overwrite=True, masks=True, progress=False, label_csv="l.csv", classification="c", drop_unclassified=True,
        library_class="file", group_csv="g.csv", instrument="FC", lst_fields=("id", "image_x", "image_y"),
        skip_bad=True)
    main(["A", "--out", "o", "--label-folders", "dir", "--group-from", "run"])
    assert calls[-1][2] == FlowCamOptions(label_folders="dir", group_from="run")
    main(["A", "--out", "o", "--group", "mAb1"])
    assert calls[-1][2] == FlowCamOptions(group="mAb1")
