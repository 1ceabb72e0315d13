"""Configs as data: one frozen dataclass, named recipes in alexnet_jax/configs/, `--set` overrides."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any


@dataclasses.dataclass(frozen=True)
class Config:
    # model
    model: str = "lenet5"
    num_classes: int = 10
    input_size: int = 32
    width: float = 1.0
    dtype: str = "float32"            # compute dtype: float32 | bfloat16 (parameters stay float32)
    head: str = "softmax"             # lenet5 only: softmax | rbf
    init: str = "paper"               # alexnet / alexnet_half only: paper (N(0, 0.01), biases 1) | he
    # data
    dataset: str = "digits"           # TFDS name: digits | mnist | cifar10 | imagenet2012
    data_dir: str = ""                # "" -> $TFDS_DATA_DIR or ~/tensorflow_datasets
    train_split: str = "train"
    eval_split: str = "test"
    augment: str = "none"             # none | lenet | lenet_affine | cifar | alexnet
    num_workers: int = 0              # grain worker processes (0 = in-process)
    # optimisation (the paper's SGD: v <- m v - wd lr w - lr g; w <- w + v)
    batch_size: int = 128
    num_epochs: float = 10.0
    num_steps: int = 0                # > 0 overrides num_epochs
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "constant"     # constant | steps | plateau
    lr_boundaries: tuple[float, ...] = ()   # epochs at which `steps` multiplies lr by the next factor
    lr_factors: tuple[float, ...] = ()      # one factor per boundary (relative to the base lr)
    plateau_factor: float = 0.1
    plateau_patience: int = 2         # evaluations without improvement before a drop
    plateau_max_drops: int = 3
    warmup_steps: int = 0
    # evaluation / checkpoints / logging
    eval_every_epochs: float = 1.0
    ten_crop: bool = False
    checkpoint_every_steps: int = 500
    keep_checkpoints: int = 3
    log_every_steps: int = 50
    seed: int = 0
    # parallelism: mesh shape data x model (-1 = all remaining devices)
    mesh_data: int = -1
    mesh_model: int = 1

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
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name in d:
                v = d[f.name]
                kw[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**kw)


class ConfigError(ValueError):
    pass


def valid_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _parse_value(key: str, raw: str, typ) -> Any:
    typ_s = str(typ)
    try:
        if typ_s in ("bool", "<class 'bool'>"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ_s in ("int", "<class 'int'>"):
            return int(raw)
        if typ_s in ("float", "<class 'float'>"):
            return float(raw)
        if typ_s.startswith("tuple"):
            raw = raw.strip().strip("()[]")
            return tuple(float(v) for v in raw.split(",") if v.strip())
        return raw
    except ValueError:
        raise ConfigError(f"bad value {raw!r} for {key} (expected {typ_s.replace('<class ', '').strip('>')})") from None


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply `key=value` strings; unknown keys and bad values raise ConfigError listing valid keys."""
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
