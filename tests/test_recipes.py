"""Training recipes: mixup/cutmix presets, EMA weights, timm's optimizers, the recipes study."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F

import augment
from augment.mix import RandomMix
from invlab.config import ConfigError
from tests.conftest import DEFAULT_YAML, REPO, tiny_config
from train.config import load_config
from train.fit import fit
from train.module import Classifier, build_optimizer, check_optimizer, param_groups

MIXING = ["mixup", "cutmix", "mixup_cutmix"]


def _aug(*overrides: str, num_classes: int = 5) -> augment.Augmenter:
    return augment.build(load_config(overrides=list(overrides)).augment, num_classes=num_classes)


def _batch(b: int = 16, size: int = 12, k: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g), torch.randint(0, k, (b,), generator=g)


# ------------------------------------------------------------------------------ mixup, cutmix
@pytest.mark.parametrize("name", MIXING)
def test_mixed_targets_are_probabilities_mixed_like_the_images(name: str) -> None:
    x, y = _batch()
    aug = _aug(f"augment.presets=[{name}]")
    assert aug.mixes
    out, t = aug.with_targets(x, y)
    assert out.shape == x.shape and t.shape == (16, 5) and t.dtype == torch.float32
    assert (t >= 0).all()
    torch.testing.assert_close(t.sum(dim=1), torch.ones(16))  # each row sums to one
    assert not torch.equal(out, x)

    op = aug.ops[0]
    assert isinstance(op, RandomMix)
    p = op.sample(x.shape, generator=torch.Generator().manual_seed(3))
    out, t = op.mix(x, F.one_hot(y, 5).float(), p)
    lam, partner = p["lam"], p["pairs"]
    for i in range(len(x)):
        # The target gives the image lam and its partner 1 - lam ...
        expected = lam[i] * F.one_hot(y[i], 5) + (1 - lam[i]) * F.one_hot(y[partner[i]], 5)
        torch.testing.assert_close(t[i], expected.float())
        if p["cutmix"][i]:  # ... and CutMix takes exactly 1 - lam of the pixels from the partner
            mask = op.box_mask({"box": p["box"][i : i + 1]}, 12, 12)[0, 0]
            assert mask.float().mean().item() == pytest.approx(1 - lam[i].item())
            assert torch.equal(out[i][:, mask], x[partner[i]][:, mask])
            assert torch.equal(out[i][:, ~mask], x[i][:, ~mask])
        else:  # ... and Mixup blends the pixels with the same weights
            blend = lam[i] * x[i] + (1 - lam[i]) * x[partner[i]]
            torch.testing.assert_close(out[i], blend)
    if name == "mixup_cutmix":
        assert 0 < p["cutmix"].float().mean() < 1  # chosen per image


@pytest.mark.parametrize("name", MIXING)
def test_mix_parameters_replay_exactly(name: str) -> None:
    x, y = _batch()
    op = _aug(f"augment.presets=[{name}]").ops[0]
    p = op.sample(x.shape, generator=torch.Generator().manual_seed(1))
    again = op.sample(x.shape, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(p[k], again[k]) for k in p)  # the same draw from the same seed
    targets = F.one_hot(y, 5).float()
    out1, t1 = op.mix(x, targets, p)
    out2, t2 = op.mix(x.clone(), targets.clone(), p)  # same parameters: same images, targets
    assert torch.equal(out1, out2) and torch.equal(t1, t2)
    other = op.sample(x.shape, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(op.mix(x, targets, other)[0], out1)

    # The Augmenter's stream replays too, and leaves torch's global RNG alone.
    a, b = _aug(f"augment.presets=[{name}]"), _aug(f"augment.presets=[{name}]")
    a.reseed(7)
    b.reseed(7)
    state = torch.get_rng_state()
    (xa, ta), (xb, tb) = a.with_targets(x, y), b.with_targets(x, y)
    assert torch.equal(xa, xb) and torch.equal(ta, tb)
    assert torch.equal(torch.get_rng_state(), state)


def test_mixup_weights_follow_beta_alpha_and_same_on_batch_shares_them() -> None:
    op = RandomMix(mixup_alpha=0.2)
    lam = op.sample((20000, 3, 4, 4), generator=torch.Generator().manual_seed(0))["lam"]
    # Beta(0.2, 0.2): mean 1/2, variance 1 / (4 (2 alpha + 1)) = 0.1786
    assert lam.mean().item() == pytest.approx(0.5, abs=0.01)
    assert lam.var().item() == pytest.approx(1 / (4 * 1.4), abs=0.01)
    shared = RandomMix(mixup_alpha=1.0, cutmix_alpha=1.0, same_on_batch=True)
    p = shared.sample((8, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    assert (p["lam"] == p["lam"][0]).all() and (p["cutmix"] == p["cutmix"][0]).all()


def test_soft_loss_folds_label_smoothing_like_timm() -> None:
    """Soft-target cross-entropy with optim.label_smoothing equals timm's mixup_target +
    SoftTargetCrossEntropy for the same weights (timm pairs image i with image B-1-i)."""
    from timm.data.mixup import mixup_target
    from timm.loss import SoftTargetCrossEntropy

    x, y = _batch(b=8)
    logits = torch.randn(8, 5)
    lam = 0.7
    params = {
        "pairs": torch.arange(7, -1, -1),
        "lam": torch.full((8,), lam),
        "box": torch.zeros(8, 4, dtype=torch.long),
        "cutmix": torch.zeros(8, dtype=torch.bool),
    }
    _, t = RandomMix(mixup_alpha=1.0).mix(x, F.one_hot(y, 5).float(), params)
    ours = F.cross_entropy(logits, t, label_smoothing=0.1)
    theirs = SoftTargetCrossEntropy()(logits, mixup_target(y, 5, lam, smoothing=0.1))
    torch.testing.assert_close(ours, theirs)


def test_hard_labels_stay_labels_and_evaluation_never_mixes(tmp_path: Path) -> None:
    assert not _aug("augment.presets=[translate,flip]").mixes
    x, y = _batch()
    out, labels = _aug("augment.presets=[translate]").with_targets(x, y)
    assert labels is y

    class Targets(L.Callback):
        seen: dict[str, set[tuple[torch.dtype, int]]]

        def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
            self.seen = getattr(self, "seen", {})

        def _note(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
            self.seen.setdefault(stage, set()).add((batch[1].dtype, batch[1].ndim))

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._note("train", batch)

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, d=0) -> None:
            self._note("val", batch)

        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, d=0) -> None:
            self._note("test", batch)

    seen = Targets()
    cfg = tiny_config(tmp_path, "eval.enabled=false", "augment.presets=[cutmix]")
    fit(cfg, callbacks=[seen])
    assert seen.seen["train"] == {(torch.float32, 2)}  # probabilities [B, K]
    assert seen.seen["val"] == seen.seen["test"] == {(torch.int64, 1)}


# ----------------------------------------------------------------------------------- EMA
class _RawWeights(L.Callback):
    """The raw weights and buffers after every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def test_ema_weights_equal_a_hand_computed_average(tmp_path: Path) -> None:
    decay = 0.6
    raw = _RawWeights()
    extra = ("eval.enabled=false", "trainer.max_epochs=2", "optim.ema.enabled=true")
    result = fit(tiny_config(tmp_path, *extra, f"optim.ema.decay={decay}"), callbacks=[raw])
    assert len(raw.steps) == 4  # 64 images, batch 32, 2 epochs
    expected = dict(raw.steps[0])  # the first update copies the weights
    for w in raw.steps[1:]:
        expected = {
            k: (decay * expected[k] + (1 - decay) * w[k]) if w[k].is_floating_point() else w[k]
            for k in w
        }
    ckpt = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert any("running_mean" in k for k in expected)  # BatchNorm statistics are averaged too
    for k, v in expected.items():
        torch.testing.assert_close(ckpt["state_dict"][k], v, rtol=1e-6, atol=1e-7)
        assert torch.equal(ckpt["current_model_state"][k], raw.steps[-1][k])  # the raw weights
    assert result.metrics["ema"]["updates"] == 4 and result.metrics["ema"]["decay"] == decay


def test_ema_run_resumes_like_an_uninterrupted_one(tmp_path: Path) -> None:
    class Crash(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:
                raise RuntimeError("simulated crash")

    extra = ("eval.enabled=false", "trainer.max_epochs=2", "optim.ema.enabled=true")
    extra += ("optim.ema.decay=0.5", "augment.presets=[mixup]")
    full = fit(tiny_config(tmp_path, "name=full", *extra))
    cfg = tiny_config(tmp_path, "name=crashed", *extra)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg, callbacks=[Crash()])
    resumed = fit(cfg, resume=True)
    a = torch.load(full.last_checkpoint, map_location="cpu", weights_only=True)
    b = torch.load(resumed.last_checkpoint, map_location="cpu", weights_only=True)
    for key in ("state_dict", "current_model_state"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert resumed.metrics["raw"]["splits"] == full.metrics["raw"]["splits"]


def test_fit_with_a_recipe_reports_ema_and_raw_weights(tmp_path: Path) -> None:
    presets = "augment.presets=[randaugment,erasing,mixup_cutmix]"
    extra = (presets, "optim.ema.enabled=true", "optim.ema.decay=0.9", "trainer.max_epochs=2")
    result = fit(tiny_config(tmp_path, *extra, "optim.label_smoothing=0.1"))
    m = result.metrics
    assert m["weights"] == "ema" and m["ema"]["splits"] == m["splits"]
    assert set(m["raw"]["splits"]) == set(m["splits"])
    assert m["invariance"]["weights"] == "ema" and m["raw"]["invariance"]["weights"] == "raw"
    assert set(m["raw"]["invariance"]["splits"]) == set(m["invariance"]["splits"])
    reports = result.run_dir / "reports"
    assert (reports / "invariance_epoch002.json").is_file()
    assert (reports / "invariance_raw_epoch002.json").is_file()
    with (result.run_dir / "csv" / "metrics.csv").open() as fh:
        header = next(csv.reader(fh))
    assert "final/raw/typical/accuracy" in header and "final/typical/accuracy" in header
    assert "raw/invariance/typical/translate/p_change" in header
    ckpt = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    k = "net.fc.weight"
    assert not torch.equal(ckpt["state_dict"][k], ckpt["current_model_state"][k])
    # The written metrics.json says the same.
    assert json.loads((result.run_dir / "metrics.json").read_text())["raw"]["splits"]


def test_without_ema_the_metrics_and_report_keep_their_schema(tmp_path: Path) -> None:
    m = fit(tiny_config(tmp_path, "augment.presets=[mixup]")).metrics
    assert not {"weights", "ema", "raw"} & set(m)
    assert "weights" not in m["invariance"]
    assert not list((tmp_path / "default" / "reports").glob("invariance_raw_*"))


# ----------------------------------------------------------------------------- optimizers
def _model(*extra: str) -> Classifier:
    return Classifier(load_config(DEFAULT_YAML, overrides=["model.widths=[4,8]", *extra]), 4)


def _step(model: Classifier, opt: torch.optim.Optimizer, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(8, 3, 16, 16, generator=g), torch.randint(0, 4, (8,), generator=g)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("name", ["sgd", "momentum", "adamw", "lamb", "lars", "lookahead_adamw"])
def test_each_timm_optimizer_trains_a_step(name: str) -> None:
    torch.manual_seed(0)
    model = _model(f"optim.optimizer={name}", "optim.lr=0.01")
    opt = build_optimizer(model.net, model.cfg.optim, {})
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    _step(model, opt)
    changed = [k for k, v in model.net.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("conv.weight") for k in changed) and "fc.weight" in changed


def test_weight_decay_skips_biases_and_norms_and_lr_mult_splits_groups() -> None:
    model = _model("optim.lr=0.1", "optim.weight_decay=0.01")
    mults = {"fc.weight": 10.0, "fc.bias": 10.0}
    names = {id(p): n for n, p in model.net.named_parameters()}
    groups = param_groups(model.net, model.cfg.optim, mults)
    for g in groups:
        for p in g["params"]:
            n = names[id(p)]
            assert g["weight_decay"] == (0.0 if p.ndim <= 1 else 0.01), n
            assert g["lr_mult"] == mults.get(n, 1.0) and g["lr"] == pytest.approx(
                0.1 * g["lr_mult"]
            )
    assert sum(len(g["params"]) for g in groups) == len(names)


def test_default_sgd_steps_like_torch_sgd_with_the_old_groups() -> None:
    """sgd + nesterov through timm's factory = torch's SGD on (decay, no decay) groups."""
    torch.manual_seed(0)
    a = _model()
    b = _model()
    b.load_state_dict(a.state_dict())
    o = a.cfg.optim
    decay = [p for p in b.net.parameters() if p.ndim > 1]
    no_decay = [p for p in b.net.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": o.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    ref = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=True)
    opt = build_optimizer(a.net, o, {})
    assert type(opt) is torch.optim.SGD and all(g["nesterov"] for g in opt.param_groups)
    for seed in range(3):
        _step(a, opt, seed)
        _step(b, ref, seed)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_optimizer_names_are_checked_against_timm() -> None:
    check_optimizer("lamb")
    with pytest.raises(ConfigError, match="Unknown optimizer 'lamm'.*Did you mean 'lamb'"):
        load_config(overrides=["optim.optimizer=lamm"])
    with pytest.raises(ConfigError, match="needs NVIDIA apex"):
        load_config(overrides=["optim.optimizer=fusedlamb"])


def test_an_optimizer_without_momentum_runs_onecycle(tmp_path: Path) -> None:
    extra = ("optim.optimizer=adagrad", "optim.schedule=onecycle", "optim.lr=0.01")
    result = fit(tiny_config(tmp_path, "eval.enabled=false", "trainer.max_epochs=2", *extra))
    assert result.metrics["global_step"] == 4


# ------------------------------------------------------------------------------- the study
def test_recipes_study_points_load() -> None:
    from train.sweep import grid_points

    points = grid_points(REPO / "configs" / "sweeps" / "recipes.yaml")
    assert len(points) == 9
    arms = set()
    for point in points:
        cfg = load_config(
            DEFAULT_YAML, REPO / "configs" / "studies" / "recipes.yaml", overrides=point.overrides
        )
        arms.add((tuple(cfg.augment.presets), cfg.optim.ema.enabled))
        assert cfg.data.source == "shapes"
    assert arms == {
        ((), True),
        (("translate",), True),
        (("randaugment", "erasing", "mixup_cutmix"), True),
    }
