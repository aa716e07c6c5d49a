"""Typicality: how far a held-out image lies from the training images in a feature space.

The score of an image is the mean distance to its ``k`` nearest training images, in ``pixels``
(images downsampled to ``pixel_size`` and flattened) or ``features`` (a model's penultimate
features: the input of its last ``nn.Linear``). Distances are computed in chunks with a running
top-k, so memory stays bounded for tens of thousands of reference images.

The features are the evaluated model's own unless ``eval.typicality.checkpoint`` names one
reference model (:func:`reference_model`): then the space, and so which images fall in which
typicality bin, is the same for every model a study compares (as it is for ``pixels``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eval.views import center_crop, to_float
from invlab.config import ConfigError, as_config

METHODS = ("none", "pixels", "features")


def last_linear(model: nn.Module) -> nn.Linear | None:
    """The model's last ``nn.Linear`` in registration order (the classifier), if any."""
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            found = module
    return found


class PenultimateFeatures:
    """Captures the input of the model's last ``nn.Linear`` on every forward (pre-hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.layer = last_linear(model)
        self.features: Tensor | None = None
        self._handle = None

    @property
    def available(self) -> bool:
        return self.layer is not None

    def _hook(self, _module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        self.features = inputs[0].flatten(1)

    def __enter__(self) -> PenultimateFeatures:
        if self.layer is not None:
            self._handle = self.layer.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.features = None

    def pop(self) -> Tensor | None:
        out, self.features = self.features, None
        return out


def reference_model(path: str) -> nn.Module:
    """The model of one of invlab's checkpoints, in eval mode, taking float [0, 1] images: its
    stored normalisation (kornia's ``Normalize``) then its network, loaded strictly. Raises
    ``CheckpointError`` for a file that is not such a checkpoint."""
    import kornia
    from omegaconf import OmegaConf

    import models
    from models.checkpoint import CheckpointError, lightning_state, read_config, require_file

    file = require_file(path)
    stored, loaded = read_config(file), lightning_state(file)
    if stored is None or loaded is None or loaded[1] is None:
        raise CheckpointError(
            f"eval.typicality.checkpoint='{path}' is not a checkpoint of an invlab run (it "
            f"needs the model config, the normalisation and the class count the run stores). "
            f"Name a run's checkpoints/last.ckpt, or use eval.typicality.method=pixels."
        )
    cfg = as_config(stored)
    state, num_classes = loaded
    keep = OmegaConf.merge(cfg.model, {"init_from": None, "pretrained": None})
    net = models.build(keep, num_classes=int(num_classes))
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()}, strict=True)
    mean, std = torch.tensor(list(cfg.data.mean)), torch.tensor(list(cfg.data.std))
    return nn.Sequential(kornia.enhance.Normalize(mean, std), net).eval()


def knn_distance(
    queries: Tensor,
    reference: Tensor,
    k: int,
    chunk_size: int = 4096,
) -> Tensor:
    """Mean Euclidean distance of each query ``[Q, D]`` to its ``k`` nearest rows of ``reference``.

    Queries and reference rows are processed in chunks of ``chunk_size``; a running top-k keeps
    the memory at ``O(chunk_size^2)``.
    """
    if reference.shape[0] < k:
        raise ConfigError(
            f"eval.typicality.k={k} nearest neighbours need at least {k} reference images, "
            f"got {reference.shape[0]}."
        )
    out = []
    for q in queries.split(chunk_size):
        best = q.new_full((q.shape[0], 0), float("inf"))
        for r in reference.split(chunk_size):
            d = torch.cdist(q.float(), r.to(q.device).float())
            both = torch.cat([best, d], 1)
            best = both.topk(min(k, both.shape[1]), dim=1, largest=False).values
        out.append(best.mean(1))
    return torch.cat(out) if out else queries.new_zeros(0)


def pixel_embedding(images: Tensor, size: int, pixel_size: int) -> Tensor:
    """``[N, 3 * pixel_size^2]``: central crop downsampled (antialiased) and flattened."""
    x = to_float(center_crop(images, size))
    x = F.interpolate(x, size=(pixel_size, pixel_size), mode="bilinear", antialias=True)
    return x.flatten(1)


def feature_embedding(
    model: nn.Module,
    images: Tensor,
    size: int,
    *,
    device: torch.device,
    batch_size: int = 512,
    hook: PenultimateFeatures | None = None,
) -> Tensor:
    """``[N, D]`` penultimate features of the central crops (model already in eval mode)."""
    own = hook is None
    hook = hook or PenultimateFeatures(model).__enter__()
    if not hook.available:
        raise ConfigError(
            "eval.typicality.method=features needs a model with an nn.Linear classifier; "
            "use eval.typicality.method=pixels."
        )
    try:
        out = []
        for chunk in images.split(batch_size):
            model(to_float(center_crop(chunk.to(device), size)))
            out.append(hook.pop())
        return torch.cat(out)
    finally:
        if own:
            hook.__exit__()


def embedder(
    method: str,
    *,
    model: nn.Module,
    size: int,
    pixel_size: int,
    device: torch.device,
    batch_size: int = 512,
    hook: PenultimateFeatures | None = None,
) -> Callable[[Tensor], Tensor]:
    """A function mapping uint8 images to their typicality embedding for ``method``."""
    if method == "pixels":
        return lambda images: torch.cat(
            [pixel_embedding(c.to(device), size, pixel_size) for c in images.split(batch_size)]
        )
    if method == "features":
        return lambda images: feature_embedding(
            model, images, size, device=device, batch_size=batch_size, hook=hook
        )
    raise ValueError(f"Unknown typicality method {method!r}; choose one of {', '.join(METHODS)}.")


def quantile_masks(scores: Tensor, quantile: float) -> tuple[Tensor, Tensor]:
    """(typical, atypical) boolean masks: the nearest and the farthest ``quantile`` of images."""
    if not 0 < quantile <= 0.5:
        raise ConfigError(f"eval.typicality.quantile must be in (0, 0.5], got {quantile}.")
    s = scores.double()
    lo, hi = torch.quantile(s, quantile), torch.quantile(s, 1.0 - quantile)
    return s <= lo, s >= hi


def bin_index(scores: Tensor, n_bins: int) -> tuple[Tensor, Tensor]:
    """Equal-count bins of the scores: (bin index per image ``[N]``, edges ``[n_bins + 1]``)."""
    s = scores.double()
    edges = torch.quantile(s, torch.linspace(0, 1, n_bins + 1, dtype=torch.float64))
    idx = torch.bucketize(s, edges[1:-1], right=True).clamp_(0, n_bins - 1)
    return idx, edges


def binned_mean(values: Tensor, idx: Tensor, n_bins: int) -> list[float | None]:
    """Mean of per-image ``values`` in each bin (None for an empty bin)."""
    v = values.double().flatten()
    total = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, v)
    count = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, torch.ones_like(v))
    return [float(t / c) if c > 0 else None for t, c in zip(total, count, strict=True)]
