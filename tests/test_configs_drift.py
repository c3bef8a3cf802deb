"""Config files that are deliberate variants of another stay variants: only the keys they exist to change differ."""

import yaml
from fimtest import CONFIGS


def test_the_recipes_trainer_is_the_supervised_trainer_with_more_epochs():
    base = yaml.safe_load((CONFIGS / "trainers" / "supervised.yaml").read_text())
    recipe = yaml.safe_load((CONFIGS / "trainers" / "fim_real.yaml").read_text())
    assert recipe["max_epochs"] > base["max_epochs"]
    folder = recipe["default_root_dir"]
    assert folder != base["default_root_dir"] and recipe["logger"]["init_args"]["save_dir"] == folder
    for key in ("max_epochs", "default_root_dir", "logger"):
        recipe.pop(key), base.pop(key)
    assert recipe == base
