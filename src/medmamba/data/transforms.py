"""torchvision (v2) transforms: augmentation for training, a deterministic resize for evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torchvision.transforms import v2


@dataclass(frozen=True)
class Preprocessing:
    """How images become model inputs: resized to ``img_size``, scaled to [0, 1] (with ``normalize`` "image":
    each image stretched from its 1st to its 99th percentile), (x - mean) / std; with ``tta`` each image's
    prediction is averaged with its mirror's."""
    img_size: int = 64
    mean: float = 0.5
    std: float = 0.5
    tta: bool = False
    normalize: str = "none"


def percentile_window(image: torch.Tensor, low: float = 1.0, high: float = 99.0) -> torch.Tensor:
    """``image`` (values in [0, 1]) stretched so that its ``low``-th to ``high``-th percentile fill [0, 1]; an
    image of one value is left as it is. A 12-bit X-ray in a 16-bit PNG, or a JPEG using values 0-2 of 255,
    becomes an image that uses the whole range."""
    lo, hi = torch.quantile(image.flatten().float(), torch.tensor([low / 100, high / 100])).tolist()
    if hi - lo < 1e-6:
        return image
    return ((image - lo) / (hi - lo)).clamp(0, 1)


class PerImageWindow(torch.nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return percentile_window(image)


# The one source of these defaults: the training configuration's keys and the model card take them from here.
PREPROCESSING = Preprocessing()


@dataclass
class AugmentConfig:
    hflip: float = 0.5
    vflip: float = 0.0
    rotation: float = 0.0          # degrees, uniform in [-rotation, rotation]
    scale_min: float = 1.0         # RandomResizedCrop's smallest area fraction; 1.0 = plain resize
    translate: float = 0.0         # fraction of the size, RandomAffine
    brightness: float = 0.0
    contrast: float = 0.0
    erasing: float = 0.0           # RandomErasing probability
    policy: Optional[str] = None   # an automatic policy: "trivialaugment" (TrivialAugmentWide), "randaugment"


POLICIES = {"trivialaugment": v2.TrivialAugmentWide, "randaugment": v2.RandAugment}  # torchvision's defaults


def match_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """(..., C, H, W) with ``channels`` channels: grey images for an RGB model repeat their channel, colour
    images for a grey model are averaged. The one place where channel counts are reconciled."""
    if image.shape[-3] == channels:
        return image
    if channels == 1:
        return image.mean(-3, keepdim=True)
    if image.shape[-3] == 1:
        return image.expand(*image.shape[:-3], channels, *image.shape[-2:])
    raise ValueError(f"cannot map {image.shape[-3]} image channels to {channels}")


class MatchChannels(torch.nn.Module):
    """``match_channels`` as a transform step."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return match_channels(image, self.channels)


def build_transform(img_size: int, channels: int, train: bool, aug: AugmentConfig | None = None,
                    mean: float = PREPROCESSING.mean, std: float = PREPROCESSING.std,
                    normalize: str = PREPROCESSING.normalize) -> v2.Compose:
    """uint8 or [0, 1] float (C, H, W) tensors -> normalised float (channels, img_size, img_size)."""
    steps = [v2.ToDtype(torch.float32, scale=True), MatchChannels(channels)]
    if normalize == "image":
        steps.append(PerImageWindow())
    aug = aug or AugmentConfig()
    if train and aug.scale_min < 1.0:
        steps.append(v2.RandomResizedCrop(img_size, scale=(aug.scale_min, 1.0), antialias=True))
    else:
        steps.append(v2.Resize((img_size, img_size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True))
    if train:
        if aug.hflip:
            steps.append(v2.RandomHorizontalFlip(aug.hflip))
        if aug.vflip:
            steps.append(v2.RandomVerticalFlip(aug.vflip))
        if aug.rotation or aug.translate:
            steps.append(v2.RandomAffine(degrees=aug.rotation, translate=(aug.translate, aug.translate)
                                         if aug.translate else None))
        if aug.brightness or aug.contrast:
            steps.append(v2.ColorJitter(brightness=aug.brightness, contrast=aug.contrast))
        if aug.policy:
            steps.append(POLICIES[aug.policy]())
    steps.append(v2.Normalize([mean] * channels, [std] * channels))
    if train and aug.erasing:
        steps.append(v2.RandomErasing(aug.erasing))
    return v2.Compose(steps)
