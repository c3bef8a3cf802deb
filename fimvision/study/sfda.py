"""`fimvision-sfda --config FILE`: the few-shot source-free adaptation grid.

Runs methods x shots x seeds x source->target pairs under the protocol of
:class:`fimvision.data.domains.DomainDataModule`. Every run is an ordinary `fimvision fit` and `test`
(the same CLI code, so each run folder holds the config.yaml that repeats it) on an entry config and a
model file; its row goes to ``results.csv`` as it finishes, so an interrupted grid resumes. Then
``summary.csv`` and ``summary.md`` (mean ± sample std over seeds) and ``accuracy_vs_shots.png``.

The grid file (typed: unknown keys and wrong types are refused; paths are relative to the file)::

    config: ../mnist_usps.yaml                      # entry config: seed, trainer, data
    pairs: [[MNIST, USPS]]                          # source, target
    seeds: [0, 1, 2]
    shots: [1, 3, 5, 10]
    source: {model: ../models/source_small_cnn.yaml, args: [--trainer.max_epochs=8], per_seed: true}
    methods:
      source_only: {}                               # the source model on the target test part
      ft: {model: ../models/ft_all.yaml, args: [--model.init_args.steps=200]}
      shot: {model: ../models/shot.yaml, args: [--trainer.max_epochs=5]}   # no shots: once per seed
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fimvision.console import make_parser, one_line, quiet_third_party, run_main
from fimvision.errors import ConfigError

log = logging.getLogger(__name__)

KEY = ("source", "target", "scenario", "method", "n_shot", "seed")
# results.csv columns, fixed so rows from every kind of method append to one table.
COLUMNS = (*KEY, "test_acc", "test_balanced_acc", "test_f1_macro", "cpu_min", "wall_min", "n_test", "steps",
           "selected", "val_snd", "val_im", "run_dir")
# Every grid run is quiet and checkpoints into its own folder; the same arguments make the same `fimvision fit`.
RUN_ARGS = ("--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false")


@dataclass
class Step:
    """One kind of run of the grid.

    Args:
        model: model file (relative to the grid file); none for the source-only baseline.
        args: further `fimvision` arguments of these runs (e.g. ``--trainer.max_epochs=5``).
    """

    model: str | None = None
    args: list[str] = field(default_factory=list)


@dataclass
class SourceStep(Step):
    """The source model a pair's methods start from.

    Args:
        per_seed: train one source model per seed (otherwise the first seed's serves all).
    """

    per_seed: bool = True


@dataclass
class GridConfig:
    """A few-shot source-free adaptation grid (see the module docstring).

    Args:
        config: the entry config of every run (seed, trainer, data; relative to the grid file).
        pairs: [source, target] domains.
        source: the source model step.
        methods: name -> step (``{}``: the source-only baseline).
        seeds: seeds (of the data split, the few-shot draw and training).
        shots: labelled target images per class for few-shot methods.
    """

    config: str
    pairs: list[tuple[str, str]]
    source: SourceStep
    methods: dict[str, Step]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    shots: list[int] = field(default_factory=lambda: [1, 3, 5, 10])


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
    """Read and check a grid file; its paths come back absolute."""
    from jsonargparse import ArgumentParser

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read grid config {path} ({one_line(err)}).") from err
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--grid", type=GridConfig)
    try:
        config = parser.instantiate_classes(parser.parse_object({"grid": raw})).grid
    except Exception as err:  # jsonargparse reports unknown keys and wrong types
        from fimvision.cli import describe_parse_error

        raise ConfigError(f"{path}: {describe_parse_error(err, None)}") from err
    here = path.resolve().parent
    config.config = str(_existing(here / config.config, path, "config"))
    for name, step in [("source", config.source), *config.methods.items()]:
        if step.model:
            step.model = str(_existing(here / step.model, path, f"{name}.model"))
    for name, step in config.methods.items():
        method_class(step, name)  # fail early on a wrong class name
    return config


def _existing(file: Path, grid: Path, key: str) -> Path:
    if not file.is_file():
        raise ConfigError(f"{grid}, key '{key}': {file} does not exist (paths are relative to the grid file).")
    return file


def method_class(step: Step, name: str) -> type | None:
    """The LightningModule class a step's model file names (None for the source-only baseline)."""
    if step.model is None:
        return None
    import pytorch_lightning as pl
    from jsonargparse._typehints import resolve_class_path_by_name

    import fimvision.models.adaptation  # noqa: F401  (registers the short names)

    class_path = (yaml.safe_load(Path(step.model).read_text()) or {}).get("class_path", "")
    try:
        module, _, cls = resolve_class_path_by_name(pl.LightningModule, class_path).rpartition(".")
        return getattr(__import__(module, fromlist=[cls]), cls)
    except Exception as err:
        raise ConfigError(f"method '{name}': unknown class_path '{class_path}' in {step.model}. Use FewShotFinetune, "
                          "SHOT, NRC or AaD (or no model for the source-only baseline).") from err


def plan_runs(config: GridConfig) -> list[Run]:
    """Every run of the grid: few-shot methods once per shot count, the others once (n_shot 0)."""
    data = (yaml.safe_load(Path(config.config).read_text()) or {}).get("data", {})
    if isinstance(data, str):
        data = yaml.safe_load((Path(config.config).parent / data).read_text())
    scenario = str((data.get("init_args") or {}).get("scenario", "standard"))
    runs = []
    for source, target in config.pairs:
        for seed in config.seeds:
            for name, step in config.methods.items():
                few_shot = getattr(method_class(step, name), "train_on", None) == "fewshot"
                for n_shot in (config.shots if few_shot else [0]):
                    runs.append(Run(source, target, scenario, name, n_shot, seed))
    return runs


def summarise(results: pd.DataFrame, metrics: tuple[str, ...] = ("test_acc", "test_balanced_acc")) -> pd.DataFrame:
    """Mean, sample standard deviation (ddof 1) and count over seeds for each pair, method and n_shot."""
    groups = results.groupby(["source", "target", "scenario", "method", "n_shot"], sort=False)
    table = groups[[*metrics, "cpu_min"]].agg(["mean", "std", "count"])
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
    """Runs a grid's runs one after another through the `fimvision` CLI, training one source model per pair
    (and seed)."""

    def __init__(self, config: GridConfig, out: str | Path, fast_dev_run: bool = False) -> None:
        self.config, self.out, self.fast_dev_run = config, Path(out), fast_dev_run

    def args(self, step: Step, run: Run, folder: Path) -> list[str]:
        """The `fimvision` arguments of ``run``'s ``step``, writing into ``folder``."""
        args = ["--config", self.config.config, *(["--model", step.model] if step.model else []),
                f"--seed_everything={run.seed}", f"--data.init_args.source={run.source}",
                f"--data.init_args.target={run.target}", f"--data.init_args.seed={run.seed}",
                f"--data.init_args.n_shot={max(1, run.n_shot)}", f"--trainer.logger.init_args.save_dir={folder.parent}",
                "--trainer.logger.init_args.name=", f"--trainer.logger.init_args.version={folder.name}",
                f"--trainer.default_root_dir={folder}",
                *RUN_ARGS, *step.args]
        return [*args, "--trainer.fast_dev_run=true"] if self.fast_dev_run else args

    def source_checkpoint(self, run: Run) -> Path:
        """Train (once) the source model of a run's pair and seed; ``per_seed: false`` shares the first seed's."""
        from fimvision.cli import build_cli

        spec = self.config.source
        seed = run.seed if spec.per_seed else self.config.seeds[0]
        source_run = Run(run.source, run.target, run.scenario, "source", 0, seed)
        folder = self.out / "sources" / source_run.folder()
        done = folder / "source.ckpt"
        if done.is_file():
            return done
        shutil.rmtree(folder, ignore_errors=True)  # a crashed attempt
        cli = build_cli(["fit", *self.args(spec, source_run, folder)])
        best = cli.trainer.checkpoint_callback.best_model_path if cli.trainer.checkpoint_callback else ""
        if best:  # the epoch with the lowest source validation loss
            shutil.copyfile(best, done)
        else:  # fast_dev_run writes no checkpoint: keep the (one-step) model itself
            cli.trainer.save_checkpoint(done)
        return done

    def run(self, run: Run) -> dict[str, Any]:
        """One run: adapt (or not) and test on the target test part; returns the results row."""
        from fimvision.cli import build_cli

        step = self.config.methods[run.method]
        checkpoint = self.source_checkpoint(run)
        folder = self.out / "runs" / run.folder()
        shutil.rmtree(folder, ignore_errors=True)  # a crashed attempt
        start, wall = time.process_time(), time.perf_counter()
        extra: dict[str, Any] = {}
        if step.model is None:  # source-only: the source model on the target test part
            model = self.config.source.model
            cli = build_cli(["test", *self.args(Step(model, self.config.source.args), run, folder),
                             f"--ckpt_path={checkpoint}"])
        else:
            cli = build_cli(["fit", *self.args(step, run, folder), f"--model.init_args.source_checkpoint={checkpoint}"])
            trainer = cli.trainer
            extra = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("val_snd", "val_im")}
            selected = ""
            if trainer.checkpoint_callback is not None:
                selected = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
            extra.update(steps=trainer.global_step, selected=Path(selected).name)
            if self.fast_dev_run:  # no checkpoint: test the model in memory
                trainer.test(cli.model, cli.datamodule, verbose=False)
            else:
                cli = build_cli(["test", *self.args(step, run, folder), f"--ckpt_path={selected}",
                                 f"--model.init_args.source_checkpoint={checkpoint}"])
        metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
        return {**run.__dict__, **{k: metrics.get(k) for k in ("test_acc", "test_balanced_acc", "test_f1_macro")},
                "cpu_min": (time.process_time() - start) / 60, "wall_min": (time.perf_counter() - wall) / 60,
                "n_test": len(cli.datamodule.split.test), "run_dir": str(folder), **extra}

    def run_all(self, runs: list[Run]) -> pd.DataFrame:
        from tqdm.auto import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        results_path = self.out / "results.csv"
        done = pd.read_csv(results_path, dtype={"source": str, "target": str}) if results_path.is_file() else pd.DataFrame()
        finished = {tuple(str(v) for v in row) for row in done[list(KEY)].itertuples(index=False)} if len(done) else set()
        todo = [r for r in runs if tuple(str(getattr(r, k)) for k in KEY) not in finished]
        if len(todo) < len(runs):
            log.info("%s: %d of %d runs already done, running %d", results_path, len(runs) - len(todo), len(runs), len(todo))
        for run in tqdm(todo, desc="sfda grid", unit="run"):
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
    parser.add_argument("--root", help="override data.init_args.root (the .mat file, dataset or domains folder)")
    parser.add_argument("--fast-dev-run", action="store_true", help="one batch per run: check the grid runs")
    parser.add_argument("--wandb", metavar="PROJECT",
                        help="track every run in this W&B project (grouped by the grid's output folder) and log the "
                             "summary (accuracy against shots, the table) as a run of its own")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("fimvision").setLevel(logging.INFO)
    os.environ.setdefault("WANDB_MODE", "disabled")
    config = load_grid(args.config)
    if args.methods:
        missing = sorted(set(args.methods) - set(config.methods))
        if missing:
            raise ConfigError(f"--methods {missing} are not in {args.config} ({list(config.methods)}).")
        config.methods = {name: step for name, step in config.methods.items() if name in args.methods}
    config.shots = args.shots or config.shots
    config.seeds = args.seeds or config.seeds
    if args.root:
        for step in [config.source, *config.methods.values()]:
            step.args = [*step.args, f"--data.init_args.root={args.root}"]
    out = Path(args.out)
    if args.wandb:
        for step in [config.source, *config.methods.values()]:
            step.args = [*step.args, "--wandb.enabled=true", f"--wandb.project={args.wandb}", f"--wandb.group={out.name}"]
    results = GridRunner(config, out, fast_dev_run=args.fast_dev_run).run_all(plan_runs(config))
    print(write_report(results, out))
    if args.wandb:
        from fimvision.tracking import log_summary

        log_summary(f"{out.name}-summary", args.wandb, out.name, {"accuracy_vs_shots": out / "accuracy_vs_shots.png"},
                    {"summary": pd.read_csv(out / "summary.csv")}, out)
    print(f"\nresults: {out / 'results.csv'}\nsummary: {out / 'summary.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `fimvision-sfda` console script; returns its exit status (0, 2 bad input, 130, 1)."""
    quiet_third_party()
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
