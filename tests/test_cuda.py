"""The CUDA path, checked on CUDA (marker ``cuda``; every such test skips without a GPU).

``make gpu-check`` runs them (``pytest -m cuda``). They check what only a GPU can show: the
on-device data path equals the DataLoader path, augmentation on the device equals its CPU replay
for the same random draws, APS is exactly invariant to circular shifts there too, bf16 autocast
stays close to fp32, inductor-compiled training equals eager, and ``data.on_device=auto`` chooses
by the device's free memory. TF32 is switched off where results are compared with fp32 (cuDNN
and cuBLAS use it for fp32 by default on recent GPUs).

The augmentation replay records every random draw (any aten op tagged ``nondeterministic_seeded``,
kornia's included) on one run and feeds the same values to the other: the parameters are then
identical by construction whatever op draws them. One test, on CPU, checks the tape itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.data import DataLoader

import augment
import models
from tests.conftest import tiny_config
from tests.test_compile import AA, _classifier, _step
from tests.test_device_data import _batches, _Recorder, _same
from train.config import load_config
from train.data import build_datamodule
from train.data import device_loader as device_loader_module
from train.data.device_loader import DeviceBatches, use_on_device
from train.fit import fit

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda")  # what these tests are about
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason="needs CUDA (run on a GPU machine: make gpu-check or pytest -m cuda)"
)
PRESETS = augment.list_presets()


def cuda_test(fn: Any) -> Any:
    """Mark ``fn`` as a CUDA test: marker ``cuda``, skipped without CUDA."""
    return pytest.mark.cuda(needs_cuda(fn))


@pytest.fixture
def _no_tf32() -> Iterator[None]:
    """fp32 convolutions and matmuls in fp32 (not TF32) for the duration of a test."""
    cudnn, cublas = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, cublas.allow_tf32
    cudnn.allow_tf32 = cublas.allow_tf32 = False
    yield
    cudnn.allow_tf32, cublas.allow_tf32 = saved


class RandomTape(TorchDispatchMode):
    """Record the output of every random aten op, or (given a tape) replay it in order.

    Replaying copies the recorded values into the op's own output, so the replaying run keeps
    its device and dtype and draws exactly the recorded parameters.
    """

    def __init__(self, tape: list[list[torch.Tensor]] | None = None) -> None:
        super().__init__()
        self.recording = tape is None
        self.tape: list[list[torch.Tensor]] = [] if tape is None else list(tape)
        self.replayed = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        if torch.Tag.nondeterministic_seeded not in func.tags:
            return out
        tensors = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if self.recording:
            self.tape.append([t.detach().cpu().clone() for t in tensors])
            return out
        assert self.tape, f"replay drew more random values than recorded ({func})"
        saved = self.tape.pop(0)
        assert [t.shape for t in tensors] == [s.shape for s in saved], f"{func} differs"
        for t, s in zip(tensors, saved, strict=True):
            t.copy_(s)
        self.replayed += 1
        return out


def _replay(name: str, x: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(output on ``device`` with seed 0, CPU output replaying its draws) of preset ``name``;
    the CPU pipeline is seeded differently, so only the tape can make them agree."""
    cfg = load_config(overrides=[f"augment.presets=[{name}]"]).augment
    first, replay = augment.build(cfg), augment.build(cfg)
    first.reseed(0)
    replay.reseed(1)
    with RandomTape() as tape:
        out = first(x.to(device))
    with RandomTape(tape.tape) as again:
        ref = replay(x)
    assert not again.tape, "the replay drew fewer random values than recorded"
    return out.cpu(), ref


@pytest.mark.parametrize("name", ["translate", "heavy", "randaugment"])
def test_random_tape_replays_an_augmentation_exactly_on_cpu(name: str) -> None:
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out, ref = _replay(name, x, torch.device("cpu"))
    assert torch.equal(out, ref) and not torch.equal(out, x)
    cfg = load_config(overrides=[f"augment.presets=[{name}]"]).augment
    other = augment.build(cfg)
    other.reseed(1)
    assert not torch.equal(other(x), out)  # without the tape, seed 1 draws other parameters


# ------------------------------------------------------------------------------ data path
def _on_cuda() -> SimpleNamespace:
    """What the datamodule reads of a Trainer attached to one CUDA device."""
    strategy = SimpleNamespace(root_device=DEVICE)
    return SimpleNamespace(strategy=strategy, global_rank=0, world_size=1)


@cuda_test
def test_on_device_batches_equal_pinned_dataloader_batches_on_cuda(tmp_path: Path) -> None:
    extra = ("data.batch_size=24",)  # 64 images: batches of 24, 24, 16
    dev = build_datamodule(tiny_config(tmp_path, "data.on_device=true", *extra))
    ref = build_datamodule(tiny_config(tmp_path, "data.on_device=false", *extra))
    dev.trainer, ref.trainer = _on_cuda(), _on_cuda()
    dev_loader, ref_loader = dev.train_dataloader(), ref.train_dataloader()
    assert isinstance(dev_loader, DeviceBatches) and dev_loader.images.device.type == DEVICE.type
    assert isinstance(ref_loader, DataLoader) and ref_loader.pin_memory
    assert next(iter(ref_loader))[0].is_pinned()
    for epoch in (0, 1):
        a, b = _batches(dev_loader, epoch), _batches(ref_loader, epoch)
        assert [len(y) for _, y in a] == [24, 24, 16]
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert xa.device.type == DEVICE.type and xa.dtype == torch.uint8
            assert torch.equal(xa.cpu(), xb) and torch.equal(ya.cpu(), yb)


@cuda_test
def test_fit_on_cuda_trains_on_the_same_batches_on_both_paths(tmp_path: Path) -> None:
    extra = (
        f"trainer.accelerator={DEVICE.type}",
        "trainer.max_epochs=2",
        "augment.presets=[translate,flip]",
        "eval.enabled=false",
    )
    runs = {}
    for path in ("false", "true"):
        rec = _Recorder()
        cfg = tiny_config(tmp_path, f"name={path}", f"data.on_device={path}", *extra)
        fit(cfg, callbacks=[rec])
        assert rec.loader is (DeviceBatches if path == "true" else DataLoader)
        runs[path] = rec.batches
    assert runs["true"][0][0][0].device.type == DEVICE.type  # augmented on the device
    for epoch in (0, 1):
        assert _same(runs["true"][epoch], runs["false"][epoch])


@cuda_test
def test_on_device_auto_keeps_a_fitting_split_on_the_device(tmp_path: Path) -> None:
    dm = build_datamodule(tiny_config(tmp_path, "data.on_device=auto"))
    dm.trainer = _on_cuda()
    loader = dm.train_dataloader()
    assert dm.train_on_device is True
    assert isinstance(loader, DeviceBatches) and loader.images.device.type == DEVICE.type
    free = device_loader_module.free_memory(DEVICE)
    assert free is not None and free > 0
    assert use_on_device("auto", int(0.1 * free), DEVICE)
    assert not use_on_device("auto", int(0.5 * free), DEVICE)


@cuda_test
def test_on_device_auto_falls_back_to_pinned_dataloader_when_the_split_does_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dm = build_datamodule(tiny_config(tmp_path, "data.on_device=auto"))
    dm.trainer = _on_cuda()
    nbytes = dm.split("train").images.nbytes
    # A device whose free memory is 3x the split: the split is over MEMORY_FRACTION (1/4) of it.
    monkeypatch.setattr(device_loader_module, "free_memory", lambda device: 3 * nbytes)
    loader = dm.train_dataloader()
    assert dm.train_on_device is False
    assert isinstance(loader, DataLoader) and loader.pin_memory
    x, y = next(iter(loader))
    assert x.is_pinned() and x.dtype == torch.uint8


# --------------------------------------------------------------------------- augmentation
@cuda_test
@pytest.mark.usefixtures("_no_tf32")
@pytest.mark.parametrize("name", PRESETS)
def test_augmentation_on_cuda_equals_its_cpu_replay(name: str) -> None:
    """Same draws, same images on both devices. Integer shifts and flips are exact; warps and
    colour maps agree to float rounding, except where rounding moves a pixel across a box edge
    or a quantisation step (at most 0.1% of the values)."""
    x = torch.rand(32, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    out, ref = _replay(name, x, DEVICE)
    if name in ("none", "translate", "flip"):
        assert torch.equal(out, ref)
        return
    diff = (out - ref).abs()
    off = (diff > 1e-4).float().mean().item()
    assert off <= 1e-3, f"{name}: {off:.2%} of values differ by more than 1e-4"
    assert diff.mean().item() < 1e-4


# ----------------------------------------------------------------------------- the model
@cuda_test
@pytest.mark.usefixtures("_no_tf32")
@pytest.mark.parametrize(("downsample", "filt_size"), [("conv", 1), ("maxpool", 3)])
def test_aps_is_exactly_invariant_to_circular_shifts_on_cuda(
    downsample: str, filt_size: int
) -> None:
    torch.manual_seed(0)
    cfg = {
        "name": "cnn",
        "widths": [8, 16, 16],
        "downsample": downsample,
        "down_kernel": 3,
        "padding_mode": "circular",
        "antialias": {"method": "aps", "filt_size": filt_size},
    }
    model = models.build(cfg, num_classes=10).to(DEVICE).eval()
    for m in model.modules():  # non-trivial eval-mode BatchNorm
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(8, 3, 32, 32, device=DEVICE)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        y = model(x)
        shifts = [torch.randint(0, 32, (2,), generator=gen).tolist() for _ in range(8)]
        worst = max((model(torch.roll(x, s, (2, 3))) - y).abs().max().item() for s in shifts)
        baseline = models.build({**cfg, "antialias": {"method": "none"}}, 10).to(DEVICE).eval()
        base_change = (baseline(torch.roll(x, (1, 1), (2, 3))) - baseline(x)).abs().max().item()
    assert worst <= 1e-4, worst
    assert base_change > 1e-3  # the same network with plain subsampling is not invariant


@cuda_test
@pytest.mark.usefixtures("_no_tf32")
@pytest.mark.parametrize(
    "cfg",
    [{"name": "cnn"}, {"name": "timm:resnet18", "small_input": True}],
    ids=["cnn", "resnet18"],
)
def test_bf16_autocast_logits_are_close_to_fp32(cfg: dict[str, Any]) -> None:
    torch.manual_seed(0)
    net = models.build(cfg, num_classes=10).to(DEVICE).eval()
    x = torch.rand(64, 3, 32, 32, device=DEVICE)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast(DEVICE.type, torch.bfloat16):
            low = net(x).float()

    def centred(t: torch.Tensor) -> torch.Tensor:  # softmax ignores a per-image offset
        return t - t.mean(dim=1, keepdim=True)

    rel = ((centred(low) - centred(ref)).norm() / centred(ref).norm()).item()
    assert rel < 0.03, f"bf16 logits differ from fp32 by {rel:.2%} (relative L2)"


@cuda_test
def test_fit_with_bf16_mixed_precision_on_cuda(tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path, f"trainer.accelerator={DEVICE.type}", "trainer.precision=bf16-mixed", *AA
    )
    result = fit(cfg)
    state = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    weights = [v for v in state["state_dict"].values() if v.is_floating_point()]
    assert weights and all(v.dtype == torch.float32 and v.isfinite().all() for v in weights)
    assert 0.0 <= result.accuracy("typical") <= 1.0


@cuda_test
@pytest.mark.usefixtures("_no_tf32")
def test_inductor_compiled_model_equals_eager_on_cuda() -> None:
    """APS with a blur (both antialiasing kernels) and channels-last, training and eval mode."""
    aa = ("model.antialias.method=aps", "model.antialias.filt_size=3", "model.channels_last=true")
    x = torch.rand(8, 3, 16, 16, device=DEVICE)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2], device=DEVICE)
    eager = _classifier(*aa).to(DEVICE)
    compiled = _classifier(*aa, "model.compile=true").to(DEVICE)  # the default backend, inductor
    assert compiled.net._compiled_call_impl is not None
    ref_logits, ref_grads = _step(eager, x, y)
    logits, grads = _step(compiled, x, y)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-3, atol=1e-4)
    for k, g in ref_grads.items():
        torch.testing.assert_close(grads[k], g, rtol=1e-3, atol=1e-4, msg=k)
    eager.eval(), compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-3, atol=1e-4)
