"""Training configuration: every key with its default, what it allows and what it means; YAML files and
``key.sub=value`` overrides merged onto the defaults and checked at load, before anything is written.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from .data.transforms import PREPROCESSING, AugmentConfig
from .errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML as people write numbers: PyYAML follows YAML 1.1, where 3e-4 (no dot) is a string, not a float."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"""^(?:
     [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))


def read_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


@dataclass(frozen=True)
class Key:
    default: Any
    doc: str
    allowed: str                       # what the key allows, in words, for the error message
    check: Callable[[Any], bool]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def integer(default, doc, lo=1, optional=False) -> Key:
    return Key(default, doc, f"a whole number >= {lo}" + (" or null" if optional else ""),
               lambda v: (optional and v is None) or (_is_int(v) and v >= lo))


def number(default, doc, lo=None, hi=None, lo_open=False, hi_open=False, optional=False) -> Key:
    def ok(v):
        if v is None:
            return optional
        return (_is_number(v) and (lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi)))
    bounds = [f"{'>' if lo_open else '>='} {lo:g}" if lo is not None else "",
              f"{'<' if hi_open else '<='} {hi:g}" if hi is not None else ""]
    words = "a number " + " and ".join(b for b in bounds if b)
    return Key(default, doc, words.strip() + (" or null" if optional else ""), ok)


def choice(default, doc, values, optional=False) -> Key:
    shown = ", ".join(str(v) for v in values) + (", null" if optional else "")
    return Key(default, doc, f"one of {shown}", lambda v: (optional and v is None) or v in values)


def boolean(default, doc) -> Key:
    return Key(default, doc, "true or false", lambda v: isinstance(v, bool))


def text(default, doc, optional=True) -> Key:
    return Key(default, doc, "a string" + (" or null" if optional else ""),
               lambda v: (optional and v is None) or (isinstance(v, str) and v != ""))


def numbers(default, doc, length=None, lo=None, lo_open=False, hi=None, hi_open=False) -> Key:
    item = number(None, "", lo, hi, lo_open, hi_open)

    def ok(v):
        return isinstance(v, list) and len(v) > 0 and (length is None or len(v) == length) and all(
            item.check(x) for x in v)
    what = f"a list of {length or 'one or more'} numbers" + (f" ({item.allowed.removeprefix('a number ')})"
                                                            if lo is not None or hi is not None else "")
    return Key(default, doc, what, ok)


def _model_name_ok(name) -> bool:
    if not isinstance(name, str):
        return False
    from .models import is_known_model
    return is_known_model(name)


def _backend_names() -> list[str]:
    from .ops.selective_scan import BACKENDS
    return ["auto", *BACKENDS]


def _mapping_ok(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) for k in v)


SCHEMA: dict[str, Any] = {
    "model": Key("medmamba_t", "medmamba_t, medmamba_s, medmamba_b, or timm/<name> for any timm architecture",
                 "a registered model (`medmamba info` lists them) or timm/<name> (`timm.list_models()`)",
                 _model_name_ok),
    "model_args": Key({}, "overrides of the variant, e.g. {depths: [1, 1], dims: [8, 16]}", "a mapping",
                      _mapping_ok),
    "pretrained": text(None, "weights to start from: a checkpoint file, or a training run's folder (its best)"),
    "drop_path_rate": number(0.1, "stochastic depth, rising linearly over the blocks", 0, 1, hi_open=True),
    "scan_backend": Key("auto", "selective-scan backend: auto, reference, chunked, cpu, onnx_node, triton, mamba_ssm",
                        "auto or a backend name (`medmamba info` lists those available)",
                        lambda v: v in _backend_names()),
    "data": {
        "medmnist": text("breastmnist", "a MedMNIST 2-D subset, or null when folder/csv is given"),
        "folder": text(None, "root/{train,val,test}/<class>/* or root/<class>/*"),
        "csv": text(None, "a CSV manifest: path,label[,split][,group] (group: patient or study id)"),
        "root": text(None, "MedMNIST data root (default: $MEDMAMBA_DATA)"),
        "size": choice(28, "MedMNIST release: 28, 64, 128 or 224 px", (28, 64, 128, 224)),
        "download": boolean(False, "fetch a missing MedMNIST file (MD5-checked)"),
        "img_size": integer(PREPROCESSING.img_size, "model input size in pixels (images are resized to it)", lo=4),
        "channels": choice(None, "model input channels; null: the dataset's own", (1, 3), optional=True),
        "mean": number(PREPROCESSING.mean, "normalisation: (x - mean) / std, x in [0, 1], the same for every channel"),
        "std": number(PREPROCESSING.std, "normalisation std", 0, lo_open=True),
        "normalize": choice(PREPROCESSING.normalize, "image: stretch each image from its 1st to its 99th percentile "
                            "before mean/std (images that use a sliver of their range); none: as stored",
                            ("none", "image")),
        "unreadable": choice("skip", "files that cannot be read, found before training: skip (left out, listed) or "
                             "refuse (the run does not start)", ("skip", "refuse")),
        "num_workers": integer(0, "data-loading processes", lo=0),
        "split_seed": integer(0, "seed of the automatic train/val/test split and of the folds", lo=0),
        "fractions": Key([0.7, 0.1, 0.2], "train/val/test fractions of an automatic split (a folder of classes, or a "
                         "CSV without a split column)", "three numbers >= 0 adding up to 1, train and val > 0",
                         lambda v: numbers(None, "", length=3, lo=0, hi=1).check(v) and abs(sum(v) - 1) < 1e-6
                         and v[0] > 0 and v[1] > 0),
        "folds": integer(None, "k-fold cross-validation over train+val (the test split stays out); `medmamba cv` "
                               "runs every fold", lo=2, optional=True),
        "fold": integer(0, "which fold is validation when data.folds is set (0..folds-1)", lo=0),
        "max_samples": integer(None, "first N samples of each split: quick checks only", optional=True),
    },
    "augment": {
        "hflip": number(AugmentConfig.hflip, "probability of a horizontal flip", 0, 1),
        "vflip": number(AugmentConfig.vflip, "probability of a vertical flip", 0, 1),
        "rotation": number(AugmentConfig.rotation, "degrees, uniform in [-rotation, rotation]", 0, 180),
        "scale_min": number(AugmentConfig.scale_min, "RandomResizedCrop's smallest area fraction; 1.0: plain resize",
                            0, 1, lo_open=True),
        "translate": number(AugmentConfig.translate, "fraction of the size, RandomAffine", 0, 1),
        "brightness": number(AugmentConfig.brightness, "ColorJitter brightness", 0),
        "contrast": number(AugmentConfig.contrast, "ColorJitter contrast", 0),
        "erasing": number(AugmentConfig.erasing, "RandomErasing probability", 0, 1),
        "policy": choice("auto", "an automatic augmentation policy after the steps above: trivialaugment "
                         "(torchvision's TrivialAugmentWide) or randaugment (RandAugment); null: none; auto: the "
                         "model family's (MedMamba: trivialaugment; timm models: none)",
                         ("auto", "trivialaugment", "randaugment"), optional=True),
    },
    "epochs": integer(30, "training epochs"),
    "batch_size": integer(32, "training batch size (all processes together under torchrun)"),
    "eval_batch_size": integer(64, "validation/test batch size"),
    "optimizer": {
        "name": choice("adamw", "adamw, adam or sgd", ("adamw", "adam", "sgd")),
        "lr": number(1e-3, "base learning rate", 0, lo_open=True),
        "weight_decay": number(0.05, "decoupled weight decay (not on norms, biases, A and D)", 0),
        "momentum": number(0.9, "SGD momentum", 0, 1, hi_open=True),
        "betas": numbers([0.9, 0.999], "Adam betas", length=2, lo=0, hi=1, hi_open=True),
        "layer_decay": number(None, "e.g. 0.8: lr x0.8 per block nearer the input (fine-tuning)", 0, 1, lo_open=True,
                              optional=True),
    },
    "schedule": {
        "name": choice("cosine", "cosine with warm-up, medmnist (x0.1 at 50% and 75%), or constant",
                       ("cosine", "medmnist", "constant")),
        "warmup_epochs": number(1, "linear warm-up, in epochs", 0),
        "min_lr_ratio": number(0.01, "cosine: final lr as a fraction of the base lr", 0, 1),
    },
    "amp": choice(None, "mixed precision: null, bf16 or fp16", ("bf16", "fp16"), optional=True),
    "clip_grad": number(None, "max gradient norm", 0, lo_open=True, optional=True),
    "label_smoothing": number(0.0, "cross-entropy label smoothing", 0, 1, hi_open=True),
    "mixup": number(0.0, "mixup alpha: each batch blended with a shuffled copy, weight ~ Beta(a, a); 0: off", 0),
    "cutmix": number(0.0, "CutMix alpha: a box of each image replaced by another's, area ~ Beta(a, a), labels in "
                     "proportion; with mixup too, each batch takes one of the two at random; 0: off", 0),
    "distill": {
        "teacher": Key(None, "distillation: the training run folder of a teacher, or a list of them (a seed "
                       "ensemble, probabilities averaged), trained on the same data, classes, input and train "
                       "split; under `medmamba cv` a cv output folder gives each fold its run of that fold",
                       "null, a run folder, or a list of run folders",
                       lambda v: v is None or (isinstance(v, str) and v != "") or (
                           isinstance(v, list) and len(v) > 0 and all(isinstance(x, str) and x for x in v))),
        "alpha": number(0.5, "weight of the teacher's term; the labels' term gets 1 - alpha", 0, 1),
        "temperature": number(1.0, "soft: temperature of both softmaxes (the term is scaled by T^2)", 0,
                              lo_open=True),
        "kind": choice("soft", "soft (KL divergence to the teacher's tempered probabilities) or hard (cross-entropy "
                       "to its predicted class, DeiT)", ("soft", "hard")),
    },
    "pretrain": {
        "mask_ratio": number(0.6, "medmamba pretrain: share of the mask patches hidden in each image", 0, 1,
                             lo_open=True, hi_open=True),
        "mask_patch": integer(16, "medmamba pretrain: side of a mask patch in pixels (a multiple of the stem's 4; "
                              "data.img_size a multiple of it)", lo=4),
    },
    "class_weights": Key(None, "null, balanced (inverse class frequency) or one weight per class",
                         "null, balanced, or a list of positive numbers",
                         lambda v: v is None or v == "balanced" or numbers(None, "", lo=0, lo_open=True).check(v)),
    "ema": number(None, "EMA decay, e.g. 0.999; at each validation the EMA and the raw weights are both evaluated "
                        "and the better kept", 0, 1, lo_open=True, hi_open=True, optional=True),
    "ema_warmup": boolean(True, "warm the EMA decay up from 0 (timm's ModelEmaV3), so that early averages are not "
                                "mostly the random initialisation"),
    "early_stopping": integer(None, "patience in epochs", optional=True),
    "swa_epochs": integer(None, "keep the average of the last K epochs' weights (SWA; BatchNorm statistics "
                          "recomputed on the training images) instead of the best validation epoch; null: off",
                          optional=True),
    "tta": boolean(PREPROCESSING.tta,
                   "validation/test/evaluate/predict: average each image with its horizontal mirror"),
    "monitor": choice("auc", "validation metric choosing the best checkpoint",
                      ("auc", "accuracy", "f1", "loss", "precision", "sensitivity", "specificity")),
    "calibrate": boolean(True, "fit a temperature on the validation split after training; evaluate, predict and "
                               "export apply it"),
    "sensitivity": number(None, "binary tasks: the threshold reaching this sensitivity for positive_class, chosen on "
                                "validation and reported on test", 0, 1, lo_open=True, optional=True),
    "positive_class": Key(None, "binary tasks: the positive class (name or index), whose sensitivity, specificity, "
                          "precision and F1 reports give and whose sensitivity is targeted; null: the second class",
                          "null, a class name or a class index", lambda v: v is None or isinstance(v, (str, int))
                          and not isinstance(v, bool)),
    "coverage": number(0.9, "prediction sets: the share of images whose set must hold the true class, calibrated "
                       "on the validation split (split conformal); null: no sets", 0, 1, lo_open=True, hi_open=True,
                       optional=True),
    "conformal": choice("aps", "prediction sets' score: aps (adapts to how hard an image is), lac (smallest sets), "
                        "raps (aps penalising unlikely classes)", ("aps", "lac", "raps")),
    "ood": choice("stages", "out-of-distribution score: stages (Mahalanobis distance of every stage's pooled map, "
                  "shrunk covariance), mahalanobis or knn (pooled features), energy or msp (logits); its threshold "
                  "lets 95% of validation images pass; null: none", ("stages", "mahalanobis", "knn", "energy", "msp"),
                  optional=True),
    "subgroups": Key([], "CSV manifests: metadata columns (e.g. [sex, site]) whose groups reports measure apart",
                     "a list of column names", lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v)),
    "bootstrap": integer(1000, "stratified bootstrap resamples of the test images for 95% intervals; 0: none", lo=0),
    "seed": integer(0, "random seed of initialisation, shuffling and augmentation", lo=0),
    "save_every_steps": integer(None, "also checkpoint mid-epoch every N optimiser steps", optional=True),
    "threads": integer(None, "torch CPU threads; null: torch's default", optional=True),
    "device": Key(None, "null: cuda when available, else cpu", "null, cpu, cuda or cuda:N",
                  lambda v: v is None or v in ("cpu", "cuda") or (isinstance(v, str) and v.startswith("cuda:")
                                                                  and v[5:].isdigit())),
    "tensorboard": boolean(True, "log to tensorboard when it is installed"),
}


# Keys whose "auto" means the model family's own default (models.family_train_defaults), else the value below.
FAMILY_KEYS = {"augment.policy": AugmentConfig.policy}


def _holder(tree: dict, key: str) -> tuple[dict, str]:
    """(the mapping that holds a dotted key's last part, that part)."""
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree[part]
    return tree, leaf


def with_family_defaults(cfg: dict, model_family: bool = True) -> dict:
    """A copy of ``cfg`` with each FAMILY_KEYS key left at "auto" set to its model family's default (with
    ``model_family`` false, to the package's own, as pretraining wants), so that a run's configuration records
    what it ran with. ``load_config`` applies it; a configuration built by hand gets it when training starts."""
    from .models import family_train_defaults
    family = family_train_defaults(cfg["model"]) if model_family else {}
    out = copy.deepcopy(cfg)
    for key, fallback in FAMILY_KEYS.items():
        node, leaf = _holder(out, key)
        if node[leaf] == "auto":
            node[leaf] = family.get(key, fallback)
    return out


def _defaults(schema: dict) -> dict:
    return {k: _defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default) for k, v in schema.items()}


DEFAULTS: dict[str, Any] = _defaults(SCHEMA)


def default(key: str):
    """The schema's default of a dotted key, e.g. ``default("data.img_size")``: the one source of a default
    that other parts (the model card, the CLI) also need."""
    node, leaf = _holder(SCHEMA, key)
    return copy.deepcopy(node[leaf].default)


def _merge(base: dict, update: dict, schema: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if key not in schema:
            raise ConfigError(f"unknown config key {where + key!r}; known: {', '.join(sorted(schema))}")
        if isinstance(schema[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {where + key!r} must be a mapping of {', '.join(schema[key])}")
            out[key] = _merge(base[key], value, schema[key], f"{where}{key}.")
        else:
            out[key] = value
    return out


def validate(cfg: dict, schema: dict = SCHEMA, where: str = "") -> dict:
    """Check every key's value; the first that is not allowed raises one ConfigError naming the key, the value
    and what it allows."""
    for key, spec in schema.items():
        if isinstance(spec, dict):
            validate(cfg[key], spec, f"{where}{key}.")
        elif not spec.check(cfg[key]):
            raise ConfigError(f"config key {where + key!r}: {cfg[key]!r} is not allowed; expected {spec.allowed}")
    return cfg


def parse_overrides(items: Iterable[str]) -> dict:
    """``["optimizer.lr=3e-4", "epochs=5"]`` -> nested dict, values read as YAML scalars."""
    tree: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. optimizer.lr=3e-4)")
        key, raw = item.split("=", 1)
        node = tree
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} was given a value and sub-keys")
        try:
            node[leaf] = read_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: not a YAML value ({str(e).splitlines()[0]})") from None
    return tree


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (), family_defaults: bool = True) -> dict:
    """The defaults, then the YAML file at ``path``, then ``overrides``; checked key by key. With
    ``family_defaults``, each key left at "auto" then takes the model family's value: the configuration
    training runs (``medmamba pretrain`` reads without them: they are fine-tuning choices)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        try:
            data = read_yaml(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a YAML mapping")
        cfg = _merge(cfg, data, SCHEMA)
    cfg = apply_overrides(cfg, overrides)
    return with_family_defaults(cfg) if family_defaults else cfg


def apply_overrides(cfg: dict, overrides: Iterable[str] = ()) -> dict:
    """A copy of ``cfg`` with ``key.sub=value`` overrides merged in; checked key by key."""
    return validate(_merge(cfg, parse_overrides(overrides), SCHEMA))


def dump_config(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


def _scalar(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True, width=10 ** 6).removesuffix("\n...\n").strip()


def describe_config(cfg: dict, schema: dict = SCHEMA, indent: str = "") -> str:
    """``cfg`` as YAML with each key's meaning as a comment: what ``medmamba config`` prints; loads back as is."""
    lines = []
    for key, spec in schema.items():
        if isinstance(spec, dict):
            lines.append(f"{indent}{key}:")
            lines.append(describe_config(cfg[key], spec, indent + "  "))
        else:
            lines.append(f"{indent}{key}: {_scalar(cfg[key])}  # {spec.doc}")
    return "\n".join(lines)
