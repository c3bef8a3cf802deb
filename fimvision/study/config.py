"""A study file: stages of ordinary `fimvision` runs, each stage every combination of its named axes.

.. code-block:: yaml

    name: color_vs_mono
    stages:
      main:
        args: [--config, ../supervised/resnet18_color.yaml]    # every run of the stage
        axes:
          model:                                                # value name -> its arguments
            named: {resnet18: [], vit: [--config, ../supervised/vit_color.yaml]}
          modality: {values: [color, mono], args: ["--data.init_args.modality={}"]}
          fold: {values: [0, 1, 2], args: ["--data.init_args.split=group", "--data.init_args.fold={}"]}
          seed: {values: [0, 1, 2], args: ["--seed_everything={}", "--data.init_args.seed={}"]}

A stage may use another's checkpoints: ``needs: {ssl: pretrain}`` makes ``{ssl}`` in a run's arguments the
checkpoint of the ``pretrain`` run with the same values of the axes both stages have (runs whose arguments
do not hold ``{ssl}`` need nothing). An axis may
apply only to some runs (``when: {method: [ft]}``; elsewhere its value is empty). A run whose arguments
hold ``test-only`` is tested, not fitted (e.g. a source model on the target domain). Paths in
arguments are relative to the study file, as in LightningCLI configs; the typed file refuses unknown
keys and wrong types. ``synthetic:`` names synthetic datasets the study generates when they are missing
(folder -> :class:`~fimvision.data.synthetic.SyntheticConfig` fields; folders, like data roots, are
relative to the working directory).

The report compares the levels of axes (see :mod:`fimvision.study.report`). Axes named in ``replicates``
(default: ``seed``, ``fold``, ``split``) are the repetitions a comparison pairs on; every other axis with two
levels or more is compared, each level against the axis's first level. ``compare:`` chooses instead:

.. code-block:: yaml

    compare:
      input: features_only     # compare the levels of `input` with features_only
      model: null              # and those of `model` with its first level
    replicates: [seed, split]  # pair on the same seed and split (default: seed, fold, split)

Only the axes ``compare:`` names are then compared; each must be an axis of some stage, not a replicate,
and its reference one of its levels.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fimvision.console import describe_parse_error
from fimvision.errors import ConfigError

TEST_ONLY = "test-only"
SEED, FOLD, SPLIT = "seed", "fold", "split"
# The axes a comparison pairs on by default: repetitions of one condition, not conditions themselves.
REPLICATES = (SEED, FOLD, SPLIT)


@dataclass
class Axis:
    """One named dimension of a stage.

    Args:
        values: the axis values; each replaces ``{}`` in ``args``.
        args: argument templates for ``values``.
        named: or: value name -> that value's own arguments.
        when: apply only to runs whose other axes take these values (elsewhere the value is empty).
    """

    values: list[Any] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    named: dict[str, list[str]] = field(default_factory=dict)
    when: dict[str, list[str]] = field(default_factory=dict)

    def options(self) -> list[tuple[str, list[str]]]:
        if self.named:
            return [(str(name), list(args)) for name, args in self.named.items()]
        return [(str(value), [a.replace("{}", str(value)) for a in self.args]) for value in self.values]


@dataclass
class Stage:
    """A set of runs: every combination of its axes' values, each an ordinary `fimvision fit` then `test`.

    Args:
        args: the `fimvision` arguments every run of the stage starts with (after the subcommand).
        axes: axis name -> axis.
        needs: placeholder -> stage: ``{placeholder}`` in the arguments becomes that stage's checkpoint.
        test: test each fitted run on its best checkpoint (the last when there is no best).
    """

    args: list[str] = field(default_factory=list)
    axes: dict[str, Axis] = field(default_factory=dict)
    needs: dict[str, str] = field(default_factory=dict)
    test: bool = True


@dataclass
class StudyConfig:
    """A study (see the module docstring).

    Args:
        name: the study's name (W&B group; folder-safe).
        stages: stage name -> stage, run in this order.
        title: the report's title (default: the name); say there what the data are.
        synthetic: synthetic datasets to generate when missing: folder -> SyntheticConfig fields.
        compare: axes the report compares -> each one's reference level (null: its first level); default:
            every axis that is not a replicate, against its first level.
        replicates: the axes a comparison pairs on (a level of them is a repetition, not a condition).
    """

    name: str
    stages: dict[str, Stage]
    title: str = ""
    synthetic: dict[str, dict[str, Any]] = field(default_factory=dict)
    compare: dict[str, Any] = field(default_factory=dict)
    replicates: list[str] = field(default_factory=lambda: list(REPLICATES))
    folder: Path = field(default=Path("."), init=False)  # the study file's folder (paths are relative to it)


@dataclass(frozen=True)
class RunSpec:
    """One run of a study: its stage, axis values, `fimvision` arguments and the runs it needs."""

    stage: str
    axes: tuple[tuple[str, str], ...]
    args: tuple[str, ...]
    needs: tuple[tuple[str, str], ...] = ()  # (placeholder, run id)
    test: bool = True

    @property
    def test_only(self) -> bool:
        return TEST_ONLY in self.args

    @property
    def id(self) -> str:
        """A readable, unique and stable folder name: stage and axis values (hashed when too long)."""
        safe = lambda s: re.sub(r"[^A-Za-z0-9._=-]+", "_", s)  # noqa: E731
        text = "__".join([self.stage, *(f"{k}={v}" for k, v in self.axes if v != "")])
        text = safe(text)
        return text if len(text) <= 120 else f"{text[:100]}__{hashlib.sha1(text.encode()).hexdigest()[:10]}"

    @property
    def axis_values(self) -> dict[str, str]:
        return dict(self.axes)


def _absolute(args: list[str], here: Path) -> list[str]:
    """Arguments with file paths made absolute (relative to the study file), as LightningCLI does for configs."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        candidate = here / (value if sep else arg)
        if (value if sep else arg).endswith((".yaml", ".yml")) and candidate.is_file():
            out.append(f"{key}={candidate.resolve()}" if sep else str(candidate.resolve()))
        else:
            out.append(arg)
    return out


def relative_args(args: list[str] | tuple[str, ...], here: Path) -> list[str]:
    """``args`` with the paths :func:`_absolute` made absolute written relative to ``here`` again (what a result
    records, so a study folder stays valid when the repository moves)."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        path = value if sep else arg
        if path.endswith((".yaml", ".yml")) and Path(path).is_absolute():
            path = os.path.relpath(path, here)
            out.append(f"{key}={path}" if sep else path)
        else:
            out.append(arg)
    return out


def load_study(path: str | Path) -> StudyConfig:
    """Read and check a study file; returns it with its config paths made absolute."""
    from jsonargparse import ArgumentParser

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read study file {path} ({err}).") from err
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--study", type=StudyConfig)
    try:
        study = parser.instantiate_classes(parser.parse_object({"study": raw})).study
    except Exception as err:  # jsonargparse names the unknown key or the wrong type
        message = describe_parse_error(err).replace("--study.", "").replace(".init_args", "")
        raise ConfigError(f"{path}: {message}") from err
    from fimvision.data.synthetic import SyntheticConfig

    for folder, fields in study.synthetic.items():
        try:
            SyntheticConfig(**fields)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{path}: synthetic dataset {folder}: {err}") from err
    here = study.folder = path.resolve().parent
    for name, stage in study.stages.items():
        stage.args = _absolute(stage.args, here)
        for axis_name, axis in stage.axes.items():
            axis.args = _absolute(axis.args, here)
            axis.named = {k: _absolute(v, here) for k, v in axis.named.items()}
            if not (axis.values or axis.named):
                raise ConfigError(f"{path}: stage '{name}', axis '{axis_name}' has no values (give values or named).")
        unknown = sorted(set(stage.needs.values()) - set(study.stages))
        if unknown:
            raise ConfigError(f"{path}: stage '{name}' needs unknown stage(s) {unknown}; stages: {list(study.stages)}.")
        earlier = list(study.stages)[:list(study.stages).index(name)]
        later = sorted(set(stage.needs.values()) - set(earlier))
        if later:
            raise ConfigError(f"{path}: stage '{name}' needs stage(s) {later}, which must come before it in the file.")
    check_compare(study, path)
    return study


def axis_levels(study: StudyConfig) -> dict[str, list[str]]:
    """Every axis of the study -> its levels (value names), in the order the stages give them."""
    axes: dict[str, list[str]] = {}
    for stage in study.stages.values():
        for name, axis in stage.axes.items():
            levels = axes.setdefault(name, [])
            levels += [level for level, _ in axis.options() if level not in levels]
    return axes


def check_compare(study: StudyConfig, path: Path) -> None:
    """Raise a ConfigError naming the axis or level when ``compare:`` names something the study does not have."""
    axes = axis_levels(study)
    for axis, reference in study.compare.items():
        if axis not in axes:
            raise ConfigError(f"{path}: compare: no stage has an axis '{axis}'; the axes: {list(axes)}.")
        if axis in study.replicates:
            raise ConfigError(f"{path}: compare: '{axis}' is a replicate axis (paired on, not compared); "
                              f"replicates: {study.replicates}.")
        if isinstance(reference, dict | list):
            raise ConfigError(f"{path}: compare: '{axis}' takes one reference level (or null), got {reference!r}.")
        if reference is not None and str(reference) not in axes[axis]:
            raise ConfigError(f"{path}: compare: axis '{axis}' has no level '{reference}'; its levels: {axes[axis]}.")


def expand(study: StudyConfig) -> list[RunSpec]:
    """Every run of the study, stage by stage; a run's ``needs`` name the runs whose checkpoints it uses."""
    runs: list[RunSpec] = []
    by_stage: dict[str, list[RunSpec]] = {}
    for stage_name, stage in study.stages.items():
        names = list(stage.axes)
        stage_runs = []
        for combo in itertools.product(*(stage.axes[n].options() for n in names)):
            values = {n: v for n, (v, _) in zip(names, combo, strict=True)}
            args, axes = list(stage.args), []
            for n, (value, value_args) in zip(names, combo, strict=True):
                when = stage.axes[n].when
                if when and not all(values.get(k) in [str(x) for x in allowed] for k, allowed in when.items()):
                    axes.append((n, ""))
                    continue
                axes.append((n, value))
                args += value_args
            spec = RunSpec(stage_name, tuple(axes), tuple(args), test=stage.test)
            if spec.axes in {r.axes for r in stage_runs}:
                continue  # an axis skipped by `when` makes combinations equal
            needs = []
            for placeholder, needed in stage.needs.items():
                if not any(f"{{{placeholder}}}" in a for a in args):
                    continue
                match = [r for r in by_stage[needed] if all(values.get(k) == v for k, v in r.axes if k in values)]
                if len(match) != 1:
                    raise ConfigError(f"stage '{stage_name}' run {spec.id}: {len(match)} runs of stage '{needed}' fit "
                                      f"its axes {values}; exactly one must (share the axes that tell them apart).")
                needs.append((placeholder, match[0].id))
            stage_runs.append(RunSpec(stage_name, spec.axes, spec.args, tuple(needs), stage.test))
        by_stage[stage_name] = stage_runs
        runs += stage_runs
    return runs
