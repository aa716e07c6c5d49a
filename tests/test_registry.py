"""Registries accept plug-ins: one rule for every registry, one did-you-mean helper, and user
entries (registered from a user's module, or a module named under ``plugins``) train end to end."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import models
from augment.registry import PRESETS, register_preset
from invlab.config import ConfigError
from invlab.registry import Registry
from invlab.suggest import CUTOFF, close_matches, did_you_mean
from models.antialias_methods import ANTIALIAS_METHODS, register_antialias
from models.downsampling import DOWNSAMPLERS, register_downsample
from models.registry import MODELS, register_model
from tests.conftest import tiny_config
from train.cli import main
from train.config import load_config
from train.data import ArrayPool, Source, build_datamodule, register_source
from train.data.registry import SOURCES
from train.fit import fit
from train.module import Classifier


# ------------------------------------------------------------------------------ the rule
def test_registry_rule_duplicates_override_and_sorted_listing() -> None:
    reg: Registry[int] = Registry("widget")
    reg.add("zeta", 1)
    reg.register("alpha")(lambda: 2)
    with pytest.raises(ValueError, match="'zeta' is already registered.*override=True"):
        reg.add("zeta", 3)
    reg.add("zeta", 3, override=True)
    assert reg.get("zeta") == 3 and reg.names() == ["alpha", "zeta"] and list(reg) == reg.names()
    reg.add("zeta", 3)  # the very same object again: a re-imported module is harmless
    assert len(reg) == 2 and "alpha" in reg and reg.remove("alpha")() == 2 and "alpha" not in reg
    with pytest.raises(ConfigError) as err:
        reg.get("zta", "my.key")
    text = str(err.value)
    assert "Unknown widget 'zta' in 'my.key'" in text and "Did you mean 'zeta'" in text
    assert "Registered: zeta." in text and "'plugins'" in text


def test_registry_names_default_to_the_function_name() -> None:
    reg: Registry[object] = Registry("thing")

    @reg.register()
    def my_thing() -> None: ...

    assert reg.names() == ["my_thing"] and reg.get("my_thing") is my_thing


def test_one_suggestion_cutoff() -> None:
    assert did_you_mean("cnnn", ["cnn", "allconv"]) == " Did you mean 'cnn'?"
    assert did_you_mean("mydata", ["shapes", "digits"]) == ""
    # The cut-off is difflib's ratio: 'abcd' vs 'abxy' is 0.5, below it; 'abcd' vs 'abcx' 0.75.
    assert CUTOFF == 0.6
    assert close_matches("abcd", ["abxy", "abcx"], n=2) == ["abcx"]


def test_builtin_registries_use_the_rule() -> None:
    for registry in (MODELS, SOURCES, PRESETS, ANTIALIAS_METHODS, DOWNSAMPLERS):
        assert isinstance(registry, Registry) and registry.names() == sorted(registry.names())
    assert {"shapes", "digits", "folder"} <= set(SOURCES.names())
    assert {"cnn", "cnn_tiny"} <= set(MODELS.names())
    assert {"translate", "flip", "none"} <= set(PRESETS.names())
    assert ANTIALIAS_METHODS.names() == ["aps", "blur", "maxblur"]
    assert DOWNSAMPLERS.names() == ["avgpool", "conv", "maxpool", "none"]
    with pytest.raises(ValueError, match="already registered"):
        register_source("shapes")(lambda cfg, seed: None)
    with pytest.raises(ValueError, match="already registered"):
        register_preset("flip")(lambda cfg: [])


# ------------------------------------------------------------------- a user's own entries
RED, BLUE = (255, 0, 0), (0, 0, 255)


def _solid(colours: list[tuple[int, int, int]], size: int = 12) -> torch.Tensor:
    rgb = torch.tensor(colours, dtype=torch.uint8)  # [N, 3]
    return rgb[:, :, None, None].expand(-1, 3, size, size).contiguous()


def load_primaries(cfg, seed: int) -> Source:
    """Opaque pure-red (class 0) and pure-blue (class 1) squares: no built-in draws these."""
    labels = torch.arange(240) % 2
    images = _solid([RED if y == 0 else BLUE for y in labels.tolist()])
    train = ArrayPool(images[:40], labels[:40], source_indices=torch.arange(40))
    heldout = ArrayPool(images[40:], labels[40:], source_indices=torch.arange(40, 240))
    return Source("test_primaries", ["red", "blue"], train, heldout)


class PrimariesNet(nn.Module):
    def __init__(self, num_classes: int, in_chans: int) -> None:
        super().__init__()
        self.features = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.classifier = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).relu().mean((2, 3)))


def test_primaries_net(num_classes: int = 10, in_chans: int = 3, **arch) -> nn.Module:
    """A user's network (ignores the built-in architecture knobs)."""
    return PrimariesNet(num_classes, in_chans)


test_primaries_net.__test__ = False  # a model factory, not a test


class Recorder(nn.Module):
    """An augmentation that keeps a copy of every batch it sees and changes nothing."""

    def __init__(self, seen: list[torch.Tensor]) -> None:
        super().__init__()
        self.seen = seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().cpu().clone())
        return x


@pytest.fixture
def user_entries() -> Iterator[list[torch.Tensor]]:
    """Registers a source, a model and a preset the way a user's module would; removes them."""
    seen: list[torch.Tensor] = []
    register_source("test_primaries")(load_primaries)
    register_model(test_primaries_net)
    register_preset("test_record")(lambda cfg: [Recorder(seen)])
    try:
        yield seen
    finally:
        SOURCES.remove("test_primaries")
        MODELS.remove("test_primaries_net")
        PRESETS.remove("test_record")


def _has_colour(images: torch.Tensor, rgb: tuple[int, int, int]) -> torch.Tensor:
    """[N] whether each float [0, 1] image has a pixel of exactly ``rgb``."""
    target = torch.tensor(rgb, dtype=torch.float32)[None, :, None, None] / 255
    return (images == target).all(1).flatten(1).any(1)


def test_unregistered_names_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    for override, key in [
        ("data.source=test_primaries", "data.source"),
        ("data.heldout.atypical.source=test_primaries", "data.heldout.atypical.source"),
        ("model.name=test_primaries_net", "model.name"),
        ("augment.presets=[flip,test_record]", "augment.presets"),
    ]:
        with pytest.raises(ConfigError, match=f"in '{key}'.*Registered: .*'plugins'"):
            tiny_config(tmp_path, override)
    assert list(tmp_path.iterdir()) == []


def test_user_source_model_and_preset_train_end_to_end(
    tmp_path: Path, user_entries: list[torch.Tensor]
) -> None:
    cfg = tiny_config(
        tmp_path,
        "data.source=test_primaries",
        "model.name=test_primaries_net",
        "augment.presets=[test_record]",
        "eval.enabled=false",
        "trainer.max_epochs=1",
    )
    result = fit(cfg)
    # The model: the user's class, in the checkpoint.
    state = torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)
    assert state["state_dict"]["net.features.weight"].shape == (4, 3, 3, 3)
    restored = Classifier.load_from_checkpoint(result.last_checkpoint, map_location="cpu")
    assert isinstance(restored.net, PrimariesNet)
    # The data: red objects are class 0, blue objects class 1, in training and held out.
    dm = build_datamodule(cfg)
    dm.setup("fit")
    assert dm.num_classes == 2
    for split in ("train", "val", "scale"):  # flat backgrounds: grey, never a pure primary
        data = dm.split(split)
        images = data.images.float() / 255
        red, blue = _has_colour(images, RED), _has_colour(images, BLUE)
        assert torch.equal(red, data.labels == 0) and torch.equal(blue, data.labels == 1)
    # The preset: both training batches (64 images, batches of 32, one epoch) went through it,
    # after the run's augmentation sample grid (8 images).
    seen = user_entries
    assert [b.shape[0] for b in seen].count(32) == 2
    batches = torch.cat(seen)
    assert bool((_has_colour(batches, RED) ^ _has_colour(batches, BLUE)).all())


class SkipDownsample(nn.Module):
    """Keep every ``stride``-th pixel (the aliasing baseline, as a method of one's own)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., :: self.stride, :: self.stride]


def test_user_antialias_method_is_accepted_and_applied(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Unknown antialias method 'test_skip'.*'none'"):
        tiny_config(tmp_path, "model.antialias.method=test_skip")

    @register_antialias("test_skip", convs=False, describe=lambda s, k, pad: f"Skip(s{s})")
    def skip(stride: int, filt_size: int, pad_mode: str) -> nn.Module:
        return SkipDownsample(stride)

    try:
        cfg = tiny_config(tmp_path, "model.antialias.method=test_skip", "model.downsample=maxpool")
        net = models.build(cfg.model, num_classes=3)
        added = [m for m in net.modules() if isinstance(m, SkipDownsample)]
        assert len(added) == 1 and added[0].stride == 2  # one max-pool between two stages
        assert net(torch.rand(2, 3, 16, 16)).shape == (2, 3)
        plan = models.antialias(models.build({"name": "cnn"}, 3), "test_skip", dry_run=True)
        assert [row[2] for row in plan] == ["kept (test_skip: pools only)"] * 2  # strided convs
        pooled = models.build({"name": "cnn", "downsample": "avgpool"}, 3)
        assert [r[2] for r in models.antialias(pooled, "test_skip", dry_run=True)] == [
            "Skip(s2)"
        ] * 2
    finally:
        ANTIALIAS_METHODS.remove("test_skip")


def test_user_downsampling_layer_is_accepted_and_built(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Unknown downsampling layer 'test_skip'"):
        tiny_config(tmp_path, "model.downsample=test_skip")

    @register_downsample("test_skip")
    def skip(ch: int, kernel: int, stride: int, padding_mode: str, norm: str) -> nn.Module:
        return SkipDownsample(stride)

    try:
        cfg = tiny_config(tmp_path, "model.downsample=test_skip", "model.down_stride=4")
        net = models.build(cfg.model, num_classes=3)
        assert isinstance(net.features.down1, SkipDownsample) and net.features.down1.stride == 4
        x = torch.rand(1, 3, 16, 16)
        assert net.features(x).shape == (1, 16, 4, 4)  # widths [8, 16]: one 4x subsampling
    finally:
        DOWNSAMPLERS.remove("test_skip")


# ------------------------------------------------------------------------- plugins key
PLUGIN = '''
"""A user's plug-in module: registers a source, a model and a preset at import."""
from torch import nn

from augment import register_preset
from models import register_model
from train.data import build_source, register_source


@register_source("{prefix}_digits")
def load(cfg, seed):
    return build_source("digits", cfg, seed)


@register_model(name="{prefix}_net")
def net(num_classes=10, in_chans=3, **arch):
    return nn.Sequential(nn.Conv2d(in_chans, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))


@register_preset("{prefix}_flip")
def flip(cfg):
    return [nn.Identity()]
'''


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A plug-in module written to ``tmp_path`` and put on ``sys.path``."""
    name = "invlab_test_plugin"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(PLUGIN.format(prefix="plug")))
    (tmp_path / "invlab_broken_plugin.py").write_text("import invlab_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield name
    finally:
        sys.modules.pop(name, None)
        for registry, entry in ((SOURCES, "plug_digits"), (MODELS, "plug_net")):
            if entry in registry:
                registry.remove(entry)
        if "plug_flip" in PRESETS:
            PRESETS.remove("plug_flip")


def test_plugins_key_imports_modules_before_validation(plugin_module: str) -> None:
    names = ["data.source=plug_digits", "model.name=plug_net", "augment.presets=[plug_flip]"]
    with pytest.raises(ConfigError, match="Unknown data source 'plug_digits'"):
        load_config(overrides=names)
    cfg = load_config(overrides=[f"plugins=[{plugin_module}]", *names])
    assert cfg.data.source == "plug_digits" and cfg.model.name == "plug_net"
    assert "plug_digits" in SOURCES and "plug_net" in MODELS and "plug_flip" in PRESETS
    # A stored config names its plug-ins, so it loads again by itself.
    assert load_config(base={"plugins": [plugin_module], "data": {"source": "plug_digits"}})


@pytest.mark.parametrize(
    ("module", "fragments"),
    [
        ("invlab_no_such_module", ["'invlab_no_such_module'", "not found", "PYTHONPATH"]),
        ("invlab_broken_plugin", ["'invlab_missing_dependency'", "not installed"]),
    ],
)
def test_bad_plugins_exit_2_with_one_paragraph(
    plugin_module: str, module: str, fragments: list[str], capsys: pytest.CaptureFixture
) -> None:
    assert main(["config", f"plugins=[{module}]"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    for fragment in fragments:
        assert fragment in err
