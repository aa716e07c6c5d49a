"""Config loading: merge order, validation errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from invlab.config import ConfigError, as_config, save_config, to_container
from tests.conftest import DEFAULT_YAML, REPO
from train.config import load_config


def test_defaults_and_merge_order(tmp_path: Path) -> None:
    cfg = load_config()
    assert cfg.data.source == "shapes" and cfg.trainer["max_epochs"] == 10
    extra = tmp_path / "extra.yaml"
    extra.write_text("data:\n  n_train: 123\nmodel:\n  widths: [4, 8]\n")
    cfg = load_config(DEFAULT_YAML, extra, overrides=["data.n_train=7"])
    assert cfg.data.n_train == 7  # override beats YAML
    assert list(cfg.model.widths) == [4, 8]  # later YAML beats earlier
    assert cfg.trainer["max_epochs"] == 20  # from default.yaml
    assert cfg.data.heldout.atypical.position == "ring"
    assert list(cfg.data.heldout) == ["typical", "atypical", "position", "scale", "background"]


def test_every_shipped_config_loads() -> None:
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        if "sweeps" in path.parts:
            continue
        load_config(DEFAULT_YAML, path)


def test_sweep_grids_are_valid_overrides() -> None:
    """Every point of every W&B sweep grid, with the YAML files and overrides of the sweep's
    command, is a valid invlab config."""
    import itertools

    for path in sorted((REPO / "configs" / "sweeps").glob("*.yaml")):
        sweep = OmegaConf.to_container(OmegaConf.load(path))
        assert "${args_no_hyphens}" in sweep["command"]
        args = sweep["command"][2:]
        yamls = [REPO / a for a in args if a.endswith(".yaml")]
        fixed = [a for a in args if "=" in a and not a.startswith("$")]
        params = sweep["parameters"]
        for values in itertools.product(*(p["values"] for p in params.values())):
            overrides = [f"{k}={v}" for k, v in zip(params, values, strict=True)]
            load_config(*yamls, overrides=[*fixed, *overrides])


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        (["data.n_trian=3"], ["data.n_trian", "Did you mean 'n_train'"]),
        (["data.n_train=abc"], ["data.n_train", "'abc'", "expected int"]),
        (["model.widths=[8,x]"], ["model.widths[1]", "expected int"]),
        (["trainer.max_epoch=3"], ["trainer.max_epoch", "max_epochs"]),
        (["trainer.callbacks=[]"], ["trainer.callbacks", "set by invlab"]),
        (["data.source=shapez"], ["'shapez'", "Did you mean 'shapes'", "digits"]),
        (["eval.splits=[typcal]"], ["typcal", "typical"]),
        (["data.placement.scale=[2,1]"], ["data.placement.scale", "lo <= hi"]),
        (["data.heldout.far.scale=[2,1]"], ["data.heldout.far.scale", "lo <= hi"]),
        (["data.heldout.far.radus_px=[1,2]"], ["data.heldout.far.radus_px", "'radius_px'"]),
        (["data.heldout.far.background=nois"], ["data.heldout.far.background", "'noise'"]),
        (["data.heldout.typical.scale=[0.5,0.6]"], ["data.heldout.typical", "changes scale"]),
        (["data.placement.train.scale=[1,2]"], ["data.placement.train", "'data.placement'"]),
        (["data.n_typical=10"], ["data.n_typical", "data.heldout.typical.n"]),
        (["eval.scales=[1,1.3]"], ["data.frame_scale", "1.3"]),
        (["model.antialias.filt_size=9"], ["filt_size", "1..7"]),
        (["novalue"], ["key=value"]),
    ],
)
def test_errors_name_key_and_fix(override: list[str], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=override)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_unknown_key_in_yaml_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim\.lrr.*bad\.yaml.*Did you mean 'lr'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_plain_container_roundtrip_and_weights_only(tmp_path: Path) -> None:
    cfg = load_config(DEFAULT_YAML, overrides=["seed=3"])
    plain = to_container(cfg)
    assert type(plain) is dict and type(plain["data"]) is dict
    torch.save({"config": plain}, tmp_path / "c.pt")  # what a checkpoint stores
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)["config"]
    assert as_config(loaded) == cfg
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(tmp_path / "run" / "config.yaml") == cfg
    assert OmegaConf.is_config(as_config(loaded))
