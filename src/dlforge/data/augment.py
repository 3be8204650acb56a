"""Batch augmentation: random transforms of whole (B, C, H, W) training batches as tensor ops, never per-sample PIL.

All geometric transforms (random resized crop, flip, rotation, shift, shear, zoom) compose into one
affine matrix per sample and cost a single `grid_sample`; colour jitter and cutout are broadcast
arithmetic; mixup/cutmix return the partner permutation and mixing weight so the trainer mixes the
*losses* (`lam * loss(y) + (1 - lam) * loss(y[perm])`), which works for every classification head.
Text inputs get token dropout (ids replaced by the unknown token).

Randomness comes from the augmenter's own `torch.Generator` (seeded from training.seed, saved in
checkpoints), so runs are reproducible and an interrupted run resumes bit-exactly. The trainer only
calls it on training batches: evaluation never sees augmentation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)


def _pixel_affine(kind: str, mean: list[float], std: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) per channel with pixel01 = a * model_input + b, for the feature's input scale."""
    mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    if kind in ("standard", "imagenet"):
        return std_t, mean_t
    if kind == "symmetric":
        return torch.full_like(std_t, 0.5), torch.full_like(std_t, 0.5)
    if kind == "none":
        return torch.full_like(std_t, 1 / 255), torch.zeros_like(std_t)
    return torch.ones_like(std_t), torch.zeros_like(std_t)  # unit


class ImageAugment:
    """One image input's augmentation (config: recipe.ImageAugmentation)."""

    def __init__(self, config, *, scale: str, mean: list[float], std: list[float]):
        self.c = config
        self.a, self.b = _pixel_affine(scale, mean, std)
        c = config
        self.geometric = (c.flip != "none" or c.rotation or c.width_shift or c.height_shift or c.shear or c.zoom
                          or c.random_resized_crop is not None)
        self.colour = bool(c.brightness or c.contrast or c.saturation)

    def _uniform(self, n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
        return torch.rand(n, generator=g) * (high - low) + low

    def _theta(self, n: int, height: int, width: int, g: torch.Generator) -> torch.Tensor:
        """(n, 2, 3) matrices mapping output to input coordinates in affine_grid's normalised [-1, 1] space."""
        c = self.c
        eye = torch.eye(2).expand(n, 2, 2)
        m = eye.clone()
        # Rotation and shear are defined in pixel space; conjugating by the aspect keeps angles true on non-square images.
        aspect = torch.tensor([[1.0, height / width], [width / height, 1.0]])
        if c.rotation:
            angle = torch.deg2rad(self._uniform(n, -c.rotation, c.rotation, g))
            cos, sin = torch.cos(angle), torch.sin(angle)
            rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1) * aspect
            m = m @ rot
        if c.shear:
            shear = torch.tan(torch.deg2rad(self._uniform(n, -c.shear, c.shear, g)))
            sh = eye.clone()
            sh[:, 0, 1] = shear * height / width
            m = m @ sh
        if c.zoom:
            zoom = self._uniform(n, 1 - c.zoom, 1 + c.zoom, g)  # >1 zooms out, as Keras' zoom_range
            m = m * zoom.view(n, 1, 1)
        flip = torch.ones(n, 2)
        if c.flip in ("horizontal", "both"):
            flip[:, 0] = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        if c.flip in ("vertical", "both"):
            flip[:, 1] = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        m = m * flip.view(n, 1, 2)
        shift = torch.zeros(n, 2)
        if c.width_shift:
            shift[:, 0] = self._uniform(n, -2 * c.width_shift, 2 * c.width_shift, g)
        if c.height_shift:
            shift[:, 1] = self._uniform(n, -2 * c.height_shift, 2 * c.height_shift, g)
        if c.random_resized_crop is not None:
            rrc = c.random_resized_crop
            area = self._uniform(n, *rrc.scale, g)
            log_ratio = self._uniform(n, math.log(rrc.ratio[0]), math.log(rrc.ratio[1]), g)
            ratio = torch.exp(log_ratio)
            crop_w = torch.sqrt(area * ratio).clamp(max=1.0)
            crop_h = torch.sqrt(area / ratio).clamp(max=1.0)
            centre = torch.stack([(torch.rand(n, generator=g) * 2 - 1) * (1 - crop_w),
                                  (torch.rand(n, generator=g) * 2 - 1) * (1 - crop_h)], 1)
            crop = torch.stack([crop_w, crop_h], 1)
            m = crop.view(n, 2, 1) * m
            shift = centre + crop * shift
        return torch.cat([m, shift.view(n, 2, 1)], 2)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:  # (B, C, H, W) -> same
        n, channels, height, width = x.shape
        c = self.c
        if self.geometric:
            theta = self._theta(n, height, width, g).to(x.device, x.dtype)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode=c.fill, align_corners=False)
        if self.colour:
            a, b = self.a.to(x.device), self.b.to(x.device)
            pixels = x * a + b  # back to [0, 1] pixels: jitter factors mean the same thing at any input scale
            if c.brightness:
                pixels = pixels * self._uniform(n, 1 - c.brightness, 1 + c.brightness, g).view(n, 1, 1, 1).to(x.device)
            if c.contrast:
                grey = pixels.mean((1, 2, 3), keepdim=True)
                factor = self._uniform(n, 1 - c.contrast, 1 + c.contrast, g).view(n, 1, 1, 1).to(x.device)
                pixels = (pixels - grey) * factor + grey
            if c.saturation and channels == 3:
                luma = (pixels * torch.tensor(LUMA, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
                factor = self._uniform(n, 1 - c.saturation, 1 + c.saturation, g).view(n, 1, 1, 1).to(x.device)
                pixels = (pixels - luma) * factor + luma
            x = (pixels.clamp(0, 1) - b) / a
        if c.cutout:
            side_h, side_w = max(1, round(c.cutout * height)), max(1, round(c.cutout * width))
            top = (torch.rand(n, generator=g) * (height + side_h) - side_h).to(x.device).view(n, 1, 1)
            left = (torch.rand(n, generator=g) * (width + side_w) - side_w).to(x.device).view(n, 1, 1)
            rows = torch.arange(height, device=x.device).view(1, height, 1)
            cols = torch.arange(width, device=x.device).view(1, 1, width)
            hole = (rows >= top) & (rows < top + side_h) & (cols >= left) & (cols < left + side_w)  # (B, H, W)
            x = x.masked_fill(hole.unsqueeze(1), 0.0)  # 0 = the mean colour under standard/imagenet scaling
        return x


class TokenDropout:
    """Replace a random fraction of real tokens (not padding or specials) by the unknown token."""

    def __init__(self, p: float, *, unk_id: int, keep_ids: list[int]):
        self.p, self.unk_id = p, unk_id
        self.keep = torch.tensor(sorted(set(keep_ids)), dtype=torch.long)

    def __call__(self, ids: torch.Tensor, g: torch.Generator) -> torch.Tensor:  # (B, L) int -> same
        drop = torch.rand(ids.shape, generator=g).to(ids.device) < self.p
        drop &= ~torch.isin(ids, self.keep.to(ids.device))
        return ids.masked_fill(drop, self.unk_id)


class SpecAugment:
    """Park et al. 2019 on standardised (B, 1, bands, frames) features: zero (the band mean) random bands and
    frame spans per clip, and optionally roll each clip in time. One vectorised pass per batch, no Python per clip."""

    def __init__(self, config):
        spec = config.spec_augment
        self.masks = [] if spec is None else [(2, spec.freq_masks, spec.freq_width), (3, spec.time_masks, spec.time_width)]
        self.shift = config.time_shift

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        if self.shift:
            frames = x.shape[3]
            offsets = (torch.rand(n, generator=g) * 2 - 1) * self.shift * frames
            index = (torch.arange(frames)[None, :] - offsets.round().long()[:, None]) % frames  # (B, frames)
            x = torch.gather(x, 3, index.to(x.device)[:, None, None, :].expand_as(x))
        keep = torch.ones(n, x.shape[2], x.shape[3], dtype=torch.bool)
        for axis, count, width in self.masks:
            size = x.shape[axis]
            positions = torch.arange(size)
            for _ in range(count):
                widths = (torch.rand(n, generator=g) * (min(width, size) + 1)).long()
                starts = (torch.rand(n, generator=g) * (size - widths + 1)).long()
                hit = (positions[None, :] >= starts[:, None]) & (positions[None, :] < (starts + widths)[:, None])
                keep &= ~(hit[:, :, None] if axis == 2 else hit[:, None, :])
        return x * keep[:, None].to(x.device, x.dtype) if self.masks else x


class BatchAugmenter:
    """All inputs' augmentations, plus batch mixing; `__call__(x) -> (x, mix)` with mix None or (perm, lam)."""

    def __init__(self, per_input: dict, *, mixup: float, cutmix: float, mixed: list[str], seed: int):
        self.per_input = per_input
        self.mixup, self.cutmix, self.mixed = mixup, cutmix, mixed
        self.generator = torch.Generator().manual_seed(seed)

    def __bool__(self) -> bool:
        return bool(self.per_input) or bool(self.mixup or self.cutmix)

    def _beta(self, alpha: float) -> float:
        # torch's Beta sampler has no generator argument; a numpy Generator seeded from ours keeps it reproducible.
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))
        return float(np.random.default_rng(seed).beta(alpha, alpha))

    def __call__(self, x: dict[str, torch.Tensor]):
        g = self.generator
        x = {name: (self.per_input[name](t, g) if name in self.per_input else t) for name, t in x.items()}
        if not (self.mixup or self.cutmix):
            return x, None
        n = len(next(iter(x.values())))
        perm = torch.randperm(n, generator=g)
        use_cutmix = self.cutmix and (not self.mixup or bool(torch.rand(1, generator=g) < 0.5))
        lam = self._beta(self.cutmix if use_cutmix else self.mixup)
        for name in self.mixed:
            t = x[name]
            partner = t.index_select(0, perm.to(t.device))
            if use_cutmix:  # one box for the batch (as in the paper's reference code); lam = kept area
                height, width = t.shape[-2:]
                cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
                cy = int(torch.randint(0, height, (1,), generator=g))
                cx = int(torch.randint(0, width, (1,), generator=g))
                top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
                left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
                t = t.clone()
                t[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
                lam = 1 - (bottom - top) * (right - left) / (height * width)
            else:
                t = lam * t + (1 - lam) * partner
            x[name] = t
        return x, (perm, lam)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


# Fields that change no pixel by themselves: `fill` only says what shifted-in pixels look like.
INERT = frozenset({"fill"})
# Image fields applied to the whole batch (pairs of rows) by BatchAugmenter, not per input.
BATCH_LEVEL = frozenset({"mixup", "cutmix"})


def _changed(aug, exclude: frozenset) -> bool:
    return aug.model_dump(exclude=set(exclude)) != type(aug)().model_dump(exclude=set(exclude))


def augmentation_on(feature) -> bool:
    """The one answer to "is this recipe input augmented": any augmentation field away from its default
    (per input, or mixed into other rows). The frozen-feature cache needs False: augmented inputs change
    every epoch, so their embeddings cannot be computed once."""
    aug = getattr(feature, "augmentation", None)  # number, category, ... inputs have no augmentation section
    return aug is not None and _changed(aug, INERT)


def build_augmenter(recipe, inputs: dict) -> BatchAugmenter | None:
    """The recipe's augmenter, or None when no input declares augmentation. `inputs`: fitted features by name."""
    per_input, mixed, mixup, cutmix = {}, [], 0.0, 0.0
    for feature in recipe.inputs:
        if not augmentation_on(feature):
            continue
        aug = feature.augmentation
        if feature.type == "image":
            fitted = inputs[feature.name]
            if _changed(aug, INERT | BATCH_LEVEL):
                per_input[feature.name] = ImageAugment(
                    aug, scale=feature.preprocessing.scale, mean=fitted.mean_, std=fitted.std_)
            if aug.mixup or aug.cutmix:
                mixed.append(feature.name)
                mixup, cutmix = max(mixup, aug.mixup), max(cutmix, aug.cutmix)
        elif feature.type == "audio":
            per_input[feature.name] = SpecAugment(aug)
        elif feature.type == "text" and getattr(aug, "token_dropout", 0):
            per_input[feature.name] = TokenDropout(aug.token_dropout, **inputs[feature.name].dropout_ids())
    augmenter = BatchAugmenter(per_input, mixup=mixup, cutmix=cutmix, mixed=mixed, seed=recipe.training.seed + 2)
    return augmenter if augmenter else None
