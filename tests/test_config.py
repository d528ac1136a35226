from pathlib import Path

import pytest

from aelab.config import RunConfig, apply_overrides, from_dict, make_config, to_dict
from aelab.errors import ConfigError


def test_overrides_set_typed_values():
    cfg = make_config(RunConfig(), None, ["train.epochs=3", "train.lr=1e-3", "seed=7", "data.hflip=true"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.seed, cfg.data.hflip) == (3, 1e-3, 7, True)


def test_section_by_name_switches_model_config_and_keeps_later_keys():
    cfg = make_config(RunConfig(), None, ["model.latent_dim=5", "model=vae", "data=fashion-mnist"])
    assert cfg.model.name == "vae" and cfg.model.latent_dim == 5 and hasattr(cfg.model, "beta")
    assert cfg.data.name == "fashion-mnist"


def test_int_accepted_for_float_and_tuple_parsed():
    cfg = make_config(RunConfig(), None, ["train.lr=1", "model=conv", "model.channels=[8, 16]"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.channels == (8, 16)


@pytest.mark.parametrize("override, fragment", [
    ("train.epoch=3", "unknown config key 'train.epoch'; valid keys here: train.epochs"),
    ("trian.epochs=3", "unknown config key 'trian'"),
    ("train.epochs=abc", "train.epochs='abc' has the wrong type: expected int"),
    ("train.epochs=2.5", "expected int"),
    ("train.schedule=linear", "choose one of: onecycle, cosine, constant"),
    ("model=nosuch", "unknown model 'nosuch'; choose one of:"),
    ("train.epochs=0", "train.epochs must be > 0"),
    ("train.lr=-1", "train.lr must be > 0"),
    ("model.latent_dim=0", "model.latent_dim must be > 0"),
    ("train.corrupt=dropout", None),
    ("epochs", "is not a key=value override"),
])
def test_bad_overrides_name_the_key(override, fragment):
    if fragment is None:
        make_config(RunConfig(), None, [override])
        return
    with pytest.raises(ConfigError) as err:
        make_config(RunConfig(), None, [override])
    assert fragment in str(err.value)


def test_toml_file_then_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('seed = 3\n[train]\nepochs = 4\n[model]\nlatent_dim = 12\nname = "dense"\n')
    cfg = make_config(RunConfig(), p, ["train.epochs=5"])
    assert (cfg.seed, cfg.model.name, cfg.model.latent_dim, cfg.train.epochs) == (3, "dense", 12, 5)


def test_bad_toml_is_a_config_error(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        make_config(RunConfig(), p, [])
    with pytest.raises(ConfigError, match="not found"):
        make_config(RunConfig(), tmp_path / "missing.toml", [])


def test_json_round_trip():
    cfg = make_config(RunConfig(), None, ["model=conv", "model.channels=(4, 8)", "train.epochs=2"])
    again = from_dict(RunConfig, to_dict(cfg))
    assert again == cfg


def test_apply_overrides_does_not_check_ranges_until_make_config():
    cfg = apply_overrides(RunConfig(), ["train.epochs=0"])
    assert cfg.train.epochs == 0


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_study_configs_load(path):
    """Every file in configs/ is a study's config (named STUDY_*.toml) whose keys that study knows: a renamed
    field would otherwise break the README's commands only when a user runs them."""
    from aelab.studies import get_study

    study = get_study(path.stem.split("_")[0])
    cfg = make_config(study.Config(), path, [])
    assert to_dict(cfg) != to_dict(study.Config())  # the file changed something
