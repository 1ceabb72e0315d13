"""Configs as data: one frozen dataclass, named recipes in alexnet_jax/configs/, `--set` overrides.

Every field declares what it accepts (a range or a set of values) next to its default, and
`Config.validate()` checks all of them, and the few rules that tie fields together, in one place
before anything runs.  An error names the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Callable, Iterable
from typing import Any

from alexnet_jax.data.catalog import AUGMENTS, dataset_names
from alexnet_jax.errors import ConfigError


# ------------------------------------------------------------------------------------------------
# What a field accepts
# ------------------------------------------------------------------------------------------------
def human_number(v: float) -> str:
    """A bound as people write it: whole numbers with thousands separators (1,048,576), others in %g."""
    return f"{int(v):,}" if float(v).is_integer() and abs(v) < 1e18 else f"{v:g}"


@dataclasses.dataclass(frozen=True)
class Range:
    """lo <= v <= hi (or lo < v / v < hi when open); `also` lists extra allowed values (e.g. -1)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    also: tuple = ()

    def ok(self, v) -> bool:
        if v in self.also:
            return True
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def describe(self) -> str:
        lo = "" if self.lo is None else f"{human_number(self.lo)} {'<' if self.lo_open else '<='} "
        hi = "" if self.hi is None else f" {'<' if self.hi_open else '<='} {human_number(self.hi)}"
        text = f"{lo}value{hi}" if (lo or hi) else "any finite value"
        return text + "".join(f" or {a}" for a in self.also)


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One of a set of values; `values` may be a callable (imported lazily)."""

    values: tuple | Callable[[], Iterable]

    def allowed(self) -> tuple:
        return tuple(self.values() if callable(self.values) else self.values)

    def ok(self, v) -> bool:
        return v in self.allowed()

    def describe(self) -> str:
        return "one of " + ", ".join(map(str, self.allowed()))


@dataclasses.dataclass(frozen=True)
class Each:
    """Every element of a tuple passes `inner`."""

    inner: Range

    def ok(self, v) -> bool:
        return all(self.inner.ok(x) for x in v)

    def describe(self) -> str:
        return "a comma list, each " + self.inner.describe()


@dataclasses.dataclass(frozen=True)
class Text:
    """A non-empty string (`empty_ok`: also "")."""

    empty_ok: bool = False

    def ok(self, v) -> bool:
        return isinstance(v, str) and (self.empty_ok or bool(v.strip()))

    def describe(self) -> str:
        return "any text" if self.empty_ok else "a non-empty name"


# lazy (Ctrl-C): models import jax and flax; the CLI imports this module before them (alexnet_jax/cli.py)
def _models():
    from alexnet_jax.models import MODELS
    return tuple(MODELS)


def _init_rules():
    from alexnet_jax.models.init import INIT_RULES  # lazy (Ctrl-C), as _models
    return INIT_RULES


def field(default, accepts, doc: str = ""):
    return dataclasses.field(default=default, metadata={"accepts": accepts, "doc": doc})


# LC98 eq. 9's constant j (the paper gives no value): experiments/REPRODUCTION.md says why this one
LC98_J = 84.0

# Config.preprocess: the inputs' centring (and photo fitting) of a run, or of an imported net (alexnet_jax/zoo):
# "dataset" the run's own (the training split's mean image); "torchvision" torchvision's ImageNet transform
# (Resize(256), CenterCrop, its per-channel mean; the std is alexnet_owt's own input scale); "caffe" the mean
# image Caffe's net was trained with, saved in the workdir at import (its BGR order is undone in conv1).
PREPROCESSING = ("dataset", "torchvision", "caffe")
POSITIVE = Range(0, None, lo_open=True)
NON_NEGATIVE = Range(0)


@dataclasses.dataclass(frozen=True)
class Config:
    # model
    model: str = field("lenet5", OneOf(_models))
    num_classes: int = field(10, Range(2, 100_000))
    input_size: int = field(32, Range(8, 1024))
    width: float = field(1.0, Range(0, 8, lo_open=True), "multiplies every hidden layer's width")
    dtype: str = field("float32", OneOf(("float32", "bfloat16")), "compute dtype (parameters stay float32)")
    head: str = field("softmax", OneOf(("softmax", "rbf")), "lenet5 only")
    init: str = field("native", OneOf(_init_rules),
                      "AlexNets: native (the net's own), paper (K12 §5), paper_scaled (gain-matched), he")
    lrn: str = field("paper", OneOf(("paper", "caffe")),
                     "alexnet: the paper's LRN per column (k=2), or Caffe's across both columns (k=1, alpha/5)")
    # data
    dataset: str = field("digits", OneOf(dataset_names), "TFDS name, optionally /store (imagenet2012/raw256)")
    data_dir: str = field("", Text(empty_ok=True), "'' -> $TFDS_DATA_DIR or ~/tensorflow_datasets")
    train_split: str = field("train", Text())
    eval_split: str = field("test", Text())
    augment: str = field("none", OneOf(AUGMENTS))
    preprocess: str = field("dataset", OneOf(PREPROCESSING),
                            "what inputs are centred with: dataset (the training split's mean), torchvision (its "
                            "resize, crop and mean/std), caffe (the imported mean image, <workdir>/input_mean.npy)")
    num_workers: int = field(0, Range(0, 256), "loader reader threads (0: every core)")
    # optimisation: the paper's SGD (K12: v <- m v - wd lr w - lr g; w <- w + v), or LeNet-5's stochastic
    # diagonal Levenberg-Marquardt (LC98 App. C: w <- w - lr / (mu + h) g, h re-estimated before each pass)
    optimizer: str = field("sgd", OneOf(("sgd", "sdlm")))
    sdlm_mu: float = field(0.02, Range(0, 100, lo_open=True), "sdlm: the damping mu")
    sdlm_samples: int = field(500, Range(1, 1 << 20), "sdlm: training patterns per curvature estimate")
    sdlm_curvature: str = field("exact", OneOf(("exact", "paper")),
                                "sdlm: exact (the Gauss-Newton diagonal) or paper (LC98 App. C's layer-by-layer "
                                "estimate; lenet5 with head=rbf)")
    loss: str = field("cross_entropy", OneOf(("cross_entropy", "lc98")),
                      "cross_entropy (softmax on the logits) or lc98 (LC98 eq. 9 on the RBF penalties, head=rbf)")
    lc98_j: float = field(LC98_J, Range(0, 1000, lo_open=True), "loss=lc98: the constant j of LC98 eq. 9")
    batch_size: int = field(128, Range(1, 1 << 20))
    num_epochs: float = field(10.0, POSITIVE)
    num_steps: int = field(0, NON_NEGATIVE, "> 0 overrides num_epochs")
    lr: float = field(0.01, Range(0, 10, lo_open=True))
    momentum: float = field(0.9, Range(0, 1, hi_open=True))
    weight_decay: float = field(5e-4, Range(0, 1))
    lr_schedule: str = field("constant", OneOf(("constant", "steps", "plateau")))
    lr_boundaries: tuple[float, ...] = field((), Each(NON_NEGATIVE), "epochs at which `steps` changes lr")
    lr_factors: tuple[float, ...] = field((), Each(POSITIVE), "lr after each boundary, relative to lr")
    plateau_factor: float = field(0.1, Range(0, 1, lo_open=True, hi_open=True))
    plateau_patience: int = field(2, Range(1, 1000), "evaluations without improvement before a drop")
    plateau_max_drops: int = field(3, Range(0, 100))
    warmup_steps: int = field(0, NON_NEGATIVE)
    # evaluation / checkpoints / logging
    eval_every_epochs: float = field(1.0, POSITIVE)
    ten_crop: bool = field(False, OneOf((False, True)))
    checkpoint_every_steps: int = field(500, Range(1))
    keep_checkpoints: int = field(3, Range(1, 1000), "the newest intermediate checkpoints kept (a finished "
                                  "schedule's last one always is)")
    log_every_steps: int = field(50, Range(1))
    seed: int = field(0, Range(0, 2**31 - 1))
    # parallelism: mesh shape data x model (-1: data takes the remaining devices; model follows the
    # devices present: 2 columns on 2+ devices, else 1)
    mesh_data: int = field(-1, Range(1, 1 << 16, also=(-1,)))
    mesh_model: int = field(-1, Range(1, 64, also=(-1,)))

    def replace(self, **kw) -> Config:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config key(s) {sorted(unknown)}; valid keys: {', '.join(valid_keys())}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def validate(self) -> Config:
        """Check every field against what it accepts, then the rules between fields; returns self."""
        hints = typing.get_type_hints(Config)
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not _type_ok(v, hints[f.name]):
                raise ConfigError(f"{f.name}={v!r} has the wrong type: expected {_type_name(hints[f.name])}")
            accepts = f.metadata["accepts"]
            if not accepts.ok(v):
                raise ConfigError(f"{f.name}={show_value(v)} is not allowed: {f.name} must be {accepts.describe()}")
        if len(self.lr_boundaries) != len(self.lr_factors):
            raise ConfigError(f"lr_boundaries={show_value(self.lr_boundaries)} and lr_factors="
                              f"{show_value(self.lr_factors)} need one factor per boundary")
        if list(self.lr_boundaries) != sorted(self.lr_boundaries):
            raise ConfigError(f"lr_boundaries={show_value(self.lr_boundaries)} must be non-decreasing")
        if self.lr_schedule == "plateau" and self.warmup_steps:
            raise ConfigError("lr_schedule=plateau cannot be combined with warmup_steps > 0: the warm-up "
                              "schedule would overwrite the rate the plateau rule sets")
        if self.optimizer == "sdlm" and (self.momentum or self.weight_decay):
            raise ConfigError(f"optimizer=sdlm has no momentum or weight decay (LC98 App. C): set momentum=0 and "
                              f"weight_decay=0 (got momentum={self.momentum}, weight_decay={self.weight_decay})")
        if self.init != "native" and not self.model.startswith("alexnet"):
            raise ConfigError(f"init={self.init} applies to the AlexNets; model={self.model} has its own "
                              f"initialisation (leave init=native)")
        if self.loss == "lc98" and self.head != "rbf":
            raise ConfigError(f"loss=lc98 (LC98 eq. 9) is defined on the RBF output's penalties: set head=rbf "
                              f"(got head={self.head})")
        if self.loss == "lc98" and self.ten_crop:
            raise ConfigError("loss=lc98 has no multi-view form (ten_crop averages softmax outputs): set "
                              "ten_crop=false")
        if self.sdlm_curvature == "paper" and (self.model != "lenet5" or self.head != "rbf"):
            raise ConfigError(f"sdlm_curvature=paper is LC98's estimate for LeNet-5's own layers, from its RBF "
                              f"output: needs model=lenet5 and head=rbf (got model={self.model}, head={self.head}); "
                              f"use sdlm_curvature=exact")
        if self.lrn == "caffe" and self.model != "alexnet":
            raise ConfigError(f"lrn=caffe is an option of the two-column net (model=alexnet), not model={self.model}")
        if self.preprocess != "dataset" and self.augment != "alexnet":
            raise ConfigError(f"preprocess={self.preprocess} is an ImageNet preprocessing: it needs augment=alexnet, "
                              f"got augment={self.augment}")
        if self.preprocess == "torchvision" and (self.model != "alexnet_owt" or self.init not in ("native", "he")):
            raise ConfigError(f"preprocess=torchvision feeds torchvision's normalised inputs, which model=alexnet_owt "
                              f"reads with init=native or he (got model={self.model}, init={self.init})")
        if self.preprocess == "caffe" and (self.model != "alexnet" or self.init not in ("native", "paper")):
            raise ConfigError(f"preprocess=caffe feeds centred raw pixels, which model=alexnet reads with init=native "
                              f"or paper (got model={self.model}, init={self.init})")
        if self.head == "rbf" and (self.model != "lenet5" or self.num_classes != 10):
            raise ConfigError(f"head=rbf (LeNet-5's 10 fixed digit codes) needs model=lenet5 and num_classes=10, "
                              f"got model={self.model}, num_classes={self.num_classes}")
        return self


def show_value(v) -> str:
    """A config value as --set takes it (tuples as comma lists)."""
    if isinstance(v, tuple):
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) or "(empty)"
    return repr(v) if isinstance(v, str) else str(v)


def _type_ok(v, typ) -> bool:
    if typ is bool:
        return isinstance(v, bool)
    if typ is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if typ is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if typ is str:
        return isinstance(v, str)
    return isinstance(v, tuple) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


def _type_name(typ) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "text"}.get(typ, "a comma list of numbers")


def valid_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def describe_keys(config: Config | None = None) -> str:
    """One line per key: name, its value in `config` (default: the dataclass's defaults), what it accepts
    (for `--help`-style listings)."""
    config = config if config is not None else Config()
    lines = []
    for f in dataclasses.fields(Config):
        doc = f" ({f.metadata['doc']})" if f.metadata["doc"] else ""
        lines.append(f"  {f.name} = {show_value(getattr(config, f.name))}: {f.metadata['accepts'].describe()}{doc}")
    return "\n".join(lines)


def _parse_value(key: str, raw: str, typ) -> Any:
    try:
        if typ is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ is int:
            return int(raw)
        if typ is float:
            return float(raw)
        if typ is str:
            return raw
        raw = raw.strip().strip("()[]")
        return tuple(float(v) for v in raw.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"bad value {raw!r} for {key} (expected {_type_name(typ)})") from None


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply `key=value` strings; unknown keys and unparsable values raise ConfigError."""
    hints = typing.get_type_hints(Config)
    kw = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value; valid keys: {', '.join(valid_keys())}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in hints:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys())}")
        kw[key] = _parse_value(key, raw.strip(), hints[key])
    return config.replace(**kw)
