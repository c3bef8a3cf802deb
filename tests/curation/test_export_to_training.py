"""End to end on known truth: synthetic particles -> VisualSpreadsheet-style export -> curate -> train.

The export is what ``tools/make_synthetic.py --format flowcam`` writes; the dataset goes through the
real ``fimvision fit`` CLI (in this process, to save its import time) with ``fast_dev_run``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from fimvision.curation.flowcam import FlowCamOptions, curate_flowcam
from fimvision.curation.flowcam_writer import write_flowcam_runs

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # the CLI's imports and one training step: 20-50 s on 2 shared cores
def test_flowcam_export_curate_and_fit(tmp_path, tool, capsys):
    from fimvision.data.synthetic import SyntheticConfig, iter_particles

    config = SyntheticConfig(antibodies=3, per_class=16, particles_per_vial=8, seed=0)
    export = write_flowcam_runs(tmp_path / "export", iter_particles(config), progress=False)
    runs = sorted(p for p in export.iterdir() if p.is_dir())
    assert len(runs) == 12  # 3 antibodies x 2 classes x 2 vials: one run a vial

    summary = curate_flowcam(runs, tmp_path / "dataset", FlowCamOptions(group_csv=export / "runs.csv", progress=False))
    assert summary.written == 96 and summary.classes == {"heat": 48, "mechanical": 48}
    manifest = pd.read_csv(tmp_path / "dataset" / "manifest.csv", keep_default_na=False)
    assert sorted(manifest["group"].unique()) == ["ab1", "ab2", "ab3"] and manifest["sample"].nunique() == 12

    from fimvision.cli import build_cli

    out = tmp_path / "runs"
    cli = build_cli(["fit", "--config", str(REPO / "configs" / "supervised" / "resnet18_color.yaml"),
                f"--data.init_args.root={tmp_path / 'dataset'}", "--trainer.fast_dev_run=true",
                f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
                "--data.init_args.image_size=32", "--data.init_args.batch_size=8", "--data.init_args.num_workers=0",
                "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert math.isfinite(float(cli.trainer.callback_metrics["val_loss"]))


def test_make_synthetic_format_flowcam(tool, tmp_path, capsys):
    main = tool("make_synthetic")  # the --format flowcam option of helper-1's script
    assert main(["--out", str(tmp_path / "fc"), "--antibodies", "1", "--per-class", "4", "--particles-per-vial", "4",
                 "--format", "flowcam", "--no-progress"]) == 0
    assert "FlowCam run exports" in capsys.readouterr().out
    runs = pd.read_csv(tmp_path / "fc" / "runs.csv")
    assert runs["run"].tolist() == ["ab1-heat-v1", "ab1-heat-v2", "ab1-mechanical-v1", "ab1-mechanical-v2"]
    assert set(runs["group"]) == {"ab1"}
    summary = curate_flowcam([tmp_path / "fc" / r for r in runs["run"]], tmp_path / "ds",
                             FlowCamOptions(group_csv=tmp_path / "fc" / "runs.csv", progress=False))
    assert summary.classes == {"heat": 4, "mechanical": 4}
