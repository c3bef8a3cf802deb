"""`fimvision-sfda --config FILE`: the few-shot source-free adaptation grid.

Runs methods x shots x seeds x source->target pairs under the protocol of
:class:`fimvision.data.domains.DomainDataModule` and writes ``results.csv`` (one row a run, appended as
runs finish, so an interrupted grid resumes), ``summary.csv`` and ``summary.md`` (mean ± sample std over
seeds) and ``accuracy_vs_shots.png``. The grid logic (planning, running one run, summarising) is kept
apart from the methods, which are the ordinary LightningModules of :mod:`fimvision.models.adaptation`.

The grid YAML::

    data: {root: ..., image_size: 32, in_chans: 1}     # DomainDataModule arguments shared by all runs
    pairs: [[MNIST, USPS]]                            # source, target
    seeds: [0, 1, 2]
    shots: [1, 3, 5, 10]
    source: {max_epochs: 10, per_seed: true, model: {backbone: test_resnet, lr: 0.003}}
    methods:
      source_only: {}                                 # the source model on the target test part
      ft: {class_path: FewShotFinetune, init_args: {adapt: all, steps: 1000}}
      shot: {class_path: SHOT, max_epochs: 10}        # methods without shots run once per seed
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fimvision.console import make_parser, quiet_third_party, run_main
from fimvision.errors import FimvisionError

log = logging.getLogger(__name__)

KEY = ("source", "target", "scenario", "method", "n_shot", "seed")
# results.csv columns, fixed so rows from every kind of method append to one table.
COLUMNS = (*KEY, "test_acc", "test_balanced_acc", "cpu_min", "wall_min", "n_test", "steps", "selected",
           "val_snd", "val_im")


@dataclass
class MethodSpec:
    """One method of the grid: an adaptation LightningModule (``class_path`` None: the source model itself)."""

    name: str
    class_path: str | None = None
    init_args: dict[str, Any] = field(default_factory=dict)
    max_epochs: int = 10

    def module_class(self):
        from fimvision.models import adaptation

        if self.class_path is None:
            return None
        name = self.class_path.rsplit(".", 1)[-1]
        cls = getattr(adaptation, name, None)
        if cls is None:
            raise FimvisionError(f"method '{self.name}': unknown class_path '{self.class_path}'. Use FewShotFinetune, "
                                 "SHOT, NRC or AaD (or leave it out for the source-only baseline).")
        return cls

    @property
    def uses_shots(self) -> bool:
        cls = self.module_class()
        return cls is not None and getattr(cls, "train_on", None) == "fewshot"


@dataclass
class GridConfig:
    data: dict[str, Any]
    pairs: list[tuple[str, str]]
    methods: list[MethodSpec]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    shots: list[int] = field(default_factory=lambda: [1, 3, 5, 10])
    source: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    source: str
    target: str
    scenario: str
    method: str
    n_shot: int  # 0 for methods that use no labelled target image
    seed: int

    def folder(self) -> str:
        safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in s)  # noqa: E731
        return f"{safe(self.source)}__{safe(self.target)}/{self.method}/shot{self.n_shot}_seed{self.seed}"


def load_grid(path: str | Path) -> GridConfig:
    """Read and check a grid YAML (see the module docstring)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise FimvisionError(f"cannot read grid config {path} ({err}).") from err
    unknown = set(raw) - {"data", "pairs", "methods", "seeds", "shots", "source"}
    if unknown or not {"data", "pairs", "methods"} <= set(raw):
        raise FimvisionError(f"{path}: a grid config has keys data, pairs, methods (required) and seeds, shots, "
                             f"source; unknown: {sorted(unknown)}, missing: {sorted({'data', 'pairs', 'methods'} - set(raw))}.")
    pairs = []
    for pair in raw["pairs"]:
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise FimvisionError(f"{path}: each entry of 'pairs' is [source, target], got {pair!r}.")
        pairs.append((str(pair[0]), str(pair[1])))
    methods = []
    for name, spec in (raw["methods"] or {}).items():
        spec = spec or {}
        bad = set(spec) - {"class_path", "init_args", "max_epochs"}
        if bad:
            raise FimvisionError(f"{path}: method '{name}' has unknown key(s) {sorted(bad)} "
                                 "(use class_path, init_args, max_epochs).")
        methods.append(MethodSpec(name, spec.get("class_path"), dict(spec.get("init_args") or {}),
                                  int(spec.get("max_epochs", 10))))
    config = GridConfig(dict(raw["data"]), pairs, methods, [int(s) for s in raw.get("seeds", [0, 1, 2])],
                        [int(s) for s in raw.get("shots", [1, 3, 5, 10])], dict(raw.get("source") or {}))
    for method in methods:
        method.module_class()  # fail early on a wrong class name
    return config


def plan_runs(config: GridConfig) -> list[Run]:
    """Every run of the grid: few-shot methods once per shot count, the others once (n_shot 0)."""
    scenario = str(config.data.get("scenario", "standard"))
    runs = []
    for source, target in config.pairs:
        for seed in config.seeds:
            for method in config.methods:
                for n_shot in (config.shots if method.uses_shots else [0]):
                    runs.append(Run(source, target, scenario, method.name, n_shot, seed))
    return runs


def summarise(results: pd.DataFrame, metrics: tuple[str, ...] = ("test_acc", "test_balanced_acc")) -> pd.DataFrame:
    """Mean, sample standard deviation (ddof 1) and count over seeds for each pair, method and n_shot."""
    groups = results.groupby(["source", "target", "scenario", "method", "n_shot"], sort=False)
    table = groups[list(metrics) + ["cpu_min"]].agg(["mean", "std", "count"])
    table.columns = [f"{m}_{s}" for m, s in table.columns]
    return table.reset_index()


def markdown_table(summary: pd.DataFrame, metric: str = "test_acc") -> str:
    """Rows: method (and shots); columns: source->target; cells: mean ± std in percent (n seeds)."""
    summary = summary.assign(pair=summary["source"] + " → " + summary["target"],
                             row=[m if n == 0 else f"{m} ({n}-shot)" for m, n in
                                  zip(summary["method"], summary["n_shot"], strict=True)])
    cell = [f"{100 * m:.1f} ± {100 * (s if s == s else 0):.1f} (n={int(c)})" for m, s, c in
            zip(summary[f"{metric}_mean"], summary[f"{metric}_std"], summary[f"{metric}_count"], strict=True)]
    wide = summary.assign(cell=cell).pivot(index="row", columns="pair", values="cell")
    wide = wide.reindex(list(dict.fromkeys(summary["row"])))
    cpu = summary.groupby("row", sort=False)["cpu_min_mean"].mean()
    wide["CPU min/run"] = [f"{cpu[r]:.2f}" for r in wide.index]
    header = "| method | " + " | ".join(wide.columns) + " |"
    lines = [header, "|" + "---|" * (len(wide.columns) + 1)]
    lines += [f"| {r} | " + " | ".join(str(v) for v in wide.loc[r]) + " |" for r in wide.index]
    return "\n".join(lines)


def plot_summary(summary: pd.DataFrame, path: Path, metric: str = "test_acc") -> Path | None:
    """Accuracy against shots per pair: few-shot methods as lines, the others as horizontal bands."""
    from fimvision.plots import plt, save_figure

    pairs = list(dict.fromkeys(zip(summary["source"], summary["target"], strict=True)))
    if not pairs:
        return None
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4), squeeze=False)
    for ax, (src, tgt) in zip(axes[0], pairs, strict=True):
        part = summary[(summary["source"] == src) & (summary["target"] == tgt)]
        shots = sorted(part.loc[part["n_shot"] > 0, "n_shot"].unique()) or [1]
        for method, rows in part.groupby("method", sort=False):
            mean, std = 100 * rows[f"{metric}_mean"].to_numpy(), 100 * rows[f"{metric}_std"].fillna(0).to_numpy()
            if (rows["n_shot"] > 0).all():
                ax.errorbar(rows["n_shot"], mean, yerr=std, marker="o", capsize=3, label=method)
            else:
                line = ax.axhline(mean[0], linestyle="--", label=method)
                ax.axhspan(mean[0] - std[0], mean[0] + std[0], alpha=0.15, color=line.get_color())
        ax.set_xticks(shots)
        ax.set_xlabel("labelled target images per class")
        ax.set_ylabel(f"{metric} on the target test part (%)")
        ax.set_title(f"{src} → {tgt}", fontsize=10)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


class GridRunner:
    """Runs a grid's runs one after another in this process, reusing one source model per pair (and seed)."""

    def __init__(self, config: GridConfig, out: str | Path, fast_dev_run: bool = False,
                 progress: bool = True) -> None:
        self.config, self.out, self.fast_dev_run, self.progress = config, Path(out), fast_dev_run, progress

    def datamodule(self, run: Run):
        from fimvision.data.domains import DomainDataModule

        args = {**self.config.data, "source": run.source, "target": run.target, "seed": run.seed,
                "n_shot": max(1, run.n_shot), "train_on": "auto"}
        return DomainDataModule(**args)

    def trainer(self, folder: Path, max_epochs: int, monitor: bool):
        import pytorch_lightning as pl

        callbacks = [pl.callbacks.ModelCheckpoint(dirpath=folder / "checkpoints", monitor="val_loss", mode="min",
                                                  filename="best-{step}")] if monitor else []
        return pl.Trainer(max_epochs=max_epochs, default_root_dir=folder, accelerator="auto", devices=1,
                          logger=pl.loggers.CSVLogger(folder, name="", version=""), callbacks=callbacks,
                          enable_progress_bar=False, enable_model_summary=False, fast_dev_run=self.fast_dev_run,
                          log_every_n_steps=10)

    def source_checkpoint(self, run: Run) -> Path:
        """Train (once) the source model of a run's pair and seed; ``per_seed: false`` shares seed 0's."""
        import pytorch_lightning as pl

        from fimvision.models.adaptation import SourceModel

        spec = self.config.source
        seed = run.seed if spec.get("per_seed", True) else self.config.seeds[0]
        folder = self.out / "sources" / Run(run.source, run.target, run.scenario, "source", 0, seed).folder()
        done = folder / "source.ckpt"
        if done.is_file():
            return done
        pl.seed_everything(seed, workers=True)
        dm = self.datamodule(Run(run.source, run.target, run.scenario, "source", 0, seed))
        model = SourceModel(num_classes=dm.num_classes, class_names=dm.classes, in_chans=dm.in_chans,
                            img_size=dm.image_size, **spec.get("model", {}))
        trainer = self.trainer(folder, int(spec.get("max_epochs", 10)), monitor=True)
        start = time.process_time()
        trainer.fit(model, dm)
        if self.fast_dev_run:  # no checkpoint was written: keep the (one-step) model itself
            trainer.save_checkpoint(done)
        else:  # the epoch with the lowest source validation loss
            shutil.copyfile(trainer.checkpoint_callback.best_model_path, done)
        (folder / "source.json").write_text(json.dumps({"cpu_min": (time.process_time() - start) / 60}))
        return done

    def run(self, run: Run) -> dict[str, Any]:
        """One run: adapt (or not) and evaluate on the target test part; returns the results row."""
        import pytorch_lightning as pl

        method = next(m for m in self.config.methods if m.name == run.method)
        checkpoint = self.source_checkpoint(run)
        folder = self.out / "runs" / run.folder()
        pl.seed_everything(run.seed, workers=True)
        dm = self.datamodule(run)
        cls = method.module_class()
        start, wall = time.process_time(), time.perf_counter()
        extra: dict[str, Any] = {}
        if cls is None:
            from fimvision.models.adaptation import SourceModel

            model = SourceModel.load_from_checkpoint(checkpoint, map_location="cpu")
            trainer = self.trainer(folder, 1, monitor=False)
            ckpt = None
        else:
            model = cls(source_checkpoint=str(checkpoint), num_classes=dm.num_classes, class_names=dm.classes,
                        in_chans=dm.in_chans, img_size=dm.image_size, **method.init_args)
            few_shot = getattr(cls, "train_on", None) == "fewshot"
            trainer = self.trainer(folder, method.max_epochs, monitor=few_shot)
            trainer.fit(model, dm)
            extra = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("val_snd", "val_im")}
            ckpt = None if self.fast_dev_run else "best"
            if ckpt and not trainer.checkpoint_callback.best_model_path:
                ckpt = "last"
            extra["selected"] = Path(trainer.checkpoint_callback.best_model_path or "").name if not self.fast_dev_run else ""
            extra["steps"] = trainer.global_step
        metrics = trainer.test(model, dm, ckpt_path=ckpt, verbose=False)[0]
        return {**run.__dict__, "test_acc": metrics["test_acc"], "test_balanced_acc": metrics["test_balanced_acc"],
                "cpu_min": (time.process_time() - start) / 60, "wall_min": (time.perf_counter() - wall) / 60,
                "n_test": len(dm.split.test), **extra}

    def run_all(self, runs: list[Run]) -> pd.DataFrame:
        from tqdm.auto import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        results_path = self.out / "results.csv"
        done = pd.read_csv(results_path, dtype={"source": str, "target": str}) if results_path.is_file() else pd.DataFrame()
        finished = {tuple(str(v) for v in row) for row in done[list(KEY)].itertuples(index=False)} if len(done) else set()
        todo = [r for r in runs if tuple(str(getattr(r, k)) for k in KEY) not in finished]
        if len(todo) < len(runs):
            log.info("%s: %d of %d runs already done, running %d", results_path, len(runs) - len(todo), len(runs), len(todo))
        for run in tqdm(todo, desc="sfda grid", unit="run", disable=not self.progress):
            row = self.run(run)
            pd.DataFrame([row]).reindex(columns=list(COLUMNS)).to_csv(results_path, mode="a", header=not results_path.is_file(), index=False)
            log.info("%s: test_acc %.4f (%.2f CPU min)", run.folder(), row["test_acc"], row["cpu_min"])
        results = pd.read_csv(results_path, dtype={"source": str, "target": str})
        wanted = {tuple(str(getattr(r, k)) for k in KEY) for r in runs}
        return results[[tuple(str(v) for v in row) in wanted for row in results[list(KEY)].itertuples(index=False)]]


def write_report(results: pd.DataFrame, out: Path) -> str:
    summary = summarise(results)
    summary.to_csv(out / "summary.csv", index=False, float_format="%.5g")
    table = markdown_table(summary)
    (out / "summary.md").write_text("# Few-shot source-free adaptation: accuracy on the target test part\n\n"
                                    "Mean ± sample std over seeds (n); protocol: docs/sfda.md.\n\n" + table + "\n")
    plot_summary(summary, out / "accuracy_vs_shots.png")
    return table


def run(argv: list[str] | None = None) -> int:
    parser = make_parser("fimvision-sfda", __doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="grid YAML (e.g. configs/sfda/grid/mnist_usps.yaml)")
    parser.add_argument("--out", required=True, help="folder for results.csv, summary.md and the runs")
    parser.add_argument("--methods", nargs="+", help="run only these methods (names in the config)")
    parser.add_argument("--shots", nargs="+", type=int, help="override the config's shots")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the config's seeds")
    parser.add_argument("--root", help="override data.root (the .mat file, dataset or domains folder)")
    parser.add_argument("--fast-dev-run", action="store_true", help="one batch per run: check the grid runs")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("fimvision").setLevel(logging.INFO)
    os.environ.setdefault("WANDB_MODE", "disabled")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    config = load_grid(args.config)
    if args.methods:
        missing = sorted(set(args.methods) - {m.name for m in config.methods})
        if missing:
            raise FimvisionError(f"--methods {missing} are not in {args.config} "
                                 f"({[m.name for m in config.methods]}).")
        config.methods = [m for m in config.methods if m.name in args.methods]
    config.shots = args.shots or config.shots
    config.seeds = args.seeds or config.seeds
    if args.root:
        config.data["root"] = args.root
    out = Path(args.out)
    results = GridRunner(config, out, fast_dev_run=args.fast_dev_run).run_all(plan_runs(config))
    print(write_report(results, out))
    print(f"\nresults: {out / 'results.csv'}\nsummary: {out / 'summary.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `fimvision-sfda` console script; returns its exit status (0, 2 bad input, 130, 1)."""
    quiet_third_party()
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
