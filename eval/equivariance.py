"""Per-layer shift equivariance: where inside a network a shift of the input stops being a shift.

For a layer with feature map ``f(x)`` (``[C, h, w]`` for an input of ``H x W`` pixels) and a
circular shift ``t = (dy, dx)`` of the input (``torch.roll``), the profile compares the features
of the shifted image, ``f(t x)``, with the shifted features of the image, ``t f(x)``:

* **exact rule** — when the layer's cumulative stride ``s = H / h`` (per axis) is an integer
  that divides the shift, the feature map itself is rolled by ``(dy / s, dx / s)`` and compared
  with ``f(t x)`` as it is: no resampling;
* **resampling rule** — otherwise both maps are first brought back to input resolution (bilinear
  interpolation with circular padding, :func:`circular_upsample`), the upsampled ``f(x)`` is
  rolled by ``(dy, dx)`` and compared with the upsampled ``f(t x)``.

A layer that commutes with circular shifts (stride-1 convolutions with circular padding) scores
exactly 0 under the exact rule; under the resampling rule a non-zero distance also contains what
bilinear interpolation cannot restore, so only compare such numbers with each other.

Distances, per image and shift (``a = t f(x)``, the reference; ``b = f(t x)``):

* ``cosine_distance``: ``1 - cos(a[:, i, j], b[:, i, j])`` over channels, averaged over positions
  (a position where both vectors are zero counts as distance 0, one zero vector as 1);
* ``l2``: ``||a - b|| / ||a||`` over the whole map (0 when both are zero).

The ``penultimate`` layer is the classifier's input (the input of the model's last ``nn.Linear``,
globally pooled features in a ``gap`` head): it is compared without any shift, ``p(t x)`` against
``p(x)``, which measures invariance rather than equivariance.

Each image's value is the mean over the non-zero shifts; the report gives per split and layer the
mean over images with a bootstrap interval (``eval.metrics.bootstrap_ci``), the mean over images
at every shift (a map over the shift grid for ``trajectory=grid``) and, for every split other
than ``typical``, the difference to ``typical`` with its interval.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eval.metrics import bootstrap_ci, bootstrap_diff_ci
from eval.typicality import PenultimateFeatures
from eval.views import to_float
from invlab.config import ConfigError
from invlab.imageops import center_crop
from invlab.suggest import did_you_mean

AUTO = "auto"
PENULTIMATE = "penultimate"
METRICS = ("cosine_distance", "l2")
TRAJECTORIES = ("grid", "diagonal")
REFERENCE = "typical"
PREFIX = "equivariance"
CIRCULAR, CROP = "circular", "crop"  # eval.equivariance.protocol

__all__ = [
    "auto_layers",
    "circular_upsample",
    "compare_shifted",
    "equivariance_profile",
    "layer_distances",
    "profile_splits",
    "scalars",
    "shift_grid",
]


# ------------------------------------------------------------------------------- shifts
def shift_grid(max_shift: int, trajectory: str = "grid") -> list[tuple[int, int]]:
    """Circular shifts ``(dy, dx)`` within ``±max_shift`` px, row-major: every pair of the
    ``(2 m + 1) x (2 m + 1)`` grid, or the diagonal ``(k, k)``; ``(0, 0)`` included."""
    if trajectory not in TRAJECTORIES:
        raise ValueError(
            f"trajectory must be one of {', '.join(TRAJECTORIES)}, got {trajectory!r}."
        )
    m = int(max_shift)
    if m < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}.")
    steps = range(-m, m + 1)
    if trajectory == "diagonal":
        return [(k, k) for k in steps]
    return [(dy, dx) for dy in steps for dx in steps]


# ----------------------------------------------------------------------------- resampling
def _circular_axis(f: Tensor, size: int, dim: int) -> Tensor:
    """Linear interpolation of ``f`` along ``dim`` to ``size`` samples, indices wrapping around
    (pixel centres aligned as ``F.interpolate(..., align_corners=False)`` aligns them)."""
    n = f.shape[dim]
    if n == size:
        return f
    pos = (torch.arange(size, device=f.device, dtype=torch.float64) + 0.5) * (n / size) - 0.5
    low = torch.floor(pos)
    frac = (pos - low).to(f.dtype)
    i0 = low.long() % n
    i1 = (i0 + 1) % n
    shape = [1] * f.ndim
    shape[dim] = size
    return f.index_select(dim, i0) * (1 - frac).view(shape) + f.index_select(dim, i1) * frac.view(
        shape
    )


def circular_upsample(f: Tensor, size: tuple[int, int]) -> Tensor:
    """``f [..., h, w]`` bilinearly resampled to ``size = (H, W)`` with circular padding: the
    map is treated as one period of a periodic signal, so rolling the input of a layer and
    rolling its upsampled output agree wherever the layer itself commutes with the roll."""
    return _circular_axis(_circular_axis(f, size[0], f.ndim - 2), size[1], f.ndim - 1)


def _stride(extent: int, n: int) -> int | None:
    """The cumulative stride of an axis when it is an integer, else None."""
    return extent // n if n and extent % n == 0 else None


def _overlap(shifted: Tensor, reference: Tensor, ky: int, kx: int) -> tuple[Tensor, Tensor]:
    """``(a, b)``: the reference translated by ``(ky, kx)`` (no wrap-around) and ``shifted``,
    both cut to where the two maps overlap: ``b[i, j]`` is compared with ``a[i - ky, j - kx]``."""
    h, w = reference.shape[-2:]
    y0, y1, x0, x1 = max(0, ky), h + min(0, ky), max(0, kx), w + min(0, kx)
    b = shifted[..., y0:y1, x0:x1]
    a = reference[..., y0 - ky : y1 - ky, x0 - kx : x1 - kx]
    return a, b


def compare_shifted(
    shifted: Tensor,
    reference: Tensor,
    shift: tuple[int, int],
    input_size: tuple[int, int],
    circular: bool = True,
) -> tuple[Tensor, Tensor, bool]:
    """Per-image ``(cosine_distance, l2, exact)`` between ``shifted = f(t x)`` and the reference
    ``reference = f(x)`` rolled by ``shift`` (both ``[N, C, h, w]``; see the module docstring for
    the exact and the resampling rule). ``[N, D]`` features are compared as they are (no shift).
    ``circular=False`` (the crop protocol: new content enters at the border instead of wrapping
    around) translates instead of rolling, resamples without wrap-around, and compares the two
    maps where they overlap."""
    if reference.ndim == 2:
        a, b = reference.float()[:, :, None, None], shifted.float()[:, :, None, None]
        exact = True
    else:
        (h, w), (hh, ww) = reference.shape[-2:], input_size
        sy, sx = _stride(hh, h), _stride(ww, w)
        dy, dx = shift
        exact = sy is not None and sx is not None and dy % sy == 0 and dx % sx == 0
        if exact and circular:
            a = torch.roll(reference.float(), (dy // sy, dx // sx), dims=(-2, -1))
            b = shifted.float()
        elif exact:
            a, b = _overlap(shifted.float(), reference.float(), dy // sy, dx // sx)
        elif circular:
            a = torch.roll(circular_upsample(reference.float(), input_size), shift, dims=(-2, -1))
            b = circular_upsample(shifted.float(), input_size)
        else:
            up = lambda f: F.interpolate(f, size=input_size, mode="bilinear")  # noqa: E731
            a, b = _overlap(up(shifted.float()), up(reference.float()), dy, dx)
    return _cosine_distance(a, b), _normalised_l2(a, b), exact


def _cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """``[N]``: 1 - cosine over channels, averaged over positions (0 where both are zero)."""
    eps = torch.finfo(a.dtype).tiny
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(1) / (na * nb).clamp_min(eps)
    both_zero = (na <= eps) & (nb <= eps)
    dist = torch.where(both_zero, torch.zeros_like(cos), 1.0 - cos)
    return dist.clamp_min(0.0).flatten(1).mean(1)


def _normalised_l2(a: Tensor, b: Tensor) -> Tensor:
    """``[N]``: ``||a - b|| / ||a||`` over each whole map (0 where both are zero)."""
    diff = (a - b).flatten(1).norm(dim=1)
    ref = a.flatten(1).norm(dim=1)
    return torch.where(diff == 0, torch.zeros_like(diff), diff / ref.clamp_min(1e-12))


# ----------------------------------------------------------------------------------- layers
def _outputs_of(
    net: nn.Module, probe: Tensor, model: nn.Module
) -> list[tuple[str, Any, Any, bool]]:
    """``(name, input shape, output shape, takes the network's input)`` of every named submodule
    of ``net`` in the order their forward passes finish, from one forward of ``model`` on
    ``probe``."""
    found: list[tuple[str, Any, Any, bool]] = []
    net_input: list[Any] = []

    def keep_input(_m: nn.Module, inputs: tuple[Any, ...]) -> None:
        net_input.append(inputs[0] if inputs else None)

    def hook(name: str):
        def record(_m: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            x = inputs[0] if inputs else None
            shape_in = tuple(x.shape) if isinstance(x, Tensor) else None
            shape_out = tuple(output.shape) if isinstance(output, Tensor) else None
            first = x is not None and bool(net_input) and x is net_input[0]
            found.append((name, shape_in, shape_out, first))

        return record

    handles = [net.register_forward_pre_hook(keep_input)]
    for name, module in net.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in handles:
            h.remove()
    return found


def auto_layers(model: nn.Module, image_size: int, net: nn.Module | None = None) -> list[str]:
    """The output of every downsampling stage of ``net`` (default: ``model.net`` or ``model``),
    in forward order, found on one dry forward pass of ``model`` on an ``image_size`` image.

    A module downsamples when its output map is smaller than its input map. A *stage* is the
    outermost such module inside which the resolution drops only once (every downsampling
    module inside it ends at its own output resolution) and which, when it holds submodules,
    does not start from the network's input (a container of the full-resolution layers and the
    first downsampling is not a stage; its downsampling child is). For the built-in CNN these
    are the ``down<i>`` blocks (their normalisation and activation included), for a ResNet its
    stem layers and its ``layer<i>``. A global pooling (a 1 x 1 output) is no stage:
    ``penultimate`` covers it."""
    net = net if net is not None else getattr(model, "net", model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    probe = torch.zeros(1, 3, image_size, image_size, device=device)
    found = _outputs_of(net, probe, model)
    first: dict[str, tuple[Any, Any, bool]] = {}
    for name, shape_in, shape_out, from_input in found:
        first.setdefault(name, (shape_in, shape_out, from_input))
    modules = dict(net.named_modules())

    def drops(name: str) -> bool:
        shape_in, shape_out, _ = first[name]
        if shape_in is None or shape_out is None or len(shape_in) != 4 or len(shape_out) != 4:
            return False
        if shape_out[-2:] == (1, 1):  # global pooling: the penultimate features' business
            return False
        return shape_out[-2] < shape_in[-2] or shape_out[-1] < shape_in[-1]

    downs = [n for n in first if drops(n)]

    def stage(name: str) -> bool:
        inner = [d for d in downs if d.startswith(f"{name}.")]
        if any(first[d][1][-2:] != first[name][1][-2:] for d in inner):
            return False  # more than one drop inside
        has_children = next(modules[name].children(), None) is not None
        return not (has_children and first[name][2])

    stages = [n for n in downs if stage(n)]
    outer = [n for n in stages if not any(n.startswith(f"{s}.") for s in stages if s != n)]
    order = {entry[0]: i for i, entry in reversed(list(enumerate(found)))}
    return sorted(outer, key=lambda n: order[n])


@dataclass(frozen=True)
class FirstDownsampling:
    """The network's first layer that lowers the resolution: its name, kernel and stride (None
    when it has no ``kernel_size``/``stride``, e.g. a plug-in) and whether its input is the
    network's input (pixels) or a feature map."""

    name: str
    module: nn.Module
    kernel: int | None
    stride: int | None
    sees_pixels: bool


def _first_int(value: Any) -> int | None:
    value = value[0] if isinstance(value, (tuple, list)) else value
    return int(value) if isinstance(value, int) else None


def as_downsampling(
    name: str, module: nn.Module, shape_in: Any, shape_out: Any, sees_pixels: bool
) -> FirstDownsampling | None:
    """``module`` as a downsampling layer when it has no submodules and its output map is
    smaller than its input map (a global pooling to 1 x 1 does not count), else None."""
    if next(module.children(), None) is not None or shape_in is None or shape_out is None:
        return None
    if len(shape_in) != 4 or len(shape_out) != 4 or tuple(shape_out[-2:]) == (1, 1):
        return None
    if shape_out[-2] < shape_in[-2] or shape_out[-1] < shape_in[-1]:
        kernel = _first_int(getattr(module, "kernel_size", None))
        stride = _first_int(getattr(module, "stride", None))
        return FirstDownsampling(name, module, kernel, stride, sees_pixels)
    return None


def first_downsampling(
    model: nn.Module, image_size: int, net: nn.Module | None = None
) -> FirstDownsampling | None:
    """The first module without submodules, in forward order, whose output map is smaller than
    its input map (a strided conv, a pooling, a BlurPool's subsampling); None when no layer
    downsamples (a global pooling to 1 x 1 does not count)."""
    net = net if net is not None else getattr(model, "net", model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    probe = torch.zeros(1, 3, image_size, image_size, device=device)
    modules = dict(net.named_modules())
    for name, shape_in, shape_out, from_input in _outputs_of(net, probe, model):
        found = as_downsampling(name, modules[name], shape_in, shape_out, from_input)
        if found is not None:
            return found
    return None


def resolve_layers(
    model: nn.Module, names: Sequence[str], image_size: int, net: nn.Module | None = None
) -> list[str]:
    """``names`` with ``auto`` expanded (:func:`auto_layers` then ``penultimate``), duplicates
    dropped; a name that is no submodule of the network is a ``ConfigError`` with a suggestion."""
    net = net if net is not None else getattr(model, "net", model)
    known = {n for n, _ in net.named_modules() if n}
    out: list[str] = []
    for name in names:
        if name == AUTO:
            out.extend(auto_layers(model, image_size, net))
            out.append(PENULTIMATE)
        elif name == PENULTIMATE or name in known:
            out.append(name)
        else:
            raise ConfigError(
                f"eval.equivariance.layers: {name!r} is not a module of the network."
                f"{did_you_mean(name, known)} Use 'auto', 'penultimate' or a module name such "
                f"as {', '.join(sorted(known)[:4])}."
            )
    return list(dict.fromkeys(out))


class _Capture:
    """Forward hooks keeping the outputs of the named modules of ``net`` (and, for
    ``penultimate``, the input of the last ``nn.Linear``) of the latest forward pass."""

    def __init__(self, net: nn.Module, layers: Sequence[str]) -> None:
        self.layers = list(layers)
        self.outputs: dict[str, Tensor] = {}
        self._handles = []
        self._penultimate = PenultimateFeatures(net) if PENULTIMATE in layers else None
        if self._penultimate is not None and not self._penultimate.available:
            raise ConfigError(
                "eval.equivariance.layers: 'penultimate' needs a model with an nn.Linear "
                "classifier; name the layers instead."
            )
        for name in self.layers:
            if name != PENULTIMATE:
                module = net.get_submodule(name)
                self._handles.append(module.register_forward_hook(self._keep(name)))

    def _keep(self, name: str):
        def hook(_m: nn.Module, _inputs: Any, output: Any) -> None:
            if not isinstance(output, Tensor) or output.ndim not in (2, 4):
                raise ConfigError(
                    f"eval.equivariance.layers: {name!r} does not output a feature map "
                    f"[N, C, H, W] or features [N, D]."
                )
            # a copy: a later in-place activation must not change what was kept
            self.outputs[name] = output.detach().clone()

        return hook

    def __enter__(self) -> _Capture:
        if self._penultimate is not None:
            self._penultimate.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        if self._penultimate is not None:
            self._penultimate.__exit__()

    def run(self, model: nn.Module, x: Tensor) -> dict[str, Tensor]:
        self.outputs = {}
        model(x)
        if self._penultimate is not None:
            self.outputs[PENULTIMATE] = self._penultimate.pop().detach().clone()
        return {name: self.outputs[name] for name in self.layers}


# ------------------------------------------------------------------------------- distances
@dataclass
class LayerDistances:
    """Per layer: ``values[metric]`` ``[N, T]`` (image, shift), the map's ``shape`` and whether
    each shift compared exactly (``exact [T]``)."""

    values: dict[str, Tensor]
    shape: tuple[int, ...]
    exact: list[bool]


def _chunks(images: Tensor, size: int) -> Iterator[Tensor]:
    for start in range(0, images.shape[0], size):
        yield images[start : start + size]


@torch.no_grad()
def layer_distances(
    model: nn.Module,
    images: Tensor,
    layers: Sequence[str],
    shifts: Sequence[tuple[int, int]],
    *,
    net: nn.Module | None = None,
    batch_size: int = 256,
    margin: int | None = None,
) -> dict[str, LayerDistances]:
    """Distances of every layer, image and shift (see the module docstring).

    ``model`` maps float ``[0, 1]`` images ``[N, 3, H, W]`` to logits (it is put in eval mode
    and restored); ``images`` are uint8 or float in ``[0, 1]`` at the model's input size;
    ``layers`` are module names of ``net`` (default ``model.net`` or ``model``) or
    ``penultimate``. Runs on the model's device, ``batch_size`` images per forward pass.
    ``margin``: the crop protocol: ``images`` carry ``margin`` px of real pixels around the model
    window, the reference view is their centre and a shift ``t`` moves the window by ``-t`` (the
    content moves by ``t``, as ``torch.roll`` moves it), never beyond the margin."""
    net = net if net is not None else getattr(model, "net", model)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    m = 0 if margin is None else int(margin)
    if margin is not None and any(max(abs(dy), abs(dx)) > m for dy, dx in shifts):
        raise ConfigError(
            f"The crop protocol needs held-out margins of at least the largest shift "
            f"({max(max(abs(dy), abs(dx)) for dy, dx in shifts)} px), got {m} px: raise "
            f"data.eval_margin_px or use eval.equivariance.protocol=circular."
        )
    size = (int(images.shape[-2]) - 2 * m, int(images.shape[-1]) - 2 * m)

    def view(x: Tensor, shift: tuple[int, int] | None) -> Tensor:
        if margin is None:
            return x if shift is None else torch.roll(x, tuple(shift), dims=(-2, -1))
        dy, dx = shift or (0, 0)
        return x[..., m - dy : m - dy + size[0], m - dx : m - dx + size[1]]

    was_training = model.training
    model.eval()
    per: dict[str, dict[str, list[Tensor]]] = {n: {m: [] for m in METRICS} for n in layers}
    shapes: dict[str, tuple[int, ...]] = {}
    exact: dict[str, list[bool]] = {}
    try:
        with _Capture(net, layers) as capture:
            for chunk in _chunks(images, max(1, int(batch_size))):
                x = to_float(chunk.to(device))
                reference = capture.run(model, view(x, None))
                cols: dict[str, dict[str, list[Tensor]]] = {
                    n: {m: [] for m in METRICS} for n in layers
                }
                flags: dict[str, list[bool]] = {n: [] for n in layers}
                for shift in shifts:
                    out = capture.run(model, view(x, shift))
                    for name in layers:
                        cos, l2, ok = compare_shifted(
                            out[name], reference[name], shift, size, circular=margin is None
                        )
                        cols[name]["cosine_distance"].append(cos.cpu())
                        cols[name]["l2"].append(l2.cpu())
                        flags[name].append(ok)
                for name in layers:
                    shapes[name] = tuple(reference[name].shape[1:])
                    exact[name] = flags[name]
                    for m in METRICS:
                        per[name][m].append(torch.stack(cols[name][m], 1))
    finally:
        model.train(was_training)
    return {
        name: LayerDistances(
            {m: torch.cat(per[name][m]) for m in METRICS}, shapes[name], exact[name]
        )
        for name in layers
    }


# --------------------------------------------------------------------------------- reports
def _stat(values: Tensor, cfg_eval: Any, groups: Tensor | None) -> dict[str, Any]:
    mean, lo, hi = bootstrap_ci(
        values, int(cfg_eval.n_bootstrap), float(cfg_eval.ci_level), int(cfg_eval.seed), groups
    )
    return {"mean": mean, "ci": [lo, hi]}


def _per_image(values: Tensor, shifts: Sequence[tuple[int, int]]) -> Tensor:
    """``[N]``: the mean over the non-zero shifts (the zero shift is 0 by construction)."""
    moving = [i for i, s in enumerate(shifts) if tuple(s) != (0, 0)]
    return values[:, moving].mean(1) if moving else values.new_zeros(values.shape[0])


def _layer_block(
    d: LayerDistances,
    shifts: Sequence[tuple[int, int]],
    trajectory: str,
    image_size: int,
    cfg_eval: Any,
    groups: Tensor | None,
) -> dict[str, Any]:
    """One layer's report: each metric's mean with its interval, its mean at every shift (and
    as a 2-D map over the grid), the feature shape, cumulative stride, exactly compared shifts."""
    block: dict[str, Any] = {}
    for m in METRICS:
        block[m] = _stat(_per_image(d.values[m], shifts), cfg_eval, groups)
    block["by_shift"] = {m: d.values[m].mean(0).tolist() for m in METRICS}
    if trajectory == "grid":
        side = int(round(len(shifts) ** 0.5))
        block["map"] = {m: d.values[m].mean(0).view(side, side).tolist() for m in METRICS}
    block["shape"] = list(d.shape)
    spatial = len(d.shape) == 3
    block["stride"] = [image_size / d.shape[-2], image_size / d.shape[-1]] if spatial else None
    block["exact_shifts"] = int(sum(d.exact))
    return block


def equivariance_profile(
    model: nn.Module,
    images: Tensor,
    cfg_eval: Any,
    *,
    layers: Sequence[str] | None = None,
    groups: Tensor | None = None,
    net: nn.Module | None = None,
    margin: int | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """One split's profile: ``({layer: block}, {layer/metric: per-image values [N]})``.

    ``cfg_eval`` is the ``eval`` section (``equivariance`` for the shifts and layers,
    ``n_bootstrap``, ``ci_level``, ``seed``, ``batch_size``); ``layers`` overrides its layers
    (already resolved); ``groups`` are the instances the images show (bootstrap unit);
    ``margin``: the crop protocol (see :func:`layer_distances`)."""
    eq = cfg_eval.equivariance
    size = int(images.shape[-1]) - 2 * (margin or 0)
    names = layers if layers is not None else resolve_layers(model, list(eq.layers), size, net)
    shifts = shift_grid(int(eq.max_shift_px), str(eq.trajectory))
    dists = layer_distances(
        model, images, names, shifts, net=net, batch_size=int(cfg_eval.batch_size), margin=margin
    )
    blocks = {
        name: _layer_block(d, shifts, str(eq.trajectory), size, cfg_eval, groups)
        for name, d in dists.items()
    }
    values = {
        f"{name}/{m}": _per_image(d.values[m], shifts) for name, d in dists.items() for m in METRICS
    }
    return blocks, values


def _first(images: Any, n: int) -> Tensor:
    """The first ``n`` images of a split (a tensor, or a lazy split indexed by position)."""
    n = min(n, len(images))
    if isinstance(images, Tensor):
        return images[:n]
    return torch.as_tensor(images[torch.arange(n)])


def profile_splits(
    model: nn.Module,
    data: Any,
    splits: Sequence[str],
    cfg_eval: Any,
    image_size: int,
    *,
    net: nn.Module | None = None,
) -> dict[str, Any]:
    """The ``equivariance`` block of an invariance report: every split's profile on its first
    ``eval.equivariance.n_images`` held-out images (``data.split(name).images``, centre-cropped
    to ``image_size``), the same layers for every split, and each split's difference to
    ``typical``. ``{"protocol", "layers", "splits": {split: {layer: block}}}``."""
    eq = cfg_eval.equivariance
    layers = resolve_layers(model, list(eq.layers), int(image_size), net)
    report: dict[str, Any] = {"splits": {}}
    values: dict[str, dict[str, Tensor]] = {}
    groups: dict[str, Tensor | None] = {}
    counts: dict[str, int] = {}
    crop = str(eq.get("protocol", CIRCULAR)) == CROP
    m = int(eq.max_shift_px)
    for name in splits:
        split = data.split(name)
        images = _first(split.images, int(eq.n_images))
        # crop: the model window and m px of the split's real margin around it
        images = center_crop(images, int(image_size) + (2 * m if crop else 0))
        ids = getattr(split, "indices", None)
        groups[name] = ids[: images.shape[0]] if isinstance(ids, Tensor) else None
        counts[name] = int(images.shape[0])
        report["splits"][name], values[name] = equivariance_profile(
            model,
            images,
            cfg_eval,
            layers=layers,
            groups=groups[name],
            net=net,
            margin=m if crop else None,
        )
    if REFERENCE in values:
        for name, vals in values.items():
            if name == REFERENCE:
                continue
            for key, v in vals.items():
                layer, metric = key.rsplit("/", 1)
                diff, lo, hi = bootstrap_diff_ci(
                    v,
                    values[REFERENCE][key],
                    int(cfg_eval.n_bootstrap),
                    float(cfg_eval.ci_level),
                    int(cfg_eval.seed),
                    groups[name],
                    groups[REFERENCE],
                )
                gap = report["splits"][name][layer].setdefault("gap_to_typical", {})
                gap[metric] = {"mean": diff, "ci": [lo, hi]}
    report["layers"] = layers
    report["protocol"] = {
        "shift": CROP if crop else CIRCULAR,
        "trajectory": str(eq.trajectory),
        "max_shift_px": int(eq.max_shift_px),
        "shifts": [list(s) for s in shift_grid(int(eq.max_shift_px), str(eq.trajectory))],
        "n_images": counts,
        "image_size": int(image_size),
        "metrics": list(METRICS),
        "ci_level": float(cfg_eval.ci_level),
        "n_bootstrap": int(cfg_eval.n_bootstrap),
        "rule": (
            "crop: the window moved over the real margin; the maps compared where they overlap, "
            "translated exactly where the cumulative stride divides the shift, else both "
            "upsampled to input resolution (bilinear) first"
            if crop
            else "exact roll where the cumulative stride divides the shift, else both maps "
            "upsampled to input resolution (bilinear, circular) before the roll"
        ),
    }
    return report


def scalars(block: dict[str, Any], prefix: str = PREFIX) -> dict[str, float]:
    """Flat means for loggers: ``equivariance/<split>/<layer>/<metric>`` and
    ``.../gap/<metric>`` (difference to typical)."""
    out: dict[str, float] = {}
    for split, layers in (block.get("splits") or {}).items():
        for layer, b in layers.items():
            for m in METRICS:
                if m in b:
                    out[f"{prefix}/{split}/{layer}/{m}"] = float(b[m]["mean"])
            for m, stat in (b.get("gap_to_typical") or {}).items():
                out[f"{prefix}/{split}/{layer}/gap/{m}"] = float(stat["mean"])
    return out
