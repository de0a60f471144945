"""Typed configuration tree for FastInst.

The defaults are FastInst-D3 R50 as the official code configures it
(``configs/coco/instance-segmentation/fastinst_R50_ppm-fpn_x1_576.yaml`` family with
``DEC_LAYERS: 3`` and 640 test size). Configs load from YAML (optionally inheriting from a
``_base_`` file) or by an official release's model-zoo name (``fastinst.model_zoo``), take dotted
overrides (``model.decoder.num_layers=1``), are validated (unknown keys get a close-match suggestion,
bad values name the key), and have a canonical hash that identifies a resolved config in the results
database.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml

from fastinst import model_zoo
from fastinst.registry import BACKBONES, DECODERS, PIXEL_DECODERS, QUERY_INITS, Registry

# Registry-backed keys: the accepted values are the names declared in fastinst/registry.py.
BackboneName = Annotated[str, BACKBONES]
PixelDecoderName = Annotated[str, PIXEL_DECODERS]
DecoderName = Annotated[str, DECODERS]
QueryInit = Annotated[str, QUERY_INITS]
DecoderUpdate = Literal["dual_pixel_then_query", "dual_query_then_pixel", "single_query", "single_pixel"]
QuerySource = Literal["E3", "E4", "E5"]


class ConfigError(ValueError):
    """A config key or value is invalid; the message names it."""


@dataclass
class BackboneConfig:
    name: BackboneName = "resnet50"
    # None: random init; "imagenet": torchvision's ImageNet weights API; otherwise a local file.
    weights: str | None = None
    # Stages frozen from the stem (0 = nothing frozen, as the official FREEZE_AT 0).
    freeze_at: int = 0
    # FrozenBN (official, for ImageNet-initialised training); BN or GN (32 groups) train their norms,
    # which a randomly initialised backbone needs (FrozenBN at init is the identity: no normalisation).
    norm: Literal["FrozenBN", "BN", "GN"] = "FrozenBN"


@dataclass
class PixelDecoderConfig:
    name: PixelDecoderName = "ppm_fpn"
    # Transformer-style pixel decoders (Table 5 reconstructions).
    num_encoder_layers: int = 6
    num_heads: int = 8
    dim_feedforward: int = 1024
    num_points: int = 4


@dataclass
class DecoderConfig:
    # "mask2former": Table 1's Mask2Former-light decoder (learnable queries, masked cross-attention
    # cycling over E5/E4/E3, one shared head set; see experiments/configs/mask2former_light.yaml).
    name: DecoderName = "fastinst"
    num_layers: int = 3
    update: DecoderUpdate = "dual_pixel_then_query"
    gt_mask_guidance: bool = True
    pos_embed: Literal["learnable", "sinusoidal"] = "learnable"
    num_heads: int = 8
    dim_feedforward: int = 1024
    dropout: float = 0.0
    # Initialisation of the learnable positional grid P (the official code leaves it uninitialised).
    pos_embed_init_std: float = 0.02


@dataclass
class TestConfig:
    detections_per_image: int = 100
    mask_threshold: float = 0.5


@dataclass
class ModelConfig:
    num_classes: int = 80
    hidden_dim: int = 256
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    query_init: QueryInit = "ia_guided"
    query_source: QuerySource = "E4"
    num_ia_queries: int = 100
    num_aux_queries: int = 8
    pixel_mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    pixel_std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    size_divisibility: int = 32
    # Run everything after the backbone in float32 even under autocast, so mixed precision covers
    # the backbone only (the CPU preset with bfloat16: the decoder's attention is slower in bf16
    # than in fp32 on CPUs, and mask logits keep full precision). Official: false.
    fp32_head: bool = False
    test: TestConfig = field(default_factory=TestConfig)


@dataclass
class IALossConfig:
    assignment: Literal["hungarian", "semantic"] = "hungarian"
    location_cost: bool = True
    # "uniform": plain mean CE over all pixels (official code); "inverse_area": the paper's 1/T
    # weight on the no-object class.
    no_object_weight: Literal["uniform", "inverse_area"] = "uniform"


@dataclass
class LossConfig:
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    ia_weight: float = 20.0
    location_weight: float = 1000.0
    no_object_weight: float = 0.1
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    ia: IALossConfig = field(default_factory=IALossConfig)


@dataclass
class InputConfig:
    min_size_train: list[int] = field(default_factory=lambda: list(range(416, 641, 32)))
    max_size_train: int = 853
    # SparseInst crop branch: pre-resize choices, crop size range (absolute range, pixels).
    crop_enabled: bool = True
    crop_prob: float = 0.5
    crop_resize_choices: list[int] = field(default_factory=lambda: [400, 500, 600])
    crop_size: list[int] = field(default_factory=lambda: [384, 600])
    min_size_test: int = 640
    max_size_test: int = 853
    random_flip: bool = True


@dataclass
class SolverConfig:
    batch_size: int = 16
    max_iter: int = 368750
    base_lr: float = 1e-4
    weight_decay: float = 0.05
    weight_decay_norm: float = 0.0
    weight_decay_embed: float = 0.0
    backbone_multiplier: float = 0.1
    # LR x gamma at these fractions of max_iter (official: 327778/368750, 355092/368750).
    steps: list[float] = field(default_factory=lambda: [0.889, 0.963])
    gamma: float = 0.1
    warmup_iters: int = 10
    # Linear warmup from this fraction of the lr (official 1.0: no warmup in effect).
    warmup_factor: float = 1.0
    # 0 disables clipping, as in the official FastInst config.
    clip_grad_norm: float = 0.0
    amp: bool = True
    # Autocast dtype: float16 (with loss scaling; CUDA only, CPU runs fp32) or bfloat16 (no scaling;
    # CUDA, and CPUs with native bf16 such as AVX512-BF16/AMX).
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    checkpoint_period: int = 5000
    eval_period: int = 5000
    log_period: int = 20


@dataclass
class DataConfig:
    num_workers: int = 2
    filter_empty: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    input: InputConfig = field(default_factory=InputConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 42

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self) -> str:
        """Canonical SHA-256 (first 16 hex digits) of the resolved config."""
        return config_hash(self)

    def get(self, dotted: str) -> Any:
        node: Any = self
        for part in dotted.split("."):
            node = getattr(node, part)
        return node


# --------------------------------------------------------------------------- building


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _registry(tp: Any) -> Registry | None:
    """The registry an ``Annotated[str, REGISTRY]`` field's values come from; None for other types."""
    if typing.get_origin(tp) is not Annotated:
        return None
    return next((m for m in typing.get_args(tp)[1:] if isinstance(m, Registry)), None)


def field_registry(dotted: str) -> Registry | None:
    """The registry whose declared names the key ``dotted`` (e.g. ``model.backbone.name``) accepts, if any."""
    *parents, name = dotted.split(".")
    cls: Any = Config
    for part in parents:
        cls = _hints(cls)[part]
    return _registry(_hints(cls)[name])


def _check_choice(value: Any, choices: tuple[Any, ...], key: str) -> Any:
    if value not in choices:
        hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"{key}: invalid value {value!r}; choose one of {list(choices)}{extra}")
    return value


def describe_type(tp: Any, minimum: float | None = None) -> str:
    """The type hint ``tp`` in words, e.g. ``a list of 2 integers >= 1 or null``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(a, minimum) for a in args)
    if origin is Annotated:
        return describe_type(args[0], minimum)
    if origin is Literal:
        return f"one of {list(args)}"
    if origin is tuple:
        return f"a list of {len(args)} {_plural(describe_type(args[0], minimum))}"
    if origin is list:
        return f"a list of {_plural(describe_type(args[0], minimum))}"
    if origin is dict:
        return f"a mapping of names to {_plural(describe_type(args[1], minimum))}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    bound = f" >= {minimum}" if minimum is not None and tp in (int, float) else ""
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false",
            type(None): "null"}[tp] + bound


def _plural(words: str) -> str:
    noun, _, rest = words.removeprefix("an ").removeprefix("a ").partition(" ")
    return f"{noun}s {rest}".strip()


def _fits(value: Any, tp: Any, minimum: float | None) -> bool:
    """Whether ``value`` fits the scalar type ``tp`` (a number also ``minimum``); a bool is no number."""
    if tp is bool or isinstance(value, bool):
        return tp is bool and isinstance(value, bool)
    if tp in (int, float):
        return isinstance(value, int if tp is int else (int, float)) and (minimum is None or value >= minimum)
    return value is None if tp is type(None) else isinstance(value, tp)


def check_value(value: Any, tp: Any, key: str, minimum: float | None = None) -> Any:
    """``value`` (from YAML) checked against the type hint ``tp`` and returned converted where lossless
    (an integer for a float, a list for a tuple); ``minimum`` bounds its numbers. A misfit raises
    ``ConfigError`` naming ``key``: a bad choice (``Literal``, a registry's names) or a nested mapping's
    own key by itself, any other as ``key: expected <tp in words>, got <value>``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is Literal:
        return _check_choice(value, args, key)
    if origin is Annotated:
        value = check_value(value, args[0], key, minimum)
        registry = _registry(tp)
        return value if registry is None else _check_choice(value, registry.choices, key)
    try:
        if origin in (Union, types.UnionType):
            for arg in args:
                try:
                    return check_value(value, arg, key, minimum)
                except ConfigError:
                    continue
        elif origin is list and isinstance(value, (list, tuple)):
            return [check_value(v, args[0], key, minimum) for v in value]
        elif origin is tuple and isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(check_value(v, a, key, minimum) for v, a in zip(value, args))
        elif origin is dict and isinstance(value, dict):
            return {k: check_value(v, args[1], key, minimum) for k, v in value.items()}
        elif origin is None and _fits(value, tp, minimum):
            return float(value) if tp is float else value
    except ConfigError:
        pass  # an item's misfit: the whole value is reported
    raise ConfigError(f"{key}: expected {describe_type(tp, minimum)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in hints:
            raise ConfigError(_unknown_key_message(prefix + str(name), [prefix + k for k in hints]))
        kwargs[name] = check_value(value, hints[name], prefix + name)
    return cls(**kwargs)


def _unknown_key_message(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown config key {key!r}{hint}"


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the config tree, e.g. ``model.decoder.num_layers``."""
    keys = []
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            keys.extend(all_keys(tp, prefix + f.name + "."))
        else:
            keys.append(prefix + f.name)
    return keys


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(override: str) -> tuple[str, Any]:
    """``"a.b=1"`` → ``("a.b", 1)``; the value is parsed as YAML (so ``true``, ``[1, 2]`` work)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form KEY=VALUE")
    key, raw = override.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({exc})") from exc
    return key, value


def nest(key: str, value: Any) -> dict[str, Any]:
    """``("a.b.c", v)`` → ``{"a": {"b": {"c": v}}}``."""
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping → dotted leaf keys (``{"a": {"b": 1}}`` → ``{"a.b": 1}``); the inverse of ``nest``."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config YAML, resolving ``_base_`` (a path relative to the file) recursively."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is not None:
        data = _merge(read_yaml(path.parent / base), data)
    return data


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> Config:
    """Build and validate a Config from a (nested or dotted-key) mapping plus overrides."""
    merged: dict[str, Any] = {}
    for k, v in data.items():
        merged = _merge(merged, nest(k, v) if "." in str(k) else {k: v})
    for override in overrides or []:
        merged = _merge(merged, nest(*parse_override(override)))
    cfg = _build(Config, merged)
    validate(cfg)
    return cfg


def resolve_config_path(path: str | Path) -> Path:
    """``path`` itself when it is a file or has a folder part, else the model-zoo config of that name
    (e.g. ``fastinst_R50_ppm-fpn_x3_640``); a file that exists wins over a name."""
    path = Path(path)
    if path.is_file() or len(path.parts) > 1:
        return path
    try:
        return model_zoo.get_config_file(path.name)
    except KeyError:
        raise ConfigError(f"unknown config {path.name!r}: not a file and not a model-zoo name "
                          f"(known: {', '.join(model_zoo.names())})") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a config: defaults (``path=None``), a YAML file or a model-zoo name (``fastinst.model_zoo``),
    then dotted ``KEY=VALUE`` overrides."""
    data = read_yaml(resolve_config_path(path)) if path is not None else {}
    try:
        return config_from_dict(data, overrides)
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from exc
        raise


def config_hash(cfg: Config) -> str:
    blob = json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def validate(cfg: Config) -> None:
    """Cross-field checks: contradictory or out-of-range variant combinations."""
    m = cfg.model
    checks: list[tuple[bool, str]] = [
        (m.num_classes >= 1, "model.num_classes must be >= 1"),
        (m.hidden_dim % m.decoder.num_heads == 0, "model.hidden_dim must be divisible by model.decoder.num_heads"),
        (m.hidden_dim % 32 == 0, "model.hidden_dim must be a multiple of 32 (GroupNorm(32))"),
        (0 <= m.decoder.num_layers <= 12, "model.decoder.num_layers must be in 0..12"),
        (m.num_ia_queries >= 1, "model.num_ia_queries must be >= 1"),
        (m.num_aux_queries >= 0, "model.num_aux_queries must be >= 0"),
        (m.size_divisibility >= 32 and m.size_divisibility % 32 == 0,
         "model.size_divisibility must be a positive multiple of 32"),
        (len(m.pixel_mean) == 3 and len(m.pixel_std) == 3, "model.pixel_mean/pixel_std need 3 values"),
        (m.test.detections_per_image >= 1, "model.test.detections_per_image must be >= 1"),
        (cfg.loss.num_points >= 1, "loss.num_points must be >= 1"),
        (0.0 <= cfg.loss.importance_sample_ratio <= 1.0, "loss.importance_sample_ratio must be in [0, 1]"),
        (cfg.loss.oversample_ratio >= 1.0, "loss.oversample_ratio must be >= 1"),
        (all(0.0 < s <= 1.0 for s in cfg.solver.steps), "solver.steps are fractions of max_iter in (0, 1]"),
        (cfg.solver.batch_size >= 1, "solver.batch_size must be >= 1"),
        (cfg.solver.max_iter >= 1, "solver.max_iter must be >= 1"),
        (0.0 <= cfg.solver.warmup_factor <= 1.0, "solver.warmup_factor must be in [0, 1]"),
        (len(cfg.input.crop_size) == 2 and cfg.input.crop_size[0] <= cfg.input.crop_size[1],
         "input.crop_size must be [min, max]"),
        (len(cfg.input.min_size_train) >= 1, "input.min_size_train needs at least one size"),
    ]
    if m.query_init != "ia_guided":
        checks.append((m.query_source == "E4",
                       f"model.query_source={m.query_source} only applies to model.query_init=ia_guided"))
        checks.append((cfg.loss.ia.assignment == "hungarian" and cfg.loss.ia.location_cost,
                       f"loss.ia.* (IA-q loss, location cost) only applies to model.query_init=ia_guided, "
                       f"not {m.query_init!r}"))
    p = m.pixel_decoder
    if p.name in ("transformer_encoder", "msdeform_attn"):
        checks += [
            (p.num_encoder_layers >= 1, f"model.pixel_decoder.num_encoder_layers must be >= 1 for {p.name}"),
            (p.num_heads >= 1 and m.hidden_dim % p.num_heads == 0,
             f"model.hidden_dim must be divisible by model.pixel_decoder.num_heads ({p.num_heads}) for {p.name}"),
            (p.dim_feedforward >= 1, "model.pixel_decoder.dim_feedforward must be >= 1"),
        ]
    if p.name == "msdeform_attn":
        checks.append((p.num_points >= 1, "model.pixel_decoder.num_points must be >= 1"))
    if m.decoder.name == "mask2former":
        m2f = "model.decoder.name=mask2former (Mask2Former-light)"
        checks += [
            (m.query_init != "ia_guided",
             f"{m2f} has no IA-guided queries: set model.query_init to learnable (its own), zero or resize"),
            (not m.decoder.gt_mask_guidance, f"{m2f} has no GT-mask-guided learning: set "
             "model.decoder.gt_mask_guidance=false"),
            (m.decoder.update == "single_query", f"{m2f} updates only the queries: set "
             f"model.decoder.update=single_query (got {m.decoder.update})"),
            (m.num_aux_queries == 0, f"{m2f} has no auxiliary queries: set model.num_aux_queries=0"),
        ]
    if m.backbone.norm == "GN" and m.backbone.weights is not None:
        checks.append((False, "model.backbone.norm=GN cannot load BN-trained model.backbone.weights; "
                              "use FrozenBN or BN with pretrained weights"))
    if cfg.loss.ia.assignment == "semantic":
        checks.append((not cfg.loss.ia.location_cost,
                       "loss.ia.location_cost=true needs loss.ia.assignment=hungarian (dense semantic "
                       "targets have no matching to put a location cost in)"))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
