"""Two-process CPU DDP (gloo) through the installed `fimvision`, one per model family: metrics that count
each validation image once, one run folder, one checkpoint set, one W&B run (rank 0), and the few-shot
sampler and MoCo's key shuffle across processes."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from fimtest import CONFIGS, ENV, exe, fast_args, read_wandb_run, run_cli

from fimvision.data.base import fewshot_sampler

DDP = ["--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2", "--config",
       CONFIGS / "loggers" / "wandb.yaml", "--trainer.log_every_n_steps=1"]
METRICS = {"supervised": ("val_acc", "val_balanced_acc", "val_f1_macro"),
           "ssl": ("val_knn_acc", "val_knn_balanced_acc", "val_knn_f1_macro"),
           "fewshot": ("val_acc", "val_balanced_acc", "val_f1_macro")}


def test_fewshot_draws_are_disjoint_shares_of_one_sequence():
    data = list(range(10))
    shares = [list(fewshot_sampler(data, 6, torch.Generator().manual_seed(3), num_replicas=2, rank=r)) for r in (0, 1)]
    whole = torch.randint(10, (12,), generator=torch.Generator().manual_seed(3)).tolist()
    assert shares == [whole[0::2], whole[1::2]] and all(len(s) == 6 for s in shares)


def ddp_fit(family: str, args: list, out, tmp_path) -> tuple:
    """Fit on two processes; then validate its last.ckpt on one process. Returns the run folder, its metrics,
    the last DDP validation row and the one-process validation metrics."""
    env = {**ENV, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path)}
    import subprocess

    result = subprocess.run([exe("fimvision"), "fit", *map(str, args), *map(str, DDP)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (out / "lightning_logs").iterdir()  # one run folder for both processes
    rows = pd.read_csv(run_dir / "metrics.csv")
    ddp = rows.dropna(subset=[METRICS[family][0]]).iloc[-1]
    single = run_cli(["validate", *args, f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                      "--trainer.logger.init_args.save_dir", tmp_path / "single"]).trainer.callback_metrics
    return run_dir, rows, ddp, single


@pytest.mark.slow
@pytest.mark.parametrize("family", ["supervised", "ssl", "fewshot"])
def test_two_process_ddp_fit(family, synthetic_root, tmp_path):
    out = tmp_path / "out"
    base = [*fast_args(synthetic_root, out), "--data.init_args.batch_size=4"]
    if family == "supervised":
        args = ["--config", CONFIGS / "supervised" / "resnet18_color.yaml", *base,
                "--model.init_args.backbone=test_resnet", "--trainer.max_epochs=2", "--trainer.limit_train_batches=3"]
    elif family == "ssl":
        args = ["--config", CONFIGS / "ssl" / "pretrain.yaml", "--model", CONFIGS / "ssl" / "models" / "moco_resnet18.yaml",
                *base, "--model.init_args.backbone=test_resnet", "--model.init_args.queue_size=16",
                "--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.check_val_every_n_epoch=1"]
    else:
        source = run_cli(["fit", "--config", CONFIGS / "sfda" / "fim_antibody.yaml", "--model",
                          CONFIGS / "sfda" / "models" / "source_small_cnn.yaml", *fast_args(synthetic_root, tmp_path / "s"),
                          "--data.init_args.source=group!=ab3", "--data.init_args.target=group=ab3",
                          "--trainer.max_epochs=1", "--trainer.limit_train_batches=2"])
        args = ["--config", CONFIGS / "sfda" / "fim_antibody.yaml", "--model", CONFIGS / "sfda" / "models" / "ft_all.yaml",
                *base, "--data.init_args.source=group!=ab3", "--data.init_args.target=group=ab3",
                f"--model.init_args.source_checkpoint={source.trainer.checkpoint_callback.last_model_path}",
                "--model.init_args.steps=6", "--data.init_args.fewshot_batches=3", "--data.init_args.n_shot=2"]
    run_dir, rows, ddp, single = ddp_fit(family, args, out, tmp_path)
    for name in METRICS[family]:  # each validation image counted once: the one-process scores exactly
        assert ddp[name] == pytest.approx(float(single[name]), abs=1e-6), name
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and len(checkpoints) <= 2  # one set, not one per process
    (wandb_run,) = list(run_dir.rglob("offline-run-*"))  # W&B from rank 0 only
    assert any(METRICS[family][0] in row for row in read_wandb_run(wandb_run)["history"])
    if family == "fewshot":  # 6 steps of 3 few-shot batches an epoch, on two processes as on one
        assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
        assert rows.dropna(subset=["val_loss"])["step"].tolist() == [2, 5]  # validation every 3 steps
