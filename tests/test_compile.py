"""``model.compile`` and ``model.channels_last`` give the eager model's logits; antialiased
networks and the augmentation pipeline compile too.

The fast tests use the ``aot_eager`` backend (graph capture and AOT autograd, no code
generation); the inductor test, which builds C++ kernels for a minute on a small CPU, is ``slow``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import augment
from invlab.config import ConfigError
from tests.conftest import tiny_config
from train.config import load_config
from train.fit import fit
from train.module import Classifier

AA = ("model.antialias.method=blur", "model.antialias.filt_size=3")


def _classifier(*overrides: str) -> Classifier:
    torch.manual_seed(0)  # every variant starts from the same weights
    cfg = load_config(overrides=["model.widths=[8,16]", "data.image_size=16", *overrides])
    return Classifier(cfg, num_classes=5)


def _step(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Logits of a training-mode forward and the gradients of its loss."""
    model.train()
    model.zero_grad()
    logits = model(x)
    torch.nn.functional.cross_entropy(logits, y).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    return logits.detach(), grads


@pytest.mark.parametrize(
    "variant",
    [
        ("model.channels_last=true",),
        ("model.compile=true", "model.compile_backend=aot_eager"),
        ("model.compile=true", "model.compile_backend=aot_eager", "model.channels_last=true"),
    ],
    ids=["channels_last", "compile", "compile+channels_last"],
)
@pytest.mark.parametrize("aa", [(), AA, ("model.antialias.method=aps",)], ids=["", "blur", "aps"])
def test_variants_match_eager(variant: tuple[str, ...], aa: tuple[str, ...]) -> None:
    x, y = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    eager, other = _classifier(*aa), _classifier(*aa, *variant)
    assert list(other.state_dict()) == list(eager.state_dict())  # checkpoints interchange
    compiled = other.net._compiled_call_impl is not None  # what nn.Module.compile sets
    assert compiled == ("model.compile=true" in variant)
    ref_logits, ref_grads = _step(eager, x, y)
    logits, grads = _step(other, x, y)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    for k, g in ref_grads.items():
        torch.testing.assert_close(grads[k], g, rtol=1e-3, atol=1e-5, msg=k)
    eager.eval(), other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(x), eager(x), rtol=1e-4, atol=1e-5)


def test_compiled_augmentation_matches_eager() -> None:
    cfg = load_config(overrides=["augment.presets=[translate,flip,scale]"]).augment
    eager, compiled = augment.build(cfg), augment.build(cfg)
    run = torch.compile(compiled, backend="aot_eager")
    x = torch.rand(8, 3, 16, 16)
    for seed in (0, 1):
        eager.reseed(seed)
        compiled.reseed(seed)
        for _ in range(2):  # the stream advances alike
            a, b = eager(x), run(x)
            assert not torch.equal(a, x)
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_fit_with_compile_writes_plain_checkpoint_keys(tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path,
        "model.compile=true",
        "model.compile_backend=aot_eager",
        "eval.enabled=false",
        "augment.presets=[translate]",
        *AA,
    )
    result = fit(cfg)
    state = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert state["state_dict"] and all(
        k.startswith("net.") and "_orig_mod" not in k for k in state["state_dict"]
    )
    assert 0.0 <= result.accuracy("typical") <= 1.0
    eager = Classifier.load_from_checkpoint(result.last_checkpoint, map_location="cpu")
    assert set(eager.state_dict()) == set(state["state_dict"])


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'inductor'"):
        load_config(overrides=["model.compile=true", "model.compile_backend=inductr"])


@pytest.mark.slow
def test_inductor_compiles_an_antialiased_model_and_augmentation() -> None:
    """The default backend generates kernels for BlurPool and the translate gather alike.

    Inductor replaces random ops by its own generator unless ``fallback_random`` is set: the
    compiled augmentation then draws other (equally distributed) parameters than eager."""
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    eager, compiled = _classifier(*AA), _classifier(*AA, "model.compile=true")
    ref_logits, ref_grads = _step(eager, x, y)
    logits, grads = _step(compiled, x, y)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    for k, g in ref_grads.items():
        torch.testing.assert_close(grads[k], g, rtol=1e-3, atol=1e-5, msg=k)
    cfg = load_config(overrides=["augment.presets=[translate,flip]"]).augment
    aug_eager, aug = augment.build(cfg), augment.build(cfg)
    aug_eager.reseed(0), aug.reseed(0)
    with torch._inductor.config.patch(fallback_random=True):
        out = torch.compile(aug)(x)
    assert not torch.equal(out, x)
    torch.testing.assert_close(out, aug_eager(x))
