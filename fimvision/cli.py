"""`fimvision fit|validate|test|predict --config FILE`: the Lightning CLI over fimvision's modules.

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
import difflib
import logging
import re
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from jsonargparse import DefaultHelpFormatter, Namespace
from pytorch_lightning.callbacks.progress import ProgressBar
from pytorch_lightning.cli import LightningCLI, SaveConfigCallback

import fimvision.data.datamodule  # noqa: F401  (registers the data modules for short class names)
import fimvision.data.domains  # noqa: F401  (registers DomainDataModule)
import fimvision.models.adaptation  # noqa: F401  (registers SourceModel, FewShotFinetune, SHOT, NRC, AaD)
import fimvision.models.classifier  # noqa: F401  (registers the models for short class names)
import fimvision.models.ssl  # noqa: F401  (registers SimCLR, MoCo, BYOL, DINO and SSLDataModule)
import fimvision.models.stacking  # noqa: F401  (registers StackedClassifier)
import fimvision.models.trees  # noqa: F401  (registers BoostedTrees)
from fimvision.callbacks import EpochLines, RunGuard
from fimvision.checkpoints import RunCheckpoint, read_checkpoint, run_folder_of
from fimvision.console import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USER_ERROR,
    one_line,
    quiet_third_party,
    user_error_in,
)
from fimvision.errors import CheckpointError, ConfigError
from fimvision.loggers import RunCSVLogger
from fimvision.prediction import PredictionWriter
from fimvision.tracking import WandbTracking

__all__ = ["FimvisionCLI", "RunCheckpoint", "RunCSVLogger", "build_cli", "fit_and_test", "main"]

# Model arguments that come from the data module (links): after instantiation they must match the checkpoint's
# (the error names the data setting that fits it).
CHECKPOINT_CONTRACT = ("num_classes", "in_chans", "class_names", "img_size", "feature_names", "num_features")
# Model arguments that say how to evaluate, not what was trained, are each model class's ClassVar
# `evaluation_hparams`. With --ckpt_path, every other model argument is the checkpoint's: a command that sets one
# to another value is refused (see FimvisionCLI._check_given_options).
# Model arguments that only say where starting weights come from: a full checkpoint (--ckpt_path)
# supersedes them, so they are not loaded again (no hub download, no need to keep the files).
STARTING_WEIGHTS = {"pretrained": False, "weights": None, "backbone_checkpoint": None}
# Starting-weight arguments a checkpoint makes moot without clearing them (the adaptation models read the
# source model's settings from it); neither applied nor refused with --ckpt_path.
MOOT_WITH_CHECKPOINT = (*STARTING_WEIGHTS, "source_checkpoint")
# Trainer arguments whose int means batches and float a fraction: Lightning annotates them float-first,
# so "1" would become 1.0 (all batches).
INT_OR_FRACTION = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                   "overfit_batches", "val_check_interval")
# Options that moved: where a config or command line that uses the old place should look now.
MOVED_OPTIONS = {
    "fewshot_batch_size": "--data.init_args.fewshot_batch_size (a loader setting of DomainDataModule)",
    "val_every": "--data.init_args.fewshot_batches (few-shot batches between validations, on DomainDataModule)",
}
# Loggers whose folder is save_dir/name/version and that fimvision can point at an existing run folder.
FOLDER_LOGGERS = ("RunCSVLogger", "CSVLogger", "TensorBoardLogger")

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


# The parsers of the CLI being built, for close-match suggestions when parsing fails.
_PARSERS: list[argparse.ArgumentParser] = []


class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the description and examples kept as written."""


class RunConfigSaver(SaveConfigCallback):
    """Saves the resolved config in the run's folder, never over an earlier one: ``config.yaml`` for a new
    fit, ``config_resume.yaml`` for a resumed one, ``config_test.yaml`` (``_validate``, ``_predict``) for
    evaluations; numbered (``config_test_2.yaml``) when the name is taken."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        stage = str(getattr(stage, "value", stage))
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        resumed = stage == "fit" and bool(self.config.get("ckpt_path"))
        stem = "config" if stage == "fit" and not resumed else f"config_{'resume' if resumed else stage}"
        name, n = f"{stem}.yaml", 2
        if trainer.is_global_zero:
            while (log_dir / name).exists():
                name, n = f"{stem}_{n}.yaml", n + 1
        self.config_filename = trainer.strategy.broadcast(name)
        self.path = log_dir / self.config_filename
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Rank 0 only: no collective calls here (trainer.log_dir would be one).
        # The file goes with the W&B run too (the run config already holds its values).
        path = self.path
        for run in WandbTracking.runs(trainer):
            run.save(str(path), base_path=str(path.parent), policy="now")


def _close(word: str, options: list[str]) -> str:
    match = difflib.get_close_matches(word, options, n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(match)}?" if match else ""


def _class_options(class_path: str) -> list[str]:
    """The init arguments a class accepts (through **kwargs to its bases too), as jsonargparse sees them."""
    from jsonargparse import ArgumentParser
    from jsonargparse._typehints import resolve_class_path_by_name

    try:
        module, _, name = resolve_class_path_by_name(pl.LightningModule, class_path).rpartition(".")
        cls = getattr(__import__(module, fromlist=[name]), name)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "x", fail_untyped=False)
        return [a.dest.removeprefix("x.") for a in parser._actions if a.dest.startswith("x.")]
    except Exception:  # a suggestion is a courtesy; never fail the error message on it
        return []


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


def _plain(value: Any) -> Any:
    """``value`` as plain data for comparing a given option with a checkpoint's (namespaces and tuples unwrapped)."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _show(value: Any) -> str:
    """A value as a user would type it on the command line."""
    import json

    return value if isinstance(value, str) else json.dumps(_plain(value))


def _type_name(text: str) -> str:
    """'<class 'float'>' -> 'a float'; "typing.Literal['a', 'b']" -> "one of 'a', 'b'"."""
    plain = re.fullmatch(r"<class '(?:builtins\.)?(\w+)'>", text)
    if plain:
        return f"a{'n' if plain.group(1)[0] in 'aeiou' else ''} {plain.group(1)}"
    literal = re.fullmatch(r"typing\.Literal\[(.+)\]", text)
    return f"one of {literal.group(1)}" if literal else text


def describe_parse_error(err: BaseException, parser: argparse.ArgumentParser | None) -> str:
    """One line for a jsonargparse error: the dotted option, what is wrong with it, and a close match."""
    messages = []
    cause: BaseException | None = err
    while cause is not None and len(messages) < 20:
        messages.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    text = "\n".join(messages)
    keys = list(dict.fromkeys(re.findall(r'Parser key "([^"]+)"', text)))
    class_path = re.search(r"Problem with given class_path '([^']+)'", text)
    unknown = re.search(r"Option '([^']+)' is not accepted", text)
    key = ".".join(keys)
    if class_path and keys:
        key = f"{keys[0]}.init_args" + (f".{keys[1]}" if len(keys) > 1 else "")
    if unknown:
        option = unknown.group(1)
        where = f"--{key}.{option}" if key else f"--{option}"
        cls = class_path.group(1).rsplit(".", 1)[-1] if class_path else "this section"
        if option in MOVED_OPTIONS:
            return f"{where}: {cls} has no argument '{option}' any more; it moved to {MOVED_OPTIONS[option]}."
        hint = _close(option, _class_options(class_path.group(1))) if class_path else ""
        return f"{where}: {cls} has no argument '{option}'.{hint}"
    unrecognized = re.search(r"[Uu]nrecognized arguments: (.+)", text)
    if unrecognized:
        given = unrecognized.group(1).split()[0].split("=")[0]
        options = [o for p in ([parser] if parser else _PARSERS) for a in p._actions for o in a.option_strings]
        return (f"unknown option {given}.{_close(given, sorted(set(options)))} `fimvision fit --help` lists the "
                "options.")
    expected = re.search(r"Expected a (.+?)\. Got value: (.+)", text)
    if expected:
        return f"--{key}: expected {_type_name(expected.group(1))}, got {expected.group(2).strip()!r}."
    last = [line.strip() for line in messages[-1].splitlines() if line.strip()]
    return (f"--{key}: " if key else "") + (last[0] if last else one_line(err))


class FimvisionCLI(LightningCLI):
    """LightningCLI with fimvision's data-to-model links, checkpoint checks and one folder per run."""

    checkpoint: dict[str, Any] | None = None
    _resume_point: tuple[int, int] | None = None
    _args: Any = None

    def init_parser(self, **kwargs: Any):
        # Errors are raised, not printed with 50 lines of usage: `main` turns them into one line.
        kwargs.setdefault("exit_on_error", False)
        parser = super().init_parser(**kwargs)
        parser.allow_abbrev = False  # `--trainer.max_epoch` must not silently mean max_epochs
        _PARSERS.append(parser)
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.classes", "model.init_args.class_names", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.init_args.in_chans", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.init_args.img_size", apply_on="instantiate")
        parser.link_arguments("data.num_features", "model.init_args.num_features", apply_on="instantiate")
        parser.link_arguments("data.feature_names", "model.init_args.feature_names", apply_on="instantiate")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(RunGuard, "run_guard")
        parser.add_lightning_class_args(WandbTracking, "wandb")
        for name in INT_OR_FRACTION:
            action = parser._option_string_actions.get(f"--trainer.{name}")
            if action is not None and hasattr(action, "_typehint"):
                action._typehint = int | float | None

    @property
    def active_config(self):
        """The config of the subcommand being run (the whole config when run=False)."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def parse_arguments(self, parser, args) -> None:
        # Kept to tell the options the command gives from the defaults it leaves (see _given_model_args).
        self._args = sys.argv[1:] if args is None else args
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path:
            return
        self.checkpoint = read_checkpoint(path)
        # Lightning puts the checkpoint's hyper-parameters over the command's model options. Evaluation options
        # the command gives are re-applied (`test --model.init_args.tta=true` on a model trained without it);
        # any other model option the command gives must agree with the checkpoint (refused otherwise).
        given, evaluation = self._check_given_options(subcommand, path)
        try:
            super()._parse_ckpt_path()
        except argparse.ArgumentError as err:
            raise CheckpointError(f"checkpoint {path} was saved by a model these settings cannot rebuild "
                                  f"({describe_parse_error(err, None)}). Give the config it was trained with.") from err
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

    def _check_given_options(self, subcommand: str, path: str) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The model options this command gives (in its config files or on its command line) and the model's
        evaluation-time option names. Raises a ConfigError naming each given option that would change what the
        checkpoint holds: its class, or any argument other than the evaluation-time ones."""
        model = self.config[subcommand].get("model")
        saved = self._checkpoint_hparams()
        if not isinstance(model, Namespace) or not saved:
            return {}, ()
        class_path = str(model.get("class_path") or "")
        evaluation = tuple(getattr(_model_class(class_path), "evaluation_hparams", ()))
        run = run_folder_of(path)
        config = f"{run / 'config.yaml'}" if run is not None else "the config it was trained with"
        saved_class = saved.get("_class_path")
        if saved_class and class_path and saved_class != class_path:
            raise ConfigError(
                f"--model: checkpoint {path} holds a {saved_class.rsplit('.', 1)[-1]}, but this command gives a "
                f"{class_path.rsplit('.', 1)[-1]}. Give {config} as --config, or another checkpoint.")
        given = self._given_model_args(subcommand, model)
        fixed = set(evaluation) | set(MOOT_WITH_CHECKPOINT) | set(CHECKPOINT_CONTRACT)
        wrong = {k: v for k, v in given.items() if k not in fixed and k in saved and _plain(v) != _plain(saved[k])}
        if wrong:
            details = "; ".join(f"--model.init_args.{k}={_show(v)} given, the checkpoint has {_show(saved[k])}"
                                for k, v in wrong.items())
            accepted = model.get("init_args") or Namespace()
            options = [f"--model.init_args.{k}" for k in evaluation if k in accepted]
            raise ConfigError(
                f"checkpoint {path} fixes the trained model, and this command changes it: {details}. Leave "
                f"{'it' if len(wrong) == 1 else 'them'} out (of the command line and the config files: the "
                f"checkpoint's values are used) or give {config} as --config. With a checkpoint only evaluation "
                f"options apply: {', '.join(options) + ' and ' if options else ''}the data, trainer and output "
                "options.")
        return given, evaluation

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
        # Lightning's bar redraws itself with carriage returns: in a log file (stdout not a terminal: sweep agents,
        # study workers, `> log`) every update becomes text. There, one line per epoch instead.
        given = config.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        has_bar = any(isinstance(c, ProgressBar) for c in [*given, *callbacks])
        if config.get("enable_progress_bar") is not False and not has_bar and not _is_terminal(sys.stdout):
            callbacks = [*callbacks, EpochLines()]
        return super()._instantiate_trainer(config, callbacks)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        # The data-model contract: the data module serves what the model trains on (models/base.py).
        if hasattr(self.datamodule, "serve") and hasattr(self.model, "train_on"):
            self.datamodule.serve(self.model.train_on)
        self._check_checkpoint_fits()
        self._add_wandb_logger()
        if self._resume_point is not None:
            for logger in self.trainer.loggers:
                if isinstance(logger, RunCSVLogger):
                    logger.drop_rows_after(*self._resume_point)

    def resolved_config(self) -> dict:
        """The run's whole config as plain data (what config.yaml holds)."""
        import yaml

        parser = self._parser(self.subcommand)
        return yaml.safe_load(parser.dump(self.active_config, skip_none=False, skip_link_targets=False))

    def _add_wandb_logger(self) -> None:
        """W&B joins the run's loggers when tracking is on, writing into the run's folder."""
        tracking = next((cb for cb in self.trainer.callbacks if isinstance(cb, WandbTracking)), None)
        if tracking is None or not tracking.enabled or self.trainer.fast_dev_run:
            return
        logger = tracking.make_logger(self.resolved_config(), self.trainer.log_dir or self.trainer.default_root_dir)
        self.trainer.loggers = [*self.trainer.loggers, logger]

    def _check_checkpoint_fits(self) -> None:
        saved = self._checkpoint_hparams()
        if not saved:
            return
        now = dict(self.model.hparams)
        wrong = [k for k in CHECKPOINT_CONTRACT if k in saved and k in now and saved[k] != now[k]]
        if wrong:
            details = "; ".join(f"{k}: checkpoint {saved[k]!r}, now {now[k]!r}" for k in wrong)
            hints = [h for h in dict.fromkeys(self._fitting_setting(k, saved[k]) for k in wrong) if h]
            raise CheckpointError(
                f"checkpoint {self.active_config.ckpt_path} does not fit this data: {details}. "
                + (f"Settings that fit it: {' '.join(hints)}; or use another checkpoint."
                   if hints else "Use the data settings it was trained with, or another checkpoint."))

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        finally:  # a W&B run ends with its command (in-process callers run many commands in one process)
            WandbTracking.finish(self.trainer)

    def before_predict(self) -> None:
        # Refuse to write over earlier predictions before any image is decoded.
        for callback in self.trainer.callbacks:
            if isinstance(callback, PredictionWriter):
                callback.check_output(self.trainer)

    def _fitting_setting(self, key: str, value: Any) -> str:
        """The data setting that gives the model argument ``key`` the checkpoint's ``value``."""
        args = self.active_config.data.get("init_args", {})
        if key == "img_size":
            return f"--data.init_args.image_size={value}"
        if key == "feature_names":
            return f"--data.init_args.features=[{','.join(value or [])}]" if value else "--data.init_args.features=null"
        if key in ("class_names", "num_classes"):
            saved = self._checkpoint_hparams().get("class_names")
            return f"--data.init_args.classes=[{','.join(saved)}]" if saved else ""
        if key == "in_chans":
            if "modality" in args and "mono_channels" in args:
                return ("--data.init_args.modality=color" if value == 3 and args.get("modality") == "mono"
                        and args.get("mono_channels") != 3 else
                        "--data.init_args.modality=mono --data.init_args.mono_channels=1" if value == 1 else
                        "--data.init_args.mono_channels=3")
            if "channels" in args:
                return f"--data.init_args.channels={value}"
        return ""


class _ParseOnlyCLI(FimvisionCLI):
    """The CLI's parser and checks of keys and types, instantiating nothing."""

    def _parse_ckpt_path(self) -> None:
        pass

    def _set_seed(self) -> None:
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
    _PARSERS.clear()
    try:
        return _ParseOnlyCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True,
                             subclass_mode_data=True, run=False, save_config_callback=None,
                             args=[str(a) for a in args]).config
    except argparse.ArgumentError as err:
        user = user_error_in(err)
        raise ConfigError(one_line(user) if user else describe_parse_error(err, None)) from err


def build_cli(args: list[str] | None = None, *, run: bool = True) -> FimvisionCLI:
    """The `fimvision` CLI on ``args`` (default: the command line); ``run=False`` (no subcommand) only builds
    the trainer, model and data module, for programs that drive them (the demo, benchmarks)."""
    argv = sys.argv
    _PARSERS.clear()
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


def fit_and_test(args: list[str]) -> tuple[dict[str, float], Path, FimvisionCLI]:
    """`fimvision fit ARGS` then `test` on the best checkpoint, in this process (the demo drives several runs
    without paying the imports again). Returns the test metrics, the run folder and the CLI."""
    cli = build_cli(args, run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    metrics = dict(cli.trainer.test(cli.model, cli.datamodule, ckpt_path="best", verbose=False)[0])
    return metrics, Path(cli.trainer.log_dir or cli.trainer.default_root_dir), cli


def main(args: list[str] | None = None) -> int:
    """Run the CLI on ``args`` (default: the command line) and return the exit status (see the module doc)."""
    logging.basicConfig(format="%(message)s")
    logging.getLogger("fimvision").setLevel(logging.INFO)
    quiet_third_party()
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
    except argparse.ArgumentError as err:
        user = user_error_in(err)
        print(f"error: {one_line(user) if user else describe_parse_error(err, None)}", file=sys.stderr)
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
