"""Typed run configs: dataclasses, TOML files and dotted `key=value` overrides.

Every value a user can set lives in a dataclass field with a default; a TOML file or a command-line
override only says what differs. Values are parsed with `ast.literal_eval` (a bare word stays a
string) and checked against the field's type; an unknown key is an error that lists the valid ones.
A section can be set by name alone: `model=conv` is `model.name=conv`, `data=mnist` is `data.name=mnist`.
"""
from __future__ import annotations

import ast
import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import registry  # torch-free: model files are imported on the first lookup
from .errors import ConfigError
from .readers import read_bytes, short


@dataclass
class ModelConfig:
    """Base of every model's config; each registered model subclasses it with its own fields."""

    name: str = "conv"

    def check(self) -> None:
        """Raise ConfigError for values out of range (subclasses extend)."""


@dataclass
class DataConfig:
    name: str = "digits"  # digits | fashion-mnist | mnist | cifar10 | npz:PATH | folder:PATH | npy:FOLDER
    data_dir: str = ""  # looked in first; "" = only the cache and system folders
    download: bool = False  # fetch from the public mirrors when nothing is found locally
    val_fraction: float = 0.1  # held out of the training set for validation / early stopping
    labels_per_class: int = 0  # >0: keep labels for k images per class, the rest unlabelled
    label_fraction: float = 0.0  # >0: keep labels for this fraction (class-balanced)
    rotate: float = 0.0  # augmentation: max random rotation in degrees (0 = off)
    shift: int = 0  # augmentation: max random shift in pixels (0 = off)
    hflip: bool = False  # augmentation: random horizontal flips (off: wrong for digits)
    stream: bool = False  # leave the images on disk and read them chunk by chunk (npy: or plain IDX files)
    chunk_rows: int = 65536  # with stream: images read at once; one chunk is held in memory

    def check(self) -> None:
        _require(0.0 <= self.val_fraction < 1.0, "data.val_fraction must be in [0, 1)")
        _require(self.labels_per_class >= 0, "data.labels_per_class must be >= 0")
        _require(0.0 <= self.label_fraction <= 1.0, "data.label_fraction must be in [0, 1]")
        _require(self.rotate >= 0 and self.shift >= 0, "data.rotate and data.shift must be >= 0")
        _require(self.chunk_rows > 0, "data.chunk_rows must be > 0")


@dataclass
class TrainConfig:
    epochs: int = 20  # passes over the training images (when steps is 0)
    # > 0: exactly this many optimiser steps, whatever the data's size (as many passes as needed, the
    # last one cut short; the LR schedule spans them); 0: `epochs` passes
    steps: int = 0
    batch_size: int = 128
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 3e-3  # peak learning rate (one-cycle warms up to it)
    weight_decay: float = 0.0
    # hold-linear: lr for the first 2/3 of the steps, then linearly to 0 (the ladder paper's schedule)
    schedule: Literal["onecycle", "cosine", "constant", "hold-linear"] = "onecycle"
    corrupt: Literal["none", "gaussian", "dropout", "saltpepper"] = "none"  # denoising input
    corrupt_level: float = 0.0  # sigma for gaussian, drop probability for dropout / saltpepper
    patience: int = 0  # early stopping: epochs without validation gain (0 = off)
    # steps between validation evaluations (curve points; the final step is always one); 0 = each pass
    eval_every: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: Literal["auto", "on", "off"] = "auto"  # torch.compile of the step, once per architecture: auto = CUDA
    # autocast: auto = CUDA (bf16, or fp16 + GradScaler before Ampere) and conv models on AMX CPUs;
    # bf16 / fp16 force a dtype (see aelab/amp.py); models with needs_fp32 always train in fp32
    amp: Literal["auto", "on", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = True  # conv weights in NHWC: faster oneDNN / cuDNN kernels
    grad_clip: float = 0.0  # max gradient norm per player (0 = off)
    max_bad_steps: int = 0  # non-finite losses to skip (and count) before stopping
    progress: Literal["auto", "bar", "lines", "off"] = "auto"

    def check(self) -> None:
        _require(self.epochs > 0, "train.epochs must be > 0")
        _require(self.steps >= 0, "train.steps must be >= 0 (0 = train.epochs passes)")
        _require(self.eval_every >= 0, "train.eval_every must be >= 0 (0 = evaluate after each pass)")
        _require(self.batch_size > 0, "train.batch_size must be > 0")
        _require(self.lr > 0, "train.lr must be > 0")
        _require(self.weight_decay >= 0, "train.weight_decay must be >= 0")
        _require(self.corrupt_level >= 0, "train.corrupt_level must be >= 0")
        if self.corrupt in ("dropout", "saltpepper"):
            _require(self.corrupt_level <= 1, f"train.corrupt_level is a probability for {self.corrupt}")
        _require(self.patience >= 0 and self.max_bad_steps >= 0, "train.patience, max_bad_steps >= 0")


@dataclass
class EvalConfig:
    batch_size: int = 1024
    iw_samples: int = 0  # VAE: importance samples for the IWAE bound on the NLL (0 = off)
    tsne: bool = True  # t-SNE view of the test codes in the report (PCA is always drawn)
    max_points: int = 2000  # test points in the 2-D views

    def check(self) -> None:
        _require(self.batch_size > 0 and self.max_points > 0, "eval sizes must be > 0")
        _require(self.iw_samples >= 0, "eval.iw_samples must be >= 0")


@dataclass
class RunConfig:
    name: str = ""  # run folder name under out_dir ("" = <model>-<data>)
    seed: int = 0
    out_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: Literal["none", "mlflow"] = "none"  # mlflow: log params, metrics, artifacts (aelab.tracking)
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else ./mlruns

    def __post_init__(self) -> None:
        if type(self.model) is ModelConfig:  # resolve the bare default to the model's own config
            self.model = model_config(self.model.name)

    def check(self) -> None:
        for section in (self.model, self.data, self.train, self.eval):
            section.check()

    @property
    def run_name(self) -> str:
        return self.name or f"{self.model.name}-{self.data.name.replace(':', '-').replace('/', '_')}"


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def model_config(name: str) -> ModelConfig:
    """The default config of the registered model `name` (ConfigError lists the valid names)."""
    return registry.get_model_class(name).Config(name=name)


# ----------------------------------------------------------------------------- parsing values


def parse_value(text: str) -> Any:
    """A command-line value: a Python literal if it parses as one, else the bare string."""
    if text in ("true", "false"):
        return text == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where no meaning is lost."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = (value,)
        return tuple(coerce(v, args[0], key) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # a name such as `name=2024` is still a name
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}={value!r} has the wrong type: expected {tp.__name__}")
    return value


# ----------------------------------------------------------------------------- overrides


def _fields(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def set_key(cfg: Any, key: str, value: Any) -> None:
    """Set the dotted `key` of a nested dataclass config to `value` (already parsed)."""
    *path, last = key.split(".")
    node, walked = cfg, []
    for part in path:
        fields = _fields(node)
        if part not in fields or not dataclasses.is_dataclass(getattr(node, part)):
            raise _unknown(".".join(walked + [part]), node, walked)
        node, walked = getattr(node, part), walked + [part]
    fields = _fields(node)
    if last not in fields:
        raise _unknown(key, node, walked)
    if dataclasses.is_dataclass(getattr(node, last)):  # `model=conv`: a section set by its name
        if isinstance(value, dict):
            for k, v in value.items():
                set_key(cfg, f"{key}.{k}", v)
            return
        return set_key(cfg, f"{key}.name", value)
    if isinstance(node, ModelConfig) and last == "name":
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} has the wrong type: expected a model name")
        if value != node.name:
            _replace(cfg, walked, model_config(value))
        return
    setattr(node, last, coerce(value, fields[last], key))


def _replace(cfg: Any, path: list[str], new: Any) -> None:
    node = cfg
    for part in path[:-1]:
        node = getattr(node, part)
    setattr(node, path[-1], new)


def _unknown(key: str, node: Any, walked: list[str]) -> ConfigError:
    prefix = "".join(p + "." for p in walked)
    valid = ", ".join(prefix + name for name in _fields(node))
    return ConfigError(f"unknown config key '{key}'; valid keys here: {valid}")


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dict -> dotted (key, value) pairs."""
    items: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            items += _flatten(v, f"{prefix}{k}.")
        else:
            items.append((prefix + k, v))
    return items


def apply_pairs(cfg: Any, pairs: list[tuple[str, Any]]) -> Any:
    """Apply parsed (key, value) pairs: names of sections first, so a model switch keeps later keys."""
    first = [(k, v) for k, v in pairs if k.endswith(".name") or "." not in k]
    rest = [(k, v) for k, v in pairs if (k, v) not in first]
    for key, value in first + rest:
        set_key(cfg, key, value)
    return cfg


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply `key=value` strings from the command line."""
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"'{item}' is not a key=value override (e.g. train.epochs=5)")
        key, text = item.split("=", 1)
        pairs.append((key.strip(), parse_value(text.strip())))
    return apply_pairs(cfg, pairs)


def load_toml(path: str | Path) -> list[tuple[str, Any]]:
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise ConfigError(f"config file {path} not found")
    raw = read_bytes(path, ConfigError)
    try:
        return _flatten(tomllib.loads(raw.decode("utf-8")))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {short(e)}") from None


def make_config(base: Any, toml: str | Path | None = None, overrides: list[str] = ()) -> Any:
    """`base` (a default dataclass) with a TOML file and then the overrides applied, then checked."""
    if toml is not None:
        try:
            apply_pairs(base, load_toml(toml))
        except ConfigError as e:
            raise e if str(toml) in str(e) else ConfigError(f"{toml}: {e}") from None
    apply_overrides(base, list(overrides))
    if hasattr(base, "check"):
        base.check()
    return base


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Rebuild a config from `to_dict` output (config.json), with the same checks as overrides."""
    return make_config(cls(), None, []) if not d else apply_pairs(cls(), _flatten(d))
