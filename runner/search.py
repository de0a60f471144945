"""``runner search SPEC.yaml --trials N``: an Optuna multi-objective study over config keys.

A search spec is a grid file (base, stages, data, seeds, resources, … but no axes) plus::

    search:
      objectives: [AP, FPS]                 # AP maximised; FPS maximised or GFLOPs/params minimised
      sampler: tpe                          # tpe (default), nsga2 or random
      space:
        model.num_ia_queries: {low: 10, high: 300, step: 10}   # integers → suggest_int
        solver.base_lr: {low: 1.0e-5, high: 1.0e-3, log: true} # floats → suggest_float
        model.decoder.num_layers: [1, 2, 3, 6]                 # a list → suggest_categorical

Each trial becomes a row ``trial-<number>`` of the grid named after the spec, queued in the same
queue and database (workers run it like any other run); its objective values are the means over
the spec's seeds; FPS is each run's newest speed row in the spec's ``speed`` setting, so a trial
whose runs have a bench stage is done only once their measurement jobs are. The Optuna study
lives in the same database URL (``optuna-dashboard URL``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import optuna
from sqlalchemy import func, select

from fastinst.config import ConfigError, all_keys, config_from_dict, flatten
from fastinst.grid import Grid, GridError, Row, SpeedSetting, line_of, read_grid_yaml, variant_hash
from runner import queue
from runner.db import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Database, MeasureJob, Metrics, Run
from runner.results import newest_speed
from runner.stages import parse_stage_grid

log = logging.getLogger("runner.search")

# objective → (metrics column, or "fps": the speed table; direction)
OBJECTIVES: dict[str, tuple[str, Literal["minimize", "maximize"]]] = {
    "AP": ("AP", "maximize"), "AP50": ("AP50", "maximize"), "FPS": ("fps", "maximize"),
    "GFLOPs": ("gflops", "minimize"), "params": ("params", "minimize")}
SAMPLERS = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
            "random": optuna.samplers.RandomSampler}


@dataclass
class SearchSpec:
    grid: Grid
    objectives: list[str]
    space: dict[str, Any]
    sampler: str = "tpe"

    @property
    def name(self) -> str:
        return self.grid.name


def load_search(path: str | Path) -> SearchSpec:
    """Read and validate a search spec; errors name the file, line and key."""
    path = Path(path)
    spec, text = read_grid_yaml(path, "search spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("search"), dict):
        raise GridError(f"{path}:1: search: a search spec needs a 'search' mapping")
    search = spec.pop("search")

    def error(where: tuple[Any, ...], message: str) -> GridError:
        return GridError(f"{path}:{line_of(text, 'search', *where)}: search: {message}")

    if "axes" in spec or "zip" in spec or "rows" in spec:
        raise GridError(f"{path}:{line_of(text, 'axes')}: a search spec has a search space instead of axes/zip/rows")
    grid = parse_stage_grid(spec, source=str(path), root=path.parent, text=text, path=path)
    for key in search:
        if key not in ("objectives", "space", "sampler"):
            raise error((key,), f"unknown field {key!r} (known: objectives, space, sampler)")
    objectives = search.get("objectives", ["AP", "FPS"])
    if not isinstance(objectives, list) or not objectives or any(o not in OBJECTIVES for o in objectives):
        raise error(("objectives",), f"objectives must be a list of {list(OBJECTIVES)}, got {objectives!r}")
    sampler = search.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise error(("sampler",), f"unknown sampler {sampler!r} (choose from {list(SAMPLERS)})")
    space = search.get("space")
    if not isinstance(space, dict) or not space:
        raise error(("space",), "space must map config keys to a list of choices or {low, high, step?, log?}")
    known = set(all_keys())
    base = _flat_base(grid)
    for key, dist in space.items():
        if key not in known or key == "seed":
            raise error(("space", key), f"unknown config key {key!r}")
        if isinstance(dist, dict):
            if not {"low", "high"} <= set(dist) or set(dist) - {"low", "high", "step", "log"}:
                raise error(("space", key), f"{key}: expected {{low, high, step?, log?}}, got {dist!r}")
            values = [dist["low"], dist["high"]]
        elif isinstance(dist, list) and dist:
            values = dist
        else:
            raise error(("space", key), f"{key}: expected a list of choices or {{low, high}}, got {dist!r}")
        for value in values:
            try:
                config_from_dict({**base, key: value})
            except ConfigError as exc:
                if str(exc).startswith(f"{key}:"):
                    raise error(("space", key), str(exc)) from None
    return SearchSpec(grid, objectives, space, sampler)


def _flat_base(grid: Grid) -> dict[str, Any]:
    """The base config of a spec as dotted keys (the one row's config, minus the seed)."""
    flat = flatten(grid.rows[0].config.to_dict())
    flat.pop("seed", None)
    return flat


def suggest(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, dist in space.items():
        if isinstance(dist, list):
            params[key] = trial.suggest_categorical(key, dist)
        elif all(isinstance(dist[k], int) and not isinstance(dist[k], bool) for k in ("low", "high")) \
                and not isinstance(dist.get("step", 1), float):
            params[key] = trial.suggest_int(key, dist["low"], dist["high"], step=dist.get("step", 1),
                                            log=dist.get("log", False))
        else:
            params[key] = trial.suggest_float(key, float(dist["low"]), float(dist["high"]), step=dist.get("step"),
                                              log=dist.get("log", False))
    return params


def trial_grid(spec: SearchSpec, number: int, params: dict[str, Any]) -> Grid:
    """The spec's grid reduced to one row: the trial's parameters over the base config."""
    cfg = config_from_dict({**_flat_base(spec.grid), **params})
    row = Row(f"trial-{number}", dict(params), cfg, variant_hash(cfg), spec.grid.seeds, spec.grid.stages,
              spec.grid.resources)
    return replace(spec.grid, axes=list(spec.space), rows=[row])


def _trial_values(db: Database, run_ids: list[int], objectives: list[str],
                  setting: SpeedSetting) -> tuple[str, list[float] | str]:
    """("running", []) while any run or its measurement is unfinished; ("done", values) or ("failed", reason)."""

    def _query(s: Any) -> tuple[list[tuple[Run, Metrics | None]], int, dict[int, Any]]:
        rows = [(run, m) for run, m in s.execute(select(Run, Metrics).outerjoin(Metrics, Metrics.run_id == Run.id)
                                                 .where(Run.id.in_(run_ids)))]
        measuring = s.scalar(select(func.count()).select_from(MeasureJob).where(
            MeasureJob.run_id.in_(run_ids), MeasureJob.status.in_((QUEUED, RUNNING))))
        return rows, measuring, newest_speed(s, run_ids, setting)

    rows, measuring, speed = db.read(_query)
    if any(run.status in (FAILED, CANCELLED) for run, _m in rows):
        bad = next(run for run, _m in rows if run.status in (FAILED, CANCELLED))
        lines = (bad.error or "").strip().splitlines()
        return "failed", f"run {bad.id} {bad.status}: {lines[-1] if lines else 'no error text'}"
    if measuring or not all(run.status == SUCCEEDED for run, _m in rows):
        return "running", []
    values = []
    for objective in objectives:
        column = OBJECTIVES[objective][0]
        found = [speed[run.id].fps if run.id in speed else None for run, _m in rows] if column == "fps" else \
            [getattr(m, column) if m is not None else None for _run, m in rows]
        per_seed = [v for v in found if v is not None]
        if len(per_seed) != len(rows):
            return "failed", f"objective {objective} ({column}) was not measured; check the spec's stages"
        values.append(sum(per_seed) / len(per_seed))
    return "done", values


def run_search(db: Database, spec: SearchSpec, *, trials: int, parallel: int = 1, poll: float = 5.0) -> optuna.Study:
    """Ask ``trials`` trials (``parallel`` in flight), queue each as runs, tell results as runs finish."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=spec.name, storage=optuna.storages.RDBStorage(db.url_string), load_if_exists=True,
        directions=[OBJECTIVES[o][1] for o in spec.objectives], sampler=SAMPLERS[spec.sampler](),
    )
    in_flight: dict[int, tuple[optuna.Trial, list[int]]] = {}
    asked = 0
    while asked < trials or in_flight:
        while asked < trials and len(in_flight) < parallel:
            trial = study.ask()
            asked += 1
            params = suggest(trial, spec.space)
            try:
                grid = trial_grid(spec, trial.number, params)
            except ConfigError as exc:
                trial.set_user_attr("error", str(exc))
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                log.info("trial %d: invalid config (%s)", trial.number, exc)
                continue
            result = queue.submit(db, grid, keep_rows=True)
            run_ids = result.queued + result.requeued + result.done + result.active
            trial.set_user_attr("run_ids", run_ids)
            trial.set_user_attr("row", grid.rows[0].name)
            in_flight[trial.number] = (trial, run_ids)
            log.info("trial %d: %s → runs %s", trial.number, params, run_ids)
        for number, (trial, run_ids) in list(in_flight.items()):
            state, values = _trial_values(db, run_ids, spec.objectives, spec.grid.speed)
            if state == "running":
                continue
            del in_flight[number]
            if state == "done":
                assert isinstance(values, list)  # "done" comes with the objectives' values
                study.tell(trial, values)
                log.info("trial %d: %s", number, dict(zip(spec.objectives, values)))
            else:
                trial.set_user_attr("error", values)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                log.info("trial %d failed: %s", number, values)
        if in_flight:
            time.sleep(poll)
    return study
