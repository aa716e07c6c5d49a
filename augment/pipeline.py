"""The augmentation module: ops applied in order, seeded, per-sample, with no state-dict entries."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SeededOp


def strip_state(module: nn.Module) -> nn.Module:
    """Turn every parameter and buffer under ``module`` into a non-persistent buffer.

    Augmentations are not trained here, so a checkpoint must not depend on the policy: kornia's
    auto policies register learnable probabilities/magnitudes (39 entries for RandAugment), which
    would also reach the optimizer. Non-persistent buffers still follow ``.to(device)``.
    """
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                del sub._parameters[name]
                sub.register_buffer(name, param.detach(), persistent=False)
        sub._non_persistent_buffers_set.update(sub._buffers)
    return module


@contextmanager
def _seeded_global_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed torch's global RNG (CPU and ``device``) for the block, then restore its state."""
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield
        return
    mod = torch.get_device_module(device)
    index = device.index if device.index is not None else getattr(mod, "current_device", int)()
    select = mod.device(index) if hasattr(mod, "device") else nullcontext()
    with torch.random.fork_rng(devices=[index], device_type=device.type), select:
        torch.default_generator.manual_seed(seed)
        mod.manual_seed(seed)
        yield


class Augmenter(nn.Module):
    """Apply ``ops`` in order to a float batch [B, C, H, W] in [0, 1] on any device.

    Seeding: a private CPU generator (``reseed``) draws one 63-bit seed per call. Our own ops draw
    from a generator on the batch's device seeded with it; kornia ops, which sample from torch's
    global RNG, run inside ``torch.random.fork_rng`` with the global RNG seeded from it, so their
    draws are reproducible and the caller's global RNG state is left untouched. Until ``reseed``
    is called the stream starts from ``torch.initial_seed()`` (set by ``seed_everything``). The
    Classifier reseeds at every epoch from (seed, global rank, epoch): under DDP each rank draws
    different parameters, and a run resumed at an epoch boundary draws the same ones. Augments
    in train and eval mode alike (the caller decides when).

    Ops that mix images of the batch (``mixes_targets``: mixup, cutmix) also mix the targets:
    :meth:`with_targets` turns labels into probabilities over ``num_classes`` for them and
    returns the labels untouched when no op mixes. ``forward`` returns the images only.
    """

    def __init__(
        self,
        ops: Sequence[nn.Module] = (),
        names: Sequence[str] = (),
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.ops = nn.ModuleList(strip_state(op) for op in ops)
        self.names = list(names)
        self.num_classes = num_classes
        self._seed_gen = torch.Generator()
        self._device_gens: dict[torch.device, torch.Generator] = {}
        self._rng_device = torch.device("cpu")
        self.reseed(torch.initial_seed())

    def reseed(self, seed: int) -> None:
        """Restart the augmentation stream from ``seed`` (does not touch torch's global RNG)."""
        self._seed_gen.manual_seed(int(seed) % 2**63)

    def get_rng_state(self) -> Tensor:
        return self._seed_gen.get_state()

    def set_rng_state(self, state: Tensor) -> None:
        self._seed_gen.set_state(state)

    def __getstate__(self) -> dict:
        # Generators travel as plain bytes: torch shares tensors/generators with spawned DDP
        # workers through shared memory, which fails where /dev/shm is small.
        state = self.__dict__.copy()
        state["_seed_gen"] = bytes(self._seed_gen.get_state().numpy())
        state["_device_gens"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        seed_state = state.pop("_seed_gen")
        self.__dict__.update(state)
        self._seed_gen = torch.Generator()
        self._seed_gen.set_state(torch.frombuffer(bytearray(seed_state), dtype=torch.uint8))

    def _device_gen(self, device: torch.device, seed: int) -> torch.Generator:
        gen = self._device_gens.get(device)
        if gen is None:
            gen = self._device_gens[device] = torch.Generator(device=device)
        return gen.manual_seed(seed)

    @property
    def mixes(self) -> bool:
        """Whether an op mixes images of the batch (the targets then become probabilities)."""
        return any(getattr(op, "mixes_targets", False) for op in self.ops)

    def forward(self, x: Tensor) -> Tensor:
        """The augmented images (mixing ops mix them too; see :meth:`with_targets`)."""
        return self._run(x, None)[0]

    def with_targets(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Augmented images and their targets: ``labels`` as they are when no op mixes images,
        else probabilities [B, num_classes] (one-hot rows, mixed like the images)."""
        if not self.mixes:
            return self(x), labels
        if self.num_classes is None:
            raise ValueError("Mixing presets need augment.build(cfg, num_classes=...).")
        targets = F.one_hot(labels.long(), self.num_classes).to(x.dtype)
        out, mixed = self._run(x, targets)
        assert mixed is not None
        return out, mixed

    def _run(self, x: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if not self.ops:
            return x, targets
        if self._rng_device != x.device:  # kornia samples on the device its module was moved to
            self.to(x.device)
            self._rng_device = x.device
        seed = int(torch.randint(2**63 - 1, (1,), generator=self._seed_gen))
        gen = self._device_gen(x.device, seed)
        with _seeded_global_rng(x.device, seed):
            for op in self.ops:
                if getattr(op, "mixes_targets", False):
                    x, targets = op.mix(x, targets, op.sample(x.shape, x.device, gen))
                elif isinstance(op, SeededOp):
                    x = op(x, generator=gen)
                else:
                    x = op(x)
        return x, targets

    def extra_repr(self) -> str:
        return f"presets/ops: {' + '.join(self.names) or 'none'}"
