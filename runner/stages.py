"""The runner's stages, in one registry: name → run function, typed options, data needed, products.

A grid's ``stages`` name entries of ``STAGES`` (they run in the registry's order) and its
``stage_options: {stage: {option: value}}`` are checked against the stage's options dataclass when
the grid is read (``load_stage_grid``/``parse_stage_grid`` here pass the registry to ``fastinst.grid``), with
errors naming the file, line and key. A job gets the options with their defaults filled in from
``JobContext.options_for(stage)``.

What a stage produces: ``metrics`` (columns of the ``metrics`` table it fills; everything else in
its result goes to ``metrics.extra[stage]``), ``artifacts`` (kinds of files it records) and
``speed`` (it yields speed measurements). ``exclusive`` stages time something and must run alone
on their host: they have no run function here; the job queues them as a measurement job that
``runner.measure`` (a layer above this registry) runs. ``runs_alone`` stages cannot be combined with
other stages in one grid.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from fastinst.config import Config, ConfigError, check_value
from fastinst.engine.records import StepRecord
from fastinst.grid import Grid, StageOptionError, load_grid, parse_grid

EVAL_KEYS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR100")
ANALYZE_KEYS = ("params", "gflops")
SPEED_KEYS = ("fps", "fps_min", "fps_max")
MATCHING = "matching"  # the eval stage's artifact kind: the run's per-image matching (runner.comparison reads it)


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class TrainOptions:
    """The train stage takes everything from the run's config."""


@dataclass(frozen=True)
class EvalOptions:
    weights: str | None = None  # default: the train stage's checkpoint
    vis_images: int = field(default=8, metadata={"min": 0})  # val images drawn with their predictions
    bootstrap: int = field(default=1000, metadata={"min": 0})  # image resamples of the AP intervals (0: none)


@dataclass(frozen=True)
class AnalyzeOptions:
    size: tuple[int, int] | None = field(default=None, metadata={"min": 1})  # (H, W); default: the engine's


@dataclass(frozen=True)
class BenchOptions:
    weights: str | None = None  # default: the train stage's checkpoint (speed does not depend on it)
    images: int = field(default=100, metadata={"min": 1})
    warmup: int = field(default=5, metadata={"min": 0})
    repeats: int = field(default=3, metadata={"min": 1})


@dataclass(frozen=True)
class NoopOptions:
    sleep: float = field(default=0.0, metadata={"min": 0})
    fail_attempts: int = field(default=0, metadata={"min": 0})
    records: int = field(default=0, metadata={"min": 0})
    # Results to report as if measured: metric columns, and fps (fps_min/fps_max) as a speed row.
    metrics: dict[str, float] = field(default_factory=dict,
                                      metadata={"keys": (*EVAL_KEYS, *ANALYZE_KEYS, *SPEED_KEYS)})


# --------------------------------------------------------------------------- the job's view


@dataclass
class JobContext:
    """What a stage's run function gets: the run, its config and directory, and earlier stages' results."""

    run_id: int
    attempt: int
    cfg: Config
    data: dict[str, Any] | None
    options: dict[str, dict[str, Any]]
    run_dir: Path
    on_record: Callable[[dict[str, Any]], None]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifacts: list[tuple[str, str]] = field(default_factory=list)
    # runner.timing.MeasureTarget when running as a measurement job (device, dtype, backend, job id, token)
    measure: Any = None

    def data_spec(self) -> Any:
        from fastinst.data import DataSpec

        if self.data is None:
            raise ValueError("this stage needs data; set 'data' in the grid")
        if "root" in self.data:
            return DataSpec.from_folder(self.data["root"])
        return DataSpec(**self.data)

    def options_for(self, stage: str) -> Any:
        """The stage's options dataclass, with the grid's ``stage_options[stage]`` over its defaults."""
        return STAGES[stage].parse_options(self.options.get(stage, {}))

    def weights(self, stage: str) -> str | None:
        return self.options.get(stage, {}).get("weights") or self.results.get("train", {}).get("checkpoint")


# --------------------------------------------------------------------------- run functions


def stage_train(ctx: JobContext) -> dict[str, Any]:
    from fastinst.engine.train import train

    out_dir = ctx.run_dir / "train"
    result = train(ctx.cfg, ctx.data_spec(), out_dir, on_record=ctx.on_record)
    if result.get("checkpoint"):
        ctx.artifacts.append(("checkpoint", str(result["checkpoint"])))
    if (out_dir / "metrics.jsonl").exists():
        ctx.artifacts.append(("records", str(out_dir / "metrics.jsonl")))
    return result


def stage_eval(ctx: JobContext) -> dict[str, Any]:
    """COCO metrics with their 95% image-bootstrap intervals (``AP_ci`` … in ``metrics.extra``); keeps the
    per-image matching in ``<run dir>/matching.npz`` (artifact kind ``matching``: what comparisons resample,
    ``runner.comparison``) and draws the first ``vis_images`` val images with their predictions into
    ``<run dir>/predictions`` (artifact kind ``predictions``)."""
    from fastinst.engine.evaluate import evaluate

    opts: EvalOptions = ctx.options_for("eval")
    vis_dir = ctx.run_dir / "predictions"
    matching = ctx.run_dir / "matching.npz"
    result = evaluate(ctx.cfg, ctx.weights("eval"), ctx.data_spec(), vis_dir=vis_dir, vis_images=opts.vis_images,
                      matching_path=matching, bootstrap=opts.bootstrap)
    ctx.artifacts.append((MATCHING, str(matching)))
    if opts.vis_images > 0:
        ctx.artifacts.append(("predictions", str(vis_dir)))
    return result


def stage_analyze(ctx: JobContext) -> dict[str, Any]:
    from fastinst.engine.analyze import analyze

    opts: AnalyzeOptions = ctx.options_for("analyze")
    return analyze(ctx.cfg, size=opts.size) if opts.size else analyze(ctx.cfg)


def stage_noop(ctx: JobContext) -> dict[str, Any]:
    """No work: for queue tests and overhead benchmarks (optionally sleeps, fails, emits records, and
    reports the ``metrics`` it is given; ``fps`` among them comes back as a ``speed`` entry)."""
    opts: NoopOptions = ctx.options_for("noop")
    if ctx.attempt <= opts.fail_attempts:
        raise RuntimeError(f"noop: failing attempt {ctx.attempt} as asked")
    for step in range(opts.records):
        loss = {"loss_cls": 0.5 / (step + 1), "loss_mask": 0.5 / (step + 1)}
        ctx.on_record(StepRecord.from_means(step + 1, {"time": 0.0, "data_time": 0.0, "lr": 1e-4, **loss}).to_dict())
    time.sleep(opts.sleep)
    result: dict[str, Any] = {k: v for k, v in opts.metrics.items() if k not in SPEED_KEYS}
    if "fps" in opts.metrics:
        fps = float(opts.metrics["fps"])
        result["speed"] = {"fps": fps, "fps_min": float(opts.metrics.get("fps_min", fps)),
                           "fps_max": float(opts.metrics.get("fps_max", fps)), "fps_repeats": [fps],
                           "num_images": 0, "warmup": 0, "repeats": 1, "device": "noop (nothing timed)",
                           "device_type": "cpu", "dtype": "float32", "threads": 0, "host": ""}
    return result


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Stage:
    """One stage: its run function and options type, and what it needs and produces (module docstring)."""

    name: str
    run: Callable[[JobContext], dict[str, Any]] | None  # None: exclusive, run by ``runner.measure``
    options: type
    needs_data: bool
    metrics: tuple[str, ...] = ()
    artifacts: tuple[str, ...] = ()
    speed: bool = False
    exclusive: bool = False
    runs_alone: bool = False

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options checked against the options dataclass's field types (``fastinst.config.check_value``)
        and converted where lossless; ``StageOptionError`` (naming the option) for an unknown option or a bad value."""
        fields = {f.name: f for f in dataclasses.fields(self.options)}
        hints = get_type_hints(self.options)
        checked = {}
        for key, value in options.items():
            if key not in fields:
                raise StageOptionError(str(key), f"unknown option {key!r} for stage {self.name!r} "
                                                 f"(known: {list(fields)})")
            meta = fields[key].metadata
            try:
                checked[key] = check_value(value, hints[key], f"{self.name}.{key}", meta.get("min"))
            except ConfigError as exc:
                raise StageOptionError(key, str(exc)) from None
            unknown = sorted(set(value) - set(meta["keys"])) if "keys" in meta else []
            if unknown:
                raise StageOptionError(key, f"{self.name}.{key}: unknown name {unknown[0]!r} "
                                            f"(known: {list(meta['keys'])})")
        return checked

    def parse_options(self, options: Mapping[str, Any]) -> Any:
        """The options dataclass from a mapping, checked (``check_options``) over its defaults."""
        return self.options(**self.check_options(options))


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("train", stage_train, TrainOptions, needs_data=True, artifacts=("checkpoint", "records")),
    Stage("eval", stage_eval, EvalOptions, needs_data=True, metrics=EVAL_KEYS, artifacts=(MATCHING, "predictions")),
    Stage("analyze", stage_analyze, AnalyzeOptions, needs_data=False, metrics=ANALYZE_KEYS),
    Stage("bench", None, BenchOptions, needs_data=True, speed=True, exclusive=True),
    Stage("noop", stage_noop, NoopOptions, needs_data=False, metrics=(*EVAL_KEYS, *ANALYZE_KEYS), speed=True,
          runs_alone=True),
)}


def parse_stage_grid(spec: Any, source: str = "<grid>", root: Path | None = None, text: str | None = None,
                     path: Path | None = None) -> Grid:
    """A grid mapping parsed (``fastinst.grid.parse_grid``) with its stages and stage options checked
    against the runner's stage catalog ``STAGES``."""
    return parse_grid(spec, source=source, root=root, text=text, path=path, stages=STAGES)


def load_stage_grid(path: str | Path) -> Grid:
    """A grid file read (``fastinst.grid.load_grid``) with its stages and stage options checked against
    the runner's stage catalog ``STAGES``."""
    return load_grid(path, stages=STAGES)
