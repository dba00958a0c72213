"""The typed config: defaults, schema checks, and portable paths in saved configs."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from generate.config import PROJECT_ROOT, to_plain
from tests.conftest import compose_config


def test_default_run_is_tiny_shakespeare_with_model_small() -> None:
    cfg = compose_config("config", [])
    assert cfg.dataset.name == "shakespeare" and cfg.run_name == "shakespeare"
    assert cfg.dataset.path == f"{PROJECT_ROOT}/datasets/tinyshakespeare.txt"
    assert cfg.model == compose_config("config", ["model=small"]).model


@pytest.mark.parametrize("override", ["model.hiden_size=3", "train.max_steps=lots", "train.device=gpu", "nokey=1"])
def test_typos_and_wrong_types_fail_at_composition(override: str) -> None:
    with pytest.raises(ConfigCompositionException):
        compose_config("config", [override])


def test_saved_configs_store_project_paths_portably() -> None:
    plain = to_plain(compose_config("config", []))
    assert plain["dataset"]["path"] == "${project_root:}/datasets/tinyshakespeare.txt"
    assert plain["dataset"]["cache_dir"] == "./cache"  # ${generate_home:}: the current folder unless GENERATE_HOME is set
    # Read back (as evaluate does), the placeholder resolves to wherever the project is now.
    assert OmegaConf.create(plain["dataset"]).path == f"{PROJECT_ROOT}/datasets/tinyshakespeare.txt"
    assert to_plain(compose_config("config", ["dataset=text", "dataset.path=/data/x.txt"]))["dataset"]["path"] == "/data/x.txt"


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (PROJECT_ROOT / "conf" / "experiment").glob("*.yaml")))
def test_every_recipe_composes_against_the_schema(recipe: str) -> None:
    cfg = compose_config("config", [f"+experiment={recipe}"])
    assert cfg.run_name == recipe  # each recipe trains into its own folder
    assert cfg.train.max_steps > 0 and cfg.model.hidden_size > 0


@pytest.mark.parametrize("option", sorted(p.stem for p in (PROJECT_ROOT / "conf" / "ablation").glob("*.yaml")))
def test_each_ablation_option_changes_only_what_it_names(option: str) -> None:
    """conf/ablation/<x>.yaml adds one regularizer to any recipe (the ablation sweep in docs/results.md)."""
    base = to_plain(compose_config("config", ["+experiment=jsb"]))
    changed = to_plain(compose_config("config", ["+experiment=jsb", f"+ablation={option}"]))
    differences = {f"{group}.{key}" for group in ("dataset", "model", "train") for key in base[group]
                   if base[group][key] != changed[group][key]}
    assert len(differences) == (0 if option == "none" else 1), differences


def test_dataset_from_checkpoint_puts_the_cache_under_generate_home(tmp_path, monkeypatch):
    """A checkpoint's dataset settings get a real cache folder, never the literal "${generate_home:}"."""
    from generate.config import dataset_from_checkpoint

    monkeypatch.setenv("GENERATE_HOME", str(tmp_path))
    settings = dataset_from_checkpoint({"name": "bach"})
    assert settings.cache_dir == str(tmp_path / "cache")
    monkeypatch.delenv("GENERATE_HOME")
    assert "${" not in dataset_from_checkpoint({"name": "bach"}).cache_dir
    assert dataset_from_checkpoint({"name": "bach"}, cache_dir=str(tmp_path / "c")).cache_dir == str(tmp_path / "c")


def test_music21_corpus_paths_are_stored_portably() -> None:
    """The folk recipe's data (music21's bundled corpus) is found again wherever music21 is installed."""
    from generate.config import dataset_from_checkpoint

    plain = to_plain(compose_config("config", ["+experiment=folk"]))
    assert plain["dataset"]["path"] == "${music21_corpus:}/oneills1850"
    settings = dataset_from_checkpoint(plain["dataset"])
    assert settings.path.endswith("/music21/corpus/oneills1850") and "${" not in settings.path
    assert OmegaConf.create({"p": plain["dataset"]["path"]}).p == settings.path  # Hydra resolves it the same way
