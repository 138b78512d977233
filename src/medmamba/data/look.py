"""A look at the data before training: what ``medmamba data`` prints and ``train`` prints first.

Every image of every split is opened once, as read from disk (no resizing, no augmentation), so that
  * unreadable files are found up front, not after the training (they are left out with a listed warning,
    or, with ``data.unreadable: refuse``, the run is refused before anything is written);
  * images that use a sliver of the intensity range (a 12-bit X-ray in a 16-bit PNG, a JPEG using values
    0-2 of 255) are counted, with the per-image normalisation that fixes them (``data.normalize: image``);
  * exact duplicates across splits (the same pixels, by content hash) are named: they leak test images
    into training.
Reading the test split's pixels chooses nothing: no label of it is used, no model sees it.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from torch.utils.data import ConcatDataset, Subset

from ..errors import DataError

NARROW = 0.1          # an image whose 1st-99th percentile span is below this share of [0, 1] uses a sliver
NARROW_WARN = 0.10    # warn when at least this share of the images are narrow


@dataclass
class DataLook:
    name: str
    task: str
    classes: list
    counts: dict                                     # split -> class name -> images
    sizes: Counter = field(default_factory=Counter)  # (H, W) -> images
    spans: list = field(default_factory=list)        # per image: 99th - 1st percentile of its values in [0, 1]
    duplicates: list = field(default_factory=list)   # groups of (split, id) with the same pixels, across splits
    unreadable: list = field(default_factory=list)   # (path, reason)

    @property
    def narrow_share(self) -> float:
        return float(np.mean(np.asarray(self.spans) < NARROW)) if self.spans else 0.0

    def warnings(self) -> list[str]:
        out = []
        if self.spans and self.narrow_share >= NARROW_WARN:
            out.append(f"{self.narrow_share:.0%} of the images use less than {NARROW:.0%} of the intensity range "
                       f"(median span {np.median(self.spans):.3f} of [0, 1]): the model sees nearly uniform images; "
                       f"consider data.normalize=image (each image stretched from its 1st to 99th percentile)")
        if self.duplicates:
            pairs = "; ".join(" = ".join(f"{s}:{i}" for s, i in group) for group in self.duplicates[:3])
            out.append(f"{len(self.duplicates)} image(s) appear in more than one split (same pixels), e.g. {pairs}: "
                       f"test or validation images leak into training")
        if self.unreadable:
            shown = "; ".join(f"{p}: {why}" for p, why in self.unreadable[:5])
            out.append(f"{len(self.unreadable)} unreadable file(s) left out: {shown}"
                       + (" ..." if len(self.unreadable) > 5 else ""))
        return out


def raw_images(dataset):
    """(id, image as float (C, H, W) in [0, 1] or None, reason) for every sample of a split, as read."""
    from .builder import sample_ids
    from .folders import ImageListDataset, read_image
    from .medmnist import MedMNIST
    if isinstance(dataset, Subset):
        inner = list(raw_images(dataset.dataset))
        yield from (inner[i] for i in dataset.indices)
    elif isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            yield from raw_images(part)
    elif isinstance(dataset, MedMNIST):
        ids = sample_ids(dataset)
        for i, image in enumerate(dataset.images):
            yield ids[i], image.astype(np.float32) / 255.0, None
    elif isinstance(dataset, ImageListDataset):
        for path, _ in dataset.samples:
            try:
                yield path, read_image(path, dataset.channels).numpy(), None
            except DataError as e:
                yield path, None, str(e).removeprefix(f"{path}: ")
    else:
        raise DataError(f"cannot look at a {type(dataset).__name__}")


def look_at(data, progress: bool = False) -> DataLook:
    """Open every image of ``data``'s splits once (see the module's docstring)."""
    look = DataLook(data.name, data.task, list(data.classes), {})
    seen: dict[str, list] = {}
    total = sum(len(ds) for ds in data.splits.values())
    bar = None
    if progress:
        from tqdm.auto import tqdm
        # disable=None: no bar where stderr is not a terminal, so a refusal stays one line there
        bar = tqdm(total=total, desc="looking at the data", unit="img", leave=False, disable=None)
    for split, ds in data.splits.items():
        labels = np.asarray(ds.labels)
        if data.multi_label:
            look.counts[split] = {str(c): int(labels[:, i].sum()) for i, c in enumerate(data.classes)}
        else:
            look.counts[split] = {str(c): int((labels == i).sum()) for i, c in enumerate(data.classes)}
        for image_id, image, reason in raw_images(ds):
            if bar is not None:
                bar.update(1)
            if image is None:
                look.unreadable.append((image_id, reason))
                continue
            look.sizes[tuple(image.shape[-2:])] += 1
            low, high = np.percentile(image, [1, 99])
            look.spans.append(float(high - low))
            digest = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
            seen.setdefault(digest, []).append((split, str(image_id)))
    if bar is not None:
        bar.close()
    look.duplicates = [group for group in seen.values() if len({s for s, _ in group}) > 1]
    return look


def look_text(look: DataLook, with_warnings: bool = True) -> str:
    splits = list(look.counts)
    rows = [f"{look.name} ({look.task}): {sum(sum(c.values()) for c in look.counts.values())} images", "",
            "| class | " + " | ".join(splits) + " |", "| --- | " + " | ".join("---" for _ in splits) + " |"]
    for c in look.classes:
        rows.append(f"| {c} | " + " | ".join(str(look.counts[s].get(str(c), 0)) for s in splits) + " |")
    rows.append("| all | " + " | ".join(str(sum(look.counts[s].values())) for s in splits) + " |")
    if look.sizes:
        common = ", ".join(f"{h}x{w} ({n})" for (h, w), n in look.sizes.most_common(3))
        rows += ["", f"image sizes: {len(look.sizes)} different; most common {common}"]
    if look.spans:
        rows.append(f"intensity span (99th - 1st percentile of each image, in [0, 1]): median "
                    f"{np.median(look.spans):.3f}, {look.narrow_share:.1%} of images below {NARROW}")
    rows.append(f"exact duplicates across splits: {len(look.duplicates)}; unreadable files: {len(look.unreadable)}")
    rows += [f"warning: {w}" for w in look.warnings()] if with_warnings else []
    return "\n".join(rows)
