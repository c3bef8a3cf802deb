"""`fimvision fit|validate|test|predict --config FILE`: the Lightning CLI over fimvision's modules, and the
functions other programs (the demo, studies, efficiency measurements, the baseline) run it through:
:func:`build_cli`, :func:`parse_config` and :func:`fit_and_test`.

Model and data are given in subclass mode (``class_path`` + ``init_args``; short class names
resolve). The model's number of classes, class names, input channels and image size follow the data
module, so a modality or class list is set once, on the data.

Every run writes into its own folder (the logger's ``version_N``, claimed atomically), and ``test``,
``predict`` or a resumed ``fit`` on a run's checkpoint write into that run's folder. With ``--ckpt_path`` the
checkpoint fixes the model: the command's evaluation options (``tta``, ``calibrate``, ...) and its data, trainer
and output options apply; a different value for any other model option is refused, never silently replaced. When
stdout is not a terminal, the progress bar becomes one line per epoch. Exit status: 0
success, 2 bad input (one line on stderr), 130 interrupted, 1 internal error (traceback).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml
from jsonargparse import DefaultHelpFormatter, Namespace
from pytorch_lightning.callbacks.progress import ProgressBar
from pytorch_lightning.cli import LightningCLI

import fimvision.data.datamodule  # noqa: F401  (registers the data modules for short class names)
import fimvision.data.domains  # noqa: F401  (registers DomainDataModule)
import fimvision.models.adaptation  # noqa: F401  (registers SourceModel, FewShotFinetune, SHOT, NRC, AaD)
import fimvision.models.classifier  # noqa: F401  (registers the models for short class names)
import fimvision.models.ssl  # noqa: F401  (registers SimCLR, MoCo, BYOL, DINO and SSLDataModule)
import fimvision.models.stacking  # noqa: F401  (registers StackedClassifier)
import fimvision.models.trees  # noqa: F401  (registers BoostedTrees)
from fimvision.callbacks import EpochLines, RunGuard
from fimvision.checkpoints import (
    STARTING_WEIGHTS,
    RunCheckpoint,
    check_checkpoint_fits,
    read_checkpoint,
    refuse_model_changes,
    run_folder_of,
)
from fimvision.console import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USER_ERROR,
    describe_parse_error,
    one_line,
    prepare_script,
    user_error_in,
)
from fimvision.errors import CheckpointError, ConfigError
from fimvision.loggers import RunConfigSaver, RunCSVLogger
from fimvision.prediction import PredictionWriter, TestOutputWriter
from fimvision.tracking import WandbTracking

__all__ = ["FimvisionCLI", "FitAndTest", "RunCheckpoint", "RunCSVLogger", "build_cli", "describe_parse_error",
           "fit_and_test", "main", "parse_config"]

# Trainer arguments whose int means batches and float a fraction: Lightning annotates them float-first,
# so "1" would become 1.0 (all batches).
INT_OR_FRACTION = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                   "overfit_batches", "val_check_interval")
# Loggers whose folder is save_dir/name/version and that fimvision can point at an existing run folder.
FOLDER_LOGGERS = ("RunCSVLogger", "CSVLogger", "TensorBoardLogger")
# The links from the data module to the model: data attribute -> model init argument.
DATA_TO_MODEL = {"num_classes": "num_classes", "classes": "class_names", "in_chans": "in_chans",
                 "image_size": "img_size", "num_features": "num_features", "feature_names": "feature_names"}

DESCRIPTION = """\
fimvision: train, evaluate and apply image classifiers for flow imaging microscopy (FIM) pictures of
subvisible particles (supervised, self-supervised and few-shot adaptation models, any timm backbone).
Each run writes its config, checkpoints and metrics into its own folder."""

EPILOG = """\
examples:
  fimvision fit --config configs/supervised/resnet18_color.yaml --data.init_args.root=datasets/synthetic
  fimvision test --config configs/supervised/resnet18_color.yaml \\
      --ckpt_path=runs/supervised/lightning_logs/version_0/checkpoints/last.ckpt
  fimvision predict --config configs/supervised/resnet18_color.yaml --data.init_args.root=NEW_SAMPLES \\
      --ckpt_path=runs/supervised/lightning_logs/version_0/checkpoints/last.ckpt

`fimvision fit --help` lists every option; `fimvision fit --config FILE --print_config` shows the result.
exit status: 0 success, 2 bad input or settings (one line on stderr), 130 interrupted, 1 internal error."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the description and examples kept as written."""


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams (pytest's capture, a closed pipe)
        return False


def _model_class(class_path: str) -> type | None:
    """The model class a resolved ``class_path`` names, or None."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(__import__(module, fromlist=[name]), name) if module else None
    except (ImportError, AttributeError):
        return None


class FimvisionCLI(LightningCLI):
    """LightningCLI with fimvision's data-to-model links, checkpoint checks and one folder per run."""

    checkpoint: dict[str, Any] | None = None
    _resume_point: tuple[int, int] | None = None
    _args: Any = None

    def init_parser(self, **kwargs: Any):
        # Errors are raised, not printed with 50 lines of usage: `parse_arguments` turns them into one line.
        kwargs.setdefault("exit_on_error", False)
        parser = super().init_parser(**kwargs)
        parser.allow_abbrev = False  # `--trainer.max_epoch` must not silently mean max_epochs
        self._parsers = [*getattr(self, "_parsers", []), parser]
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        for data, model in DATA_TO_MODEL.items():
            parser.link_arguments(f"data.{data}", f"model.init_args.{model}", apply_on="instantiate")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(RunGuard, "run_guard")
        parser.add_lightning_class_args(WandbTracking, "wandb")
        for name in INT_OR_FRACTION:  # jsonargparse has no public way to change a parsed type
            action = parser._option_string_actions.get(f"--trainer.{name}")
            if action is not None and hasattr(action, "_typehint"):
                action._typehint = int | float | None

    @property
    def active_config(self):
        """The config of the subcommand being run (the whole config when run=False)."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def describe(self, err: BaseException) -> str:
        """One line for a parse error, an unknown option matched against this CLI's options."""
        return describe_parse_error(err, [o for p in self._parsers for a in p._actions for o in a.option_strings])

    def parse_arguments(self, parser, args) -> None:
        # Kept to tell the options the command gives from the defaults it leaves (see _given_model_args).
        self._args = sys.argv[1:] if args is None else args
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            user = user_error_in(err)
            raise ConfigError(one_line(user) if user else self.describe(err)) from err

    def _parse_ckpt_path(self) -> None:  # LightningCLI has no public hook where it loads a checkpoint's hparams
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path:
            return
        self.checkpoint = read_checkpoint(path)
        # Lightning puts the checkpoint's hyper-parameters over the command's model options. Evaluation options
        # the command gives are re-applied (`test --model.init_args.tta=true` on a model trained without it);
        # any other model option the command gives must agree with the checkpoint (refused otherwise).
        model = self.config[subcommand].get("model")
        given, evaluation = {}, ()
        if isinstance(model, Namespace) and self._checkpoint_hparams():
            class_path = str(model.get("class_path") or "")
            evaluation = tuple(getattr(_model_class(class_path), "evaluation_hparams", ()))
            given = self._given_model_args(subcommand, model)
            refuse_model_changes(path, self._checkpoint_hparams(), class_path, given, evaluation,
                                 model.get("init_args") or Namespace())
        try:
            super()._parse_ckpt_path()
        except argparse.ArgumentError as err:
            raise CheckpointError(f"checkpoint {path} was saved by a model these settings cannot rebuild "
                                  f"({self.describe(err)}). Give the config it was trained with.") from err
        for key in evaluation:
            if key in given:
                self.config[subcommand][f"model.init_args.{key}"] = given[key]

    def _given_model_args(self, subcommand: str, model: Namespace) -> dict[str, Any]:
        """The model init arguments the command itself sets, in its config files or on its command line: the
        arguments parsed again without defaults."""
        try:
            parse = self.parser.parse_object if isinstance(self._args, dict | Namespace) else self.parser.parse_args
            given = parse(self._args, defaults=False).get(f"{subcommand}.model")
        except (argparse.ArgumentError, SystemExit, TypeError):  # parsed once already; if not, judge every value
            given = model
        init = given.get("init_args") if isinstance(given, Namespace) else None
        return init.as_dict() if isinstance(init, Namespace) else {}

    def _checkpoint_hparams(self) -> dict:
        return dict((self.checkpoint or {}).get("hyper_parameters") or {})

    def before_instantiate_classes(self) -> None:
        saved = self._checkpoint_hparams()
        model = self.active_config.model.get("init_args", {})
        for key, value in STARTING_WEIGHTS.items():
            if saved and key in model:
                model[key] = value
        # A checkpoint fixes the class order: evaluate and predict in it, even on data that lacks a class
        # or has no labels at all.
        names = saved.get("class_names")
        data = self.active_config.data
        if names and "classes" in data.get("init_args", {}) and data.init_args.classes is None:
            data.init_args.classes = list(names)
        self._continue_in_run_folder()

    def _continue_in_run_folder(self) -> None:
        """Point the logger at the folder of the run whose checkpoint is given (resume, test, predict)."""
        path = self.active_config.get("ckpt_path") if self.subcommand else None
        run = run_folder_of(path) if path else None
        if run is None:
            return
        loggers = self.active_config.trainer.get("logger")
        entries = loggers if isinstance(loggers, list) else [loggers]
        for entry in entries:
            if isinstance(entry, Namespace) and entry.get("class_path", "").rsplit(".", 1)[-1] in FOLDER_LOGGERS:
                entry.init_args.save_dir = str(run.parent)
                entry.init_args.name = ""
                entry.init_args.version = run.name
                break
        else:
            return
        if self.subcommand == "fit" and self.checkpoint is not None:
            self._resume_point = (int(self.checkpoint.get("epoch", 0)), int(self.checkpoint.get("global_step", 0)))
        # Lightning warns that the checkpoint folder is not empty: here that is the point.
        warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
        logging.getLogger("fimvision").info("continuing in run folder %s", run)

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        # The model's own needs (e.g. FewShotFinetune's number of steps) reach the trainer here, visibly.
        needs = self.model.trainer_settings() if hasattr(self.model, "trainer_settings") else {}
        if needs:
            logging.getLogger("fimvision").info("%s sets the trainer's %s", type(self.model).__name__,
                                                ", ".join(f"{k}={v}" for k, v in needs.items()))
        return super().instantiate_trainer(**{**needs, **kwargs})

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> pl.Trainer:
        # (The one place that sees the configured callbacks before the trainer adds its default bar.)
        # Lightning's bar redraws itself with carriage returns: in a log file (stdout not a terminal: sweep agents,
        # study workers, `> log`) every update becomes text. There, one line per epoch instead.
        given = config.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        has_bar = any(isinstance(c, ProgressBar) for c in [*given, *callbacks])
        if config.get("enable_progress_bar") is not False and not has_bar and not _is_terminal(sys.stdout):
            callbacks = [*callbacks, EpochLines()]
        return super()._instantiate_trainer(config, [*callbacks, TestOutputWriter()])

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        # The data-model contract: the data module serves what the model trains on (models/base.py).
        if hasattr(self.datamodule, "serve") and hasattr(self.model, "train_on"):
            self.datamodule.serve(self.model.train_on)
        saved = self._checkpoint_hparams()
        if saved:
            check_checkpoint_fits(self.active_config.ckpt_path, saved, dict(self.model.hparams),
                                  self.active_config.data.get("init_args", {}))
        self._add_wandb_logger()
        if self._resume_point is not None:
            for logger in self.trainer.loggers:
                if isinstance(logger, RunCSVLogger):
                    logger.drop_rows_after(*self._resume_point)

    def resolved_config(self) -> dict:
        """The run's whole config as plain data (what config.yaml holds)."""
        parser = self._parser(self.subcommand)
        return yaml.safe_load(parser.dump(self.active_config, skip_none=False, skip_link_targets=False))

    def _add_wandb_logger(self) -> None:
        """W&B joins the run's loggers when tracking is on, writing into the run's folder."""
        tracking = next((cb for cb in self.trainer.callbacks if isinstance(cb, WandbTracking)), None)
        if tracking is None or not tracking.enabled or self.trainer.fast_dev_run:
            return
        logger = tracking.make_logger(self.resolved_config(), self.trainer.log_dir or self.trainer.default_root_dir)
        self.trainer.loggers = [*self.trainer.loggers, logger]

    def _run_subcommand(self, subcommand: str) -> None:  # after_<subcommand> hooks are skipped when it fails
        try:
            super()._run_subcommand(subcommand)
        finally:  # a W&B run ends with its command (in-process callers run many commands in one process)
            WandbTracking.finish(self.trainer)

    def before_predict(self) -> None:
        # Refuse to write over earlier predictions before any image is decoded.
        for callback in self.trainer.callbacks:
            if isinstance(callback, PredictionWriter):
                callback.check_output(self.trainer)


class _ParseOnlyCLI(FimvisionCLI):
    """The CLI's parser and checks of keys and types, instantiating nothing."""

    def _parse_ckpt_path(self) -> None:  # no public switch: parsing must not load a checkpoint
        pass

    def _set_seed(self) -> None:  # no public switch: parsing must not reseed the caller's random state
        pass

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass

    def after_instantiate_classes(self) -> None:
        pass


def parse_config(args: list[str]) -> Namespace:
    """The config `fimvision fit ARGS` would run, parsed (keys and types checked) but not instantiated.
    Raises a ConfigError with the one-line description of what is wrong."""
    return _ParseOnlyCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True,
                         subclass_mode_data=True, run=False, save_config_callback=None,
                         args=[str(a) for a in args]).config


def build_cli(args: list[str] | None = None, *, run: bool = True) -> FimvisionCLI:
    """The `fimvision` CLI on ``args`` (default: the command line); ``run=False`` (no subcommand) only builds
    the trainer, model and data module, for programs that drive them (benchmarks)."""
    argv = sys.argv
    if args is not None:  # explicit args: the caller's own command line is not ours to parse or warn about
        sys.argv = argv[:1]
    try:
        return FimvisionCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True,
                            subclass_mode_data=True, save_config_callback=RunConfigSaver,
                            parser_kwargs={"description": DESCRIPTION, "epilog": EPILOG, "prog": "fimvision",
                                           "formatter_class": HelpFormatter},
                            args=args, run=run)
    finally:
        sys.argv = argv


@dataclass
class FitAndTest:
    """What :func:`fit_and_test` ran: the fit's CLI, its run folder, the tested checkpoint (the best, else the
    last; "" when none was written) and the test metrics (empty when not tested)."""

    fit: FimvisionCLI
    folder: Path
    checkpoint: str
    test_metrics: dict[str, float]


def fit_and_test(args: list[str], *, test: bool = True) -> FitAndTest:
    """`fimvision fit ARGS`, then `fimvision test ARGS --ckpt_path=<its best, else last checkpoint>`, in this process
    (the demo and studies run many without paying the imports again)."""
    fit = build_cli(["fit", *args])
    callback = fit.trainer.checkpoint_callback
    checkpoint = (callback.best_model_path or callback.last_model_path) if callback else ""
    metrics: dict[str, float] = {}
    if test and checkpoint:
        tested = build_cli(["test", *args, f"--ckpt_path={checkpoint}"])
        metrics = {k: float(v) for k, v in tested.trainer.callback_metrics.items() if k.startswith("test_")}
    return FitAndTest(fit, Path(fit.trainer.log_dir or fit.trainer.default_root_dir), checkpoint, metrics)


def main(args: list[str] | None = None) -> int:
    """Run the CLI on ``args`` (default: the command line) and return the exit status (see the module doc)."""
    logging.basicConfig(format="%(message)s")
    logging.getLogger("fimvision").setLevel(logging.INFO)
    prepare_script()
    interrupted = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        def on_sigint(signum, frame):  # Lightning turns Ctrl-C into sys.exit(1) after a graceful stop
            interrupted.set()
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        build_cli(args)
    except SystemExit as err:  # --help, --print_config (0); Lightning after Ctrl-C (1)
        if interrupted.is_set():
            return EXIT_INTERRUPTED
        return err.code if isinstance(err.code, int) else (EXIT_OK if err.code is None else EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except argparse.ArgumentError as err:  # raised outside the parsing FimvisionCLI describes itself
        print(f"error: {describe_parse_error(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as err:
        user = user_error_in(err)
        if user is None:
            raise
        print(f"error: {one_line(user)}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
