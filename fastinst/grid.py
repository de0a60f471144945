"""Ablation grids: a YAML file → its rows (name, overrides, resolved config, seeds, stages).

A grid file::

    name: table6a_layers            # default: the file's stem
    base: ../configs/cpu.yaml       # a config file (relative to this file) or an inline mapping
    axes:                           # dotted key → values; rows are the product of all axes ...
      model.decoder.num_layers: [1, 2, 3]
    zip:                            # ... and of zip groups, whose lists are zipped (coupled keys)
      - {model.num_ia_queries: [50, 100], model.num_aux_queries: [4, 8]}
    rows:                           # explicit rows for tables that are not products
      - {name: baseline, overrides: {model.query_init: learnable}}
    seeds: 3                        # a count (0, 1, 2) or a list of seeds
    stages: [train, eval, analyze]  # names of the runner's stages (runner/stages.py)
    stage_options: {bench: {images: 100}}
    data: ../../data/coco_tiny      # a folder, or {train_json, train_images, val_json, val_images}
    resources: {gpus: 1}
    speed: {device: cuda, dtype: float32, backend: eager}  # the table's reference speed setting
    baseline: D3                    # optional: the row others are compared with (alias: reference)
    seed_policy: {min: 2, max: 6}   # optional: more seeds for rows undecided against the baseline
    priority: 0
    max_attempts: 3

When ``rows`` and ``axes``/``zip`` are both given, every explicit row is combined with every
product combination. The rows' configs are validated before anything is returned; errors name the
file, the line and the key (``GridError``).

Stages belong to the runner: ``stages``/``stage_options`` are checked against the catalog passed as
``stages=`` (``runner.stages.STAGES``: names, typed options, which stages need data). Without one,
only their structure is checked (names are strings, options are mappings), which is all that
``fastinst analyze-grid`` needs. ``speed`` names the device type, dtype and backend whose FPS the
grid's tables and plots show (default: ``cpu``/``float32``/``eager`` for ``gpus: 0`` grids,
``cuda``/``float32``/``eager`` otherwise). Like the stages, ``resources``, ``speed``, ``seed_policy``,
``priority`` and ``max_attempts`` are the runner's: a grid file is one experiment declaration, so they
are parsed and checked here, as data; what they mean (queueing, measuring, adding seeds) is ``runner``'s.

A row's ``hash`` identifies its variant independently of the seed: it is the canonical hash of
its resolved config with ``seed`` set to 0. ``Row.config_for_seed(seed)`` gives the config a run
executes (``cfg.seed`` set to the run's seed), whose ``Config.hash()`` identifies the run's config.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from fastinst.config import Config, ConfigError, all_keys, config_from_dict, flatten, read_yaml
from fastinst.registry import BACKEND_NAMES

DEFAULT_STAGES = ["train", "eval", "analyze"]
DATA_KEYS = ("root", "train_json", "train_images", "val_json", "val_images")
TOP_KEYS = (
    "name", "base", "axes", "zip", "rows", "seeds", "stages", "stage_options", "data",
    "resources", "speed", "reference", "baseline", "seed_policy", "priority", "max_attempts", "description",
)
SPEED_DEVICES = ("cpu", "cuda")
SPEED_DTYPES = ("float32", "float16", "bfloat16")


class GridError(ValueError):
    """A grid file is invalid; the message names the file, line and key."""


class StageOptionError(ValueError):
    """A stage option is unknown or has a bad value; ``key`` names the option."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class StageSpec(Protocol):
    """What a grid needs to know of a stage (``runner.stages.Stage`` provides it)."""

    @property
    def needs_data(self) -> bool: ...

    @property
    def runs_alone(self) -> bool: ...

    def check_options(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        """The options checked; ``StageOptionError`` for an unknown option or a bad value."""


@dataclass(frozen=True)
class SpeedSetting:
    """Where a grid's FPS are compared: device type (``cpu``/``cuda``), dtype and backend."""

    device: str = "cpu"
    dtype: str = "float32"
    backend: str = "eager"

    def __str__(self) -> str:
        return f"{self.device}/{self.dtype}/{self.backend}"


@dataclass(frozen=True)
class SeedPolicy:
    """Seeds added where a comparison with the baseline is undecided (``runner.seed_policy``): every row
    runs ``min`` seeds; a row whose ``metric`` difference from the baseline is undecided at ``level`` gets
    one more seed (the baseline too), step by step, up to ``max`` seeds per row."""

    min: int
    max: int
    metric: str = "AP"
    level: float = 0.95


COMPARABLE_METRICS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")


@dataclass
class Row:
    name: str
    overrides: dict[str, Any]
    config: Config
    hash: str
    seeds: list[int]
    stages: list[str]
    resources: dict[str, int]

    def config_for_seed(self, seed: int) -> Config:
        return dataclasses.replace(self.config, seed=seed)


@dataclass
class Grid:
    name: str
    path: Path | None
    axes: list[str]
    rows: list[Row]
    seeds: list[int]
    stages: list[str]
    stage_options: dict[str, dict[str, Any]]
    data: dict[str, str] | None
    resources: dict[str, int]
    reference: str | None = None
    priority: int = 0
    max_attempts: int = 3
    spec: dict[str, Any] = field(default_factory=dict)
    speed: SpeedSetting = field(default_factory=SpeedSetting)
    seed_policy: SeedPolicy | None = None


def variant_hash(cfg: Config) -> str:
    """The config hash with the seed neutralised: identical for every seed of one variant."""
    return dataclasses.replace(cfg, seed=0).hash()


def format_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def row_name(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k}={format_value(v)}" for k, v in overrides.items()) or "base"


class _Lines:
    """Line numbers (1-based) of the keys and items of a YAML document, by path."""

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[Any, ...], int] = {}
        node = yaml.compose(text)
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: tuple[Any, ...]) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                sub = (*path, key_node.value)
                self.lines[sub] = key_node.start_mark.line + 1
                self._walk(value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, (*path, i))

    def line(self, path: tuple[Any, ...]) -> int:
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, 1)


def line_of(text: str, *path: Any) -> int:
    """The 1-based line of the key or item at ``path`` in a YAML document (or of its closest parent)."""
    return _Lines(text).line(tuple(path))


class _Checker:
    def __init__(self, source: str, lines: _Lines) -> None:
        self.source = source
        self.lines = lines

    def error(self, path: tuple[Any, ...], message: str) -> GridError:
        section = str(path[0]) if path else "grid"
        return GridError(f"{self.source}:{self.lines.line(path)}: {section}: {message}")

    def check_key(self, key: Any, path: tuple[Any, ...]) -> str:
        if not isinstance(key, str) or key not in _KNOWN_KEYS:
            close = difflib.get_close_matches(str(key), _KNOWN_KEYS, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise self.error(path, f"unknown config key {key!r}{hint}")
        if key == "seed" and path[0] != "base":
            raise self.error(path, "set seeds with the grid's 'seeds', not the config key 'seed'")
        return key

    def check_values(self, key: str, values: Any, path: tuple[Any, ...], base: dict[str, Any]) -> list[Any]:
        if not isinstance(values, list) or not values:
            raise self.error(path, f"{key}: expected a non-empty list of values, got {values!r}")
        for i, value in enumerate(values):
            self.check_value(key, value, (*path, i), base)
        return values

    def check_value(self, key: str, value: Any, path: tuple[Any, ...], base: dict[str, Any]) -> None:
        """Type-check one value on its own (cross-field checks come with the whole row)."""
        try:
            config_from_dict({**base, key: value})
        except ConfigError as exc:
            if str(exc).startswith((f"{key}:", f"{key}[")):
                raise self.error(path, str(exc)) from None


_KNOWN_KEYS = all_keys()


def _base_mapping(spec: dict[str, Any], root: Path, chk: _Checker) -> dict[str, Any]:
    base = spec.get("base", {})
    if base is None:
        return {}
    if isinstance(base, str):
        return _read_base(root / base, ("base",), chk)
    if not isinstance(base, dict):
        raise chk.error(("base",), f"expected a config path or mapping, got {base!r}")
    data = dict(base)
    out: dict[str, Any] = {}
    if "_base_" in data:
        out = _read_base(root / str(data.pop("_base_")), ("base", "_base_"), chk)
    for key, value in flatten(data).items():
        where = ("base", key if key in data else key.split(".")[0])
        chk.check_key(key, where)
        chk.check_value(key, value, where, out)
        out[key] = value
    return out


def _read_base(path: Path, where: tuple[Any, ...], chk: _Checker) -> dict[str, Any]:
    try:
        data = flatten(read_yaml(path))
        config_from_dict(data)
    except ConfigError as exc:
        message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        raise chk.error(where, message) from None
    return data


def _seeds(spec: dict[str, Any], base: dict[str, Any], chk: _Checker) -> list[int]:
    seeds = spec.get("seeds", [base.get("seed", 0)])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise chk.error(("seeds",), f"a seed count must be >= 1, got {seeds}")
        return list(range(seeds))
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise chk.error(("seeds",), f"expected a count or a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise chk.error(("seeds",), f"repeated seed in {seeds}")
    return seeds


def _stages(spec: dict[str, Any], catalog: Mapping[str, StageSpec] | None, chk: _Checker) -> list[str]:
    """The grid's stages, in the catalog's (execution) order; as given when there is no catalog."""
    stages = spec.get("stages", DEFAULT_STAGES)
    if not isinstance(stages, list) or not stages:
        raise chk.error(("stages",), f"expected a non-empty list of stages, got {stages!r}")
    for i, stage in enumerate(stages):
        if not isinstance(stage, str) or (catalog is not None and stage not in catalog):
            known = list(catalog or ())
            close = difflib.get_close_matches(str(stage), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            choose = f" (choose from {known})" if catalog is not None else ""
            raise chk.error(("stages", i), f"unknown stage {stage!r}{choose}{hint}")
    if len(set(stages)) != len(stages):
        raise chk.error(("stages",), f"repeated stage in {stages}")
    if catalog is None:
        return list(stages)
    for stage in stages:
        if catalog[stage].runs_alone and len(stages) > 1:
            raise chk.error(("stages",), f"the {stage} stage runs alone")
    return [s for s in catalog if s in stages]


def _stage_options(spec: dict[str, Any], stages: list[str], catalog: Mapping[str, StageSpec] | None,
                   chk: _Checker) -> dict[str, dict[str, Any]]:
    options = spec.get("stage_options") or {}
    if not isinstance(options, dict):
        raise chk.error(("stage_options",), f"expected a mapping stage → options, got {options!r}")
    for stage, opts in options.items():
        if stage not in stages:
            raise chk.error(("stage_options", stage), f"options for {stage!r}, which is not in stages {stages}")
        if not isinstance(opts, dict):
            raise chk.error(("stage_options", stage), f"expected a mapping, got {opts!r}")
        if catalog is not None:
            try:
                catalog[stage].check_options(opts)
            except StageOptionError as exc:
                raise chk.error(("stage_options", stage, exc.key), str(exc)) from None
    return {stage: dict(opts) for stage, opts in options.items()}


def _data(spec: dict[str, Any], root: Path, stages: list[str], catalog: Mapping[str, StageSpec] | None,
          chk: _Checker) -> dict[str, str] | None:
    data = spec.get("data")
    if data is None:
        needing = [s for s in stages if catalog is not None and catalog[s].needs_data]
        if needing:
            raise chk.error(("stages",), f"stages {needing} need 'data'")
        return None
    paths = {"root": data} if isinstance(data, str) else data
    if not isinstance(paths, dict):
        raise chk.error(("data",), f"expected a folder or a mapping of paths, got {data!r}")
    out: dict[str, str] = {}
    for key, value in paths.items():
        where = ("data",) if isinstance(data, str) else ("data", key)
        if key not in DATA_KEYS:
            raise chk.error(where, f"unknown data key {key!r} (known: {list(DATA_KEYS)})")
        if not isinstance(value, str):
            raise chk.error(where, f"{key}: expected a path, got {value!r}")
        path = (root / value).resolve()
        if not path.exists():
            raise chk.error(where, f"{key}: {path} does not exist")
        out[key] = str(path)
    return out


def _resources(spec: dict[str, Any], chk: _Checker) -> dict[str, int]:
    res = spec.get("resources") or {}
    if not isinstance(res, dict):
        raise chk.error(("resources",), f"expected a mapping, got {res!r}")
    for key in res:
        if key != "gpus":
            raise chk.error(("resources", key), f"unknown resource {key!r} (known: ['gpus'])")
    gpus = res.get("gpus", 1)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise chk.error(("resources", "gpus"), f"gpus: expected an integer >= 0, got {gpus!r}")
    return {"gpus": gpus}


def _speed(spec: dict[str, Any], gpus: int, chk: _Checker) -> SpeedSetting:
    """The ``speed`` field (device, dtype, backend); unset keys default by ``resources.gpus``."""
    given = spec.get("speed") or {}
    if not isinstance(given, dict):
        raise chk.error(("speed",), f"expected a mapping {{device, dtype, backend}}, got {given!r}")
    choices = {"device": SPEED_DEVICES, "dtype": SPEED_DTYPES, "backend": BACKEND_NAMES}
    for key, value in given.items():
        if key not in choices:
            raise chk.error(("speed", key), f"unknown key {key!r} (known: {list(choices)})")
        allowed = choices[key]
        if not isinstance(value, str) or not value or (allowed is not None and value not in allowed):
            wanted = f"one of {list(allowed)}"
            raise chk.error(("speed", key), f"{key}: expected {wanted}, got {value!r}")
    return SpeedSetting(given.get("device", "cpu" if gpus == 0 else "cuda"), given.get("dtype", "float32"),
                        given.get("backend", "eager"))


def reference_speed(spec: dict[str, Any]) -> SpeedSetting:
    """The speed setting of a (validated) grid mapping, e.g. a grid's spec stored in the results database."""
    chk = _Checker("<grid>", _Lines(""))
    return _speed(spec, _resources(spec, chk)["gpus"], chk)


def _int_field(spec: dict[str, Any], key: str, default: int, minimum: int, chk: _Checker) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise chk.error((key,), f"expected an integer >= {minimum}, got {value!r}")
    return value


def _seed_policy(spec: dict[str, Any], seeds: list[int], baseline: str | None, stages: list[str],
                 chk: _Checker) -> SeedPolicy | None:
    """The ``seed_policy`` field: ``{min, max, metric, level}``; ``min`` is the number of ``seeds``."""
    given = spec.get("seed_policy")
    if given is None:
        return None
    if not isinstance(given, dict):
        raise chk.error(("seed_policy",), f"expected a mapping {{min, max, metric, level}}, got {given!r}")
    for key in given:
        if key not in ("min", "max", "metric", "level"):
            raise chk.error(("seed_policy", key), f"unknown key {key!r} (known: ['min', 'max', 'metric', 'level'])")

    def _seed_count(key: str, default: int | None) -> int:
        value = given.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise chk.error(("seed_policy", key), f"{key}: expected an integer >= 2, got {value!r}")
        return value

    low, high = _seed_count("min", len(seeds)), _seed_count("max", None)
    if low != len(seeds):
        raise chk.error(("seed_policy", "min"), f"min: {low} but the grid has {len(seeds)} seed(s) {seeds}; "
                                                f"the first seeds are the grid's seeds (give seeds: {low})")
    if high < low:
        raise chk.error(("seed_policy", "max"), f"max: {high} is below min: {low}")
    metric = given.get("metric", "AP")
    if metric not in COMPARABLE_METRICS:
        raise chk.error(("seed_policy", "metric"), f"metric: expected one of {list(COMPARABLE_METRICS)}, got {metric!r}")
    level = given.get("level", 0.95)
    if isinstance(level, bool) or not isinstance(level, float) or not 0.5 <= level < 1:
        raise chk.error(("seed_policy", "level"), f"level: expected a number in [0.5, 1), got {level!r}")
    if baseline is None:
        raise chk.error(("seed_policy",), "a seed policy needs a baseline row (baseline: ROW)")
    if "eval" not in stages:
        raise chk.error(("seed_policy",), f"a seed policy needs the eval stage (stages: {stages})")
    return SeedPolicy(low, high, metric, level)


def stored_seed_policy(spec: dict[str, Any], seeds: list[int], baseline: str | None,
                       stages: list[str]) -> SeedPolicy | None:
    """The seed policy of a (validated) grid mapping, e.g. a grid's spec stored in the results database."""
    return _seed_policy(spec, seeds, baseline, stages, _Checker("<grid>", _Lines("")))


def _baseline(spec: dict[str, Any], rows: Mapping[str, Any], chk: _Checker) -> str | None:
    """``baseline`` (or its older name ``reference``): a row name."""
    names = {key: spec[key] for key in ("baseline", "reference") if spec.get(key) is not None}
    if len(set(names.values())) > 1:
        raise chk.error(("baseline",), f"baseline {names['baseline']!r} and reference {names['reference']!r} "
                                       f"differ; reference is the older name of baseline: give one")
    key, baseline = next(iter(names.items()), ("baseline", None))
    if baseline is not None and baseline not in rows:
        close = difflib.get_close_matches(str(baseline), list(rows), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise chk.error((key,), f"no row named {baseline!r}{hint}")
    return baseline


def _combinations(spec: dict[str, Any], base: dict[str, Any], chk: _Checker) -> tuple[list[str], list[dict[str, Any]]]:
    """The product of ``axes`` and ``zip`` groups: (axis keys, list of override mappings)."""
    factors: list[list[dict[str, Any]]] = []
    keys: list[str] = []
    axes = spec.get("axes") or {}
    if not isinstance(axes, dict):
        raise chk.error(("axes",), f"expected a mapping of config key → values, got {axes!r}")
    for key, values in axes.items():
        chk.check_key(key, ("axes", key))
        chk.check_values(key, values, ("axes", key), base)
        factors.append([{key: v} for v in values])
        keys.append(key)
    groups = spec.get("zip") or []
    if not isinstance(groups, list):
        raise chk.error(("zip",), f"expected a list of mappings key → values, got {groups!r}")
    for g, group in enumerate(groups):
        if not isinstance(group, dict) or not group:
            raise chk.error(("zip", g), f"expected a mapping of config key → values, got {group!r}")
        lengths = set()
        for key, values in group.items():
            chk.check_key(key, ("zip", g, key))
            if key in keys:
                raise chk.error(("zip", g, key), f"{key!r} appears twice among axes and zip groups")
            chk.check_values(key, values, ("zip", g, key), base)
            lengths.add(len(values))
            keys.append(key)
        if len(lengths) > 1:
            raise chk.error(("zip", g), f"zipped lists must have equal lengths, got {sorted(lengths)}")
        factors.append([dict(zip(group, vals)) for vals in zip(*group.values())])
    combos = [dict(kv for part in parts for kv in part.items()) for parts in itertools.product(*factors)]
    return keys, combos


def _explicit_rows(spec: dict[str, Any], axis_keys: list[str], base: dict[str, Any],
                   chk: _Checker) -> list[tuple[str | None, dict[str, Any], tuple[Any, ...]]]:
    rows = spec.get("rows")
    if rows is None:
        return []
    if not isinstance(rows, list) or not rows:
        raise chk.error(("rows",), f"expected a non-empty list of {{name, overrides}}, got {rows!r}")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) - {"name", "overrides"}:
            raise chk.error(("rows", i), f"expected a mapping with 'name' and 'overrides', got {row!r}")
        name = row.get("name")
        if name is not None and not isinstance(name, str):
            raise chk.error(("rows", i, "name"), f"expected a string, got {name!r}")
        overrides = row.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise chk.error(("rows", i, "overrides"), f"expected a mapping, got {overrides!r}")
        flat = flatten(overrides)
        for key, value in flat.items():
            path = ("rows", i, "overrides", key.split(".")[0] if key not in overrides else key)
            chk.check_key(key, path)
            if key in axis_keys:
                raise chk.error(path, f"{key!r} is both an axis and a row override")
            chk.check_value(key, value, path, base)
        out.append((name, flat, ("rows", i)))
    return out


def parse_grid(spec: Any, source: str = "<grid>", root: Path | None = None, text: str | None = None,
               path: Path | None = None, stages: Mapping[str, StageSpec] | None = None) -> Grid:
    """Validate a grid mapping (``text``, if given, locates errors by line) and return its rows.

    ``stages``: the runner's stage catalog to check ``stages``/``stage_options`` against (see the module
    docstring)."""
    chk = _Checker(source, _Lines(text) if text is not None else _Lines(""))
    root = root or Path.cwd()
    if not isinstance(spec, dict):
        raise chk.error((), f"a grid must be a mapping, got {type(spec).__name__}")
    for key in spec:
        if key not in TOP_KEYS:
            close = difflib.get_close_matches(str(key), TOP_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise chk.error((key,), f"unknown grid field {key!r}{hint}")
    name = spec.get("name") or (path.stem if path else None)
    if not isinstance(name, str) or not name:
        raise chk.error(("name",), f"a grid needs a name, got {name!r}")
    base = _base_mapping(spec, root, chk)
    seeds = _seeds(spec, base, chk)
    catalog = stages
    stage_list = _stages(spec, catalog, chk)
    stage_options = _stage_options(spec, stage_list, catalog, chk)
    data = _data(spec, root, stage_list, catalog, chk)
    resources = _resources(spec, chk)
    speed = _speed(spec, resources["gpus"], chk)
    axis_keys, combos = _combinations(spec, base, chk)
    explicit = _explicit_rows(spec, axis_keys, base, chk)

    planned: list[tuple[str, dict[str, Any], tuple[Any, ...]]] = []
    for ex_name, ex_over, ex_path in explicit or [(None, {}, ())]:
        for combo in combos:
            overrides = {**ex_over, **combo}
            parts = [p for p in (ex_name or (row_name(ex_over) if ex_over else ""), row_name(combo) if combo else "") if p]
            planned.append((",".join(parts) or "base", overrides, ex_path or (("axes",) if combo else ("base",))))

    rows: list[Row] = []
    seen: dict[str, tuple[Any, ...]] = {}
    for rname, overrides, where in planned:
        if rname in seen:
            raise chk.error(where, f"two rows are named {rname!r}")
        seen[rname] = where
        try:
            cfg = config_from_dict({**base, **overrides})
        except ConfigError as exc:
            raise chk.error(where, f"row {rname!r}: {exc}") from None
        rows.append(Row(rname, overrides, cfg, variant_hash(cfg), seeds, stage_list, resources))

    reference = _baseline(spec, seen, chk)
    return Grid(
        name=name, path=path, axes=axis_keys, rows=rows, seeds=seeds, stages=stage_list,
        stage_options=stage_options, data=data, resources=resources, reference=reference,
        priority=_int_field(spec, "priority", 0, -(10**6), chk),
        max_attempts=_int_field(spec, "max_attempts", 3, 1, chk), spec=spec, speed=speed,
        seed_policy=_seed_policy(spec, seeds, reference, stage_list, chk),
    )


def read_grid_yaml(path: Path, what: str = "grid file") -> tuple[Any, str]:
    """The parsed YAML of a grid-like file and its text; errors name the file."""
    if not path.is_file():
        raise GridError(f"{path}: {what} not found")
    text = path.read_text()
    try:
        return yaml.safe_load(text), text
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: not valid YAML: {exc}") from None


def load_grid(path: str | Path, stages: Mapping[str, StageSpec] | None = None) -> Grid:
    """Read and validate a grid YAML file (see the module docstring; ``stages``: as in ``parse_grid``)."""
    path = Path(path)
    spec, text = read_grid_yaml(path)
    return parse_grid(spec, source=str(path), root=path.parent, text=text, path=path, stages=stages)
