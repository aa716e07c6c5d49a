"""Mixup and CutMix: each image is mixed with a partner from its batch, and so are the targets.

Semantics follow timm's ``Mixup`` (Zhang et al. 2018; Yun et al. 2019): the weight of an image's
own content is drawn from Beta(alpha, alpha); CutMix pastes the partner's pixels inside a box of
side ``sqrt(1 - lam)`` times the image's, centred uniformly and clipped at the border, and the
weight is corrected to the box that was actually pasted. Targets become probabilities: one-hot
rows mixed with the same weights (label smoothing is applied later, by the loss).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SeededOp

MixParams = dict[str, Tensor]


def _beta(alpha: float, n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """``n`` draws from Beta(alpha, alpha) with ``generator`` (two gamma draws, as torch does)."""
    conc = torch.full((2, n), float(alpha), device=device, dtype=torch.float64)
    g = torch._standard_gamma(conc, generator=generator)  # float64: small alphas underflow less
    total = g[0] + g[1]
    return torch.where(total > 0, g[0] / total, 0.5).float()


class RandomMix(SeededOp):
    """Mixup (``mixup_alpha``), CutMix (``cutmix_alpha``), or both, chosen per image.

    With both alphas set each image takes CutMix with probability ``switch_p`` and Mixup
    otherwise (timm's ``switch_prob``, drawn per image here rather than once per batch). An alpha
    of ``None`` turns that kind off. Partners are a random permutation of the batch (an image may
    draw itself, which leaves it unchanged); ``same_on_batch`` shares the weight, the box and the
    kind across the batch, not the pairing.

    Drawing and applying are separate: :meth:`sample` returns the parameters (``pairs``,
    ``lam`` — the weight of an image's own content —, ``box`` ``(y0, y1, x0, x1)``, ``cutmix``),
    :meth:`mix` applies them, so the same parameters give the same images and targets again.
    """

    mixes_targets = True

    def __init__(
        self,
        mixup_alpha: float | None = None,
        cutmix_alpha: float | None = None,
        switch_p: float = 0.5,
        same_on_batch: bool = False,
    ) -> None:
        super().__init__()
        for key, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if value is not None and not value > 0:
                raise ValueError(f"{key} must be > 0, got {value}.")
        if mixup_alpha is None and cutmix_alpha is None:
            raise ValueError("RandomMix needs mixup_alpha, cutmix_alpha or both.")
        if not 0 <= switch_p <= 1:
            raise ValueError(f"switch_p must be a probability in [0, 1], got {switch_p}.")
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.switch_p = float(switch_p)
        self.same_on_batch = same_on_batch

    # ------------------------------------------------------------------------ parameters
    def sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> MixParams:
        """Draw the parameters for a batch of ``shape`` [B, C, H, W] on ``device``."""
        b, h, w = int(shape[0]), int(shape[-2]), int(shape[-1])
        device = torch.device(device)
        n = 1 if self.same_on_batch else b
        pairs = torch.randperm(b, device=device, generator=generator)
        if self.mixup_alpha is None:
            cutmix = torch.ones(n, dtype=torch.bool, device=device)
        elif self.cutmix_alpha is None:
            cutmix = torch.zeros(n, dtype=torch.bool, device=device)
        else:
            cutmix = torch.rand(n, device=device, generator=generator) < self.switch_p
        ones = torch.ones(n, device=device)
        lam_mix = _beta(self.mixup_alpha, n, device, generator) if self.mixup_alpha else ones
        lam_cut = _beta(self.cutmix_alpha, n, device, generator) if self.cutmix_alpha else ones
        # timm's rand_bbox: a box of side sqrt(1 - lam) * side, centre uniform, clipped.
        ratio = (1 - lam_cut).clamp(min=0).sqrt()
        cut_h, cut_w = (ratio * h).long(), (ratio * w).long()
        cy = torch.randint(0, h, (n,), device=device, generator=generator)
        cx = torch.randint(0, w, (n,), device=device, generator=generator)
        y0, y1 = (cy - cut_h // 2).clamp(0, h), (cy + cut_h // 2).clamp(0, h)
        x0, x1 = (cx - cut_w // 2).clamp(0, w), (cx + cut_w // 2).clamp(0, w)
        box = torch.stack([y0, y1, x0, x1], dim=1)
        area = ((y1 - y0) * (x1 - x0)).float() / (h * w)  # the corrected lam of CutMix is 1 - area
        box = torch.where(cutmix[:, None], box, torch.zeros_like(box))  # mixup images: no box
        lam = torch.where(cutmix, 1 - area, lam_mix)
        return {
            "pairs": pairs,
            "lam": lam.expand(b).contiguous(),
            "box": box.expand(b, 4).contiguous(),
            "cutmix": cutmix.expand(b).contiguous(),
        }

    # -------------------------------------------------------------------------- applying
    @staticmethod
    def box_mask(params: MixParams, h: int, w: int) -> Tensor:
        """[B, 1, H, W] bool: the pixels each image takes from its partner (CutMix images)."""
        box = params["box"]
        rows = torch.arange(h, device=box.device)
        cols = torch.arange(w, device=box.device)
        in_y = (rows >= box[:, :1]) & (rows < box[:, 1:2])  # [B, H]
        in_x = (cols >= box[:, 2:3]) & (cols < box[:, 3:4])  # [B, W]
        return (in_y[:, :, None] & in_x[:, None, :])[:, None]

    def mix(
        self, x: Tensor, targets: Tensor | None, params: MixParams
    ) -> tuple[Tensor, Tensor | None]:
        """Apply ``params`` to images ``x`` [B, C, H, W] and probability targets [B, K]."""
        pairs = params["pairs"].to(x.device)
        partner = x.index_select(0, pairs)
        lam = params["lam"].to(device=x.device, dtype=x.dtype)
        cutmix = params["cutmix"].to(x.device)[:, None, None, None]
        weight = lam[:, None, None, None]
        blended = x * weight + partner * (1 - weight)
        mask = self.box_mask({"box": params["box"].to(x.device)}, x.shape[-2], x.shape[-1])
        pasted = torch.where(mask, partner, x)
        out = torch.where(cutmix, pasted, blended)
        if targets is None:
            return out, None
        lam_t = lam.to(targets.dtype)[:, None]
        partner_t = targets.index_select(0, pairs.to(targets.device))
        return out, targets * lam_t + partner_t * (1 - lam_t)

    def forward(
        self, x: Tensor, generator: torch.Generator | None = None, targets: Tensor | None = None
    ) -> Tensor | tuple[Tensor, Tensor | None]:
        """Mixed images; with ``targets`` (probabilities [B, K]) the pair (images, targets)."""
        out, mixed = self.mix(x, targets, self.sample(x.shape, x.device, generator))
        return out if targets is None else (out, mixed)

    def extra_repr(self) -> str:
        return (
            f"mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
            f"switch_p={self.switch_p}, same_on_batch={self.same_on_batch}"
        )
