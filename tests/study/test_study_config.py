"""Study files expand into the documented runs, wrong ones are refused (their `compare:` too), and run locks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from fimtest import CONFIGS

from fimvision.errors import ConfigError
from fimvision.study.config import expand, load_study
from fimvision.study.runner import RunLock

STUDIES = CONFIGS / "study"


# ------------------------------------------------------------------------------------------------ grid expansion
def test_a_grid_expands_into_named_runs_with_their_needs(tmp_path):
    study = tmp_path / "studies" / "study.yaml"
    study.parent.mkdir()
    study.write_text(yaml.safe_dump({"name": "g", "stages": {
        "source": {"args": ["--config", "../c.yaml"], "test": False,
                   "axes": {"seed": {"values": [0, 1], "args": ["--seed_everything={}"]}}},
        "adapt": {"args": [], "needs": {"src": "source"}, "axes": {
            "seed": {"values": [0, 1], "args": ["--seed_everything={}"]},
            "method": {"named": {"none": ["test-only", "--ckpt_path={src}"],
                                 "ft": ["--model.init_args.source_checkpoint={src}"], "shot": ["--x=1"]}},
            "shots": {"values": [1, 3], "args": ["--data.init_args.n_shot={}"], "when": {"method": ["ft"]}}}}}},
        sort_keys=False))
    (tmp_path / "c.yaml").write_text("seed_everything: 0\n")
    runs = expand(load_study(study))
    ids = [r.id for r in runs]
    assert ids[:2] == ["source__seed=0", "source__seed=1"]
    adapt = [r for r in runs if r.stage == "adapt"]
    assert len(adapt) == 2 * (1 + 2 + 1)  # shots only where the method is ft; no duplicates elsewhere
    assert "adapt__seed=1__method=ft__shots=3" in ids and "adapt__seed=0__method=shot" in ids
    ft3 = next(r for r in adapt if r.id == "adapt__seed=1__method=ft__shots=3")
    assert ft3.needs == (("src", "source__seed=1"),)  # the source run with the same seed
    assert ft3.args == ("--seed_everything=1", "--model.init_args.source_checkpoint={src}", "--data.init_args.n_shot=3")
    assert next(r for r in adapt if r.id == "adapt__seed=0__method=shot").needs == ()  # no {src}: needs nothing
    none = next(r for r in adapt if r.id == "adapt__seed=0__method=none")
    assert none.test_only and none.axis_values == {"seed": "0", "method": "none", "shots": ""}
    assert runs[0].args[1] == str((tmp_path / "c.yaml").resolve())  # paths relative to the study file


@pytest.mark.parametrize("text, message", [
    ("name: x\nstages: {a: {axes: {s: {values: [1]}}, typo: 1}}", "typo"),
    ("name: x\nstages: {a: {axes: {s: {values: 3}}}}", "stages.axes: expected a list"),
    ("name: x\nstages: {a: {needs: {p: nowhere}, axes: {s: {values: [1]}}}}", "unknown stage"),
    ("name: x\nstages: {a: {axes: {s: {}}}}", "has no values"),
    ("name: x\nstages: {a: {needs: {p: b}, axes: {s: {values: [1]}}}, b: {axes: {s: {values: [1]}}}}", "before it"),
    ("name: x\nsynthetic: {d: {antibodies: 0}}\nstages: {a: {axes: {s: {values: [1]}}}}", "antibodies"),
    ("name: x\ncompare: {inputs: image}\nstages: {a: {axes: {input: {values: [image, fused]}}}}",
     "compare: no stage has an axis 'inputs'; the axes: \\['input'\\]"),
    ("name: x\ncompare: {input: feature_only}\nstages: {a: {axes: {input: {named: {image: [], features_only: []}}}}}",
     "compare: axis 'input' has no level 'feature_only'; its levels: \\['image', 'features_only'\\]"),
    ("name: x\ncompare: {seed: 0}\nstages: {a: {axes: {seed: {values: [0, 1]}}}}", "'seed' is a replicate axis"),
    ("name: x\ncompare: {input: [a, b]}\nstages: {a: {axes: {input: {values: [a, b]}}}}", "takes one reference level"),
])
def test_a_wrong_study_file_is_refused_with_what_is_wrong(tmp_path, text, message):
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_study(tmp_path / "s.yaml")


def test_needs_must_tell_runs_apart(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "name: x\nstages:\n  a: {axes: {seed: {values: [0, 1]}}}\n"
        "  b: {args: ['--c={p}'], needs: {p: a}, axes: {fold: {values: [0]}}}\n")
    with pytest.raises(ConfigError, match="2 runs of stage 'a' fit"):
        expand(load_study(tmp_path / "s.yaml"))


def test_the_shipped_studies_expand_as_documented():
    counts = {}
    for path in sorted(STUDIES.glob("*.yaml")):
        runs = expand(load_study(path))
        counts[path.stem] = pd.Series([r.stage for r in runs]).value_counts().to_dict()
    assert counts["color_vs_mono"] == {"main": 3 * 2 * 8 * 3, "pretrain": 2 * 8 * 3}
    assert counts["color_vs_mono-quick"] == {"main": 3 * 2 * 3 * 2, "pretrain": 2 * 3}
    per_seed = 1 + 4 + 4 + 3  # source-only, FT and LP-FT at 1/3/5/10 shots, SHOT, NRC, AaD
    assert counts["fewshot_sfda"] == {"mnist_usps": 2 * 3 * per_seed, "fim_antibody": 2 * 3 * per_seed,
                                      "mnist_usps_source": 6, "fim_antibody_source": 6}
    assert counts["fewshot_sfda-quick"] == {"fim_antibody": 2 * 2 * (1 + 2 + 2 + 3), "fim_antibody_source": 4}
    runs = {r.id: r for r in expand(load_study(STUDIES / "color_vs_mono.yaml"))}
    ssl = runs["main__model=ssl_cnn__modality=mono__fold=3__seed=2"]
    assert ssl.needs == (("ssl", "pretrain__modality=mono__fold=3__seed=2"),)  # the held-out antibody stays unseen
    assert runs["main__model=vit__modality=mono__fold=3__seed=2"].needs == ()
    fewshot = expand(load_study(STUDIES / "fewshot_sfda.yaml"))
    ft = [r for r in fewshot if dict(r.axes).get("method") == "ft"]
    assert all("--model.init_args.steps" not in " ".join(r.args) for r in ft)  # the paper's 1,000 steps (default)



def test_a_held_lock_is_respected_and_a_dead_holders_lock_taken_over(tmp_path):
    lock = RunLock(tmp_path / "a.lock", stale_after=600)
    assert lock.acquire()
    assert not RunLock(tmp_path / "a.lock", stale_after=600).acquire()  # held by a live process
    lock.release()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "b.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout), "time": 0}))
    assert RunLock(tmp_path / "b.lock", stale_after=600).acquire()  # its process is gone
    (tmp_path / "c.lock").write_text(json.dumps({"host": "another-machine", "pid": 1, "time": 0}))
    assert not RunLock(tmp_path / "c.lock", stale_after=600).acquire()  # another machine's: heartbeat still fresh
    os.utime(tmp_path / "c.lock", (time.time() - 700, time.time() - 700))
    assert RunLock(tmp_path / "c.lock", stale_after=600).acquire()  # no heartbeat for too long
