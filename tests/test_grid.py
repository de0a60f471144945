"""fastinst.grid: YAML grid → validated rows, with errors that name file, line and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fastinst.config import config_from_dict
from fastinst.grid import GridError, SpeedSetting, load_grid, reference_speed, variant_hash
from runner.stages import STAGES


def write(tmp_path: Path, text: str, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_product_of_axes_and_zip(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("model:\n  backbone:\n    name: resnet18\n")
    path = write(tmp_path, """
        name: layers
        base: base.yaml
        axes:
          model.decoder.num_layers: [1, 3]
        zip:
          - model.num_ia_queries: [50, 100]
            model.num_aux_queries: [4, 8]
        seeds: 2
        stages: [analyze]
        resources: {gpus: 0}
    """)
    grid = load_grid(path)
    assert grid.name == "layers"
    assert grid.axes == ["model.decoder.num_layers", "model.num_ia_queries", "model.num_aux_queries"]
    assert [r.name for r in grid.rows] == [
        "model.decoder.num_layers=1,model.num_ia_queries=50,model.num_aux_queries=4",
        "model.decoder.num_layers=1,model.num_ia_queries=100,model.num_aux_queries=8",
        "model.decoder.num_layers=3,model.num_ia_queries=50,model.num_aux_queries=4",
        "model.decoder.num_layers=3,model.num_ia_queries=100,model.num_aux_queries=8",
    ]
    row = grid.rows[1]
    assert row.config.model.backbone.name == "resnet18"  # from the base file
    assert row.config.model.num_ia_queries == 100 and row.config.model.num_aux_queries == 8
    assert row.seeds == [0, 1] and row.stages == ["analyze"] and row.resources == {"gpus": 0}
    assert len({r.hash for r in grid.rows}) == 4
    # The row hash ignores the seed; the per-seed config carries it.
    assert row.config_for_seed(1).seed == 1
    assert variant_hash(row.config_for_seed(1)) == row.hash
    assert row.config_for_seed(0).hash() != row.config_for_seed(1).hash()
    expected = config_from_dict({"model.backbone.name": "resnet18", "model.decoder.num_layers": 1,
                                 "model.num_ia_queries": 100, "model.num_aux_queries": 8})
    assert row.config.to_dict() == expected.to_dict()


def test_explicit_rows_inline_base_and_reference(tmp_path: Path) -> None:
    path = write(tmp_path, """
        base:
          model:
            backbone: {name: resnet18}
          solver.max_iter: 10
        rows:
          - name: mask2former_light
            overrides: {model.query_init: learnable, model.decoder.update: single_query}
          - overrides:
              model: {pixel_decoder: {name: fpn}}
        axes:
          model.decoder.pos_embed: [learnable, sinusoidal]
        seeds: [3, 7]
        stages: [noop]
        stage_options: {noop: {sleep: 0.1}}
        reference: mask2former_light,model.decoder.pos_embed=learnable
    """, name="table1.yaml")
    grid = load_grid(path)
    assert grid.name == "table1"
    names = [r.name for r in grid.rows]
    assert names == [
        "mask2former_light,model.decoder.pos_embed=learnable",
        "mask2former_light,model.decoder.pos_embed=sinusoidal",
        "model.pixel_decoder.name=fpn,model.decoder.pos_embed=learnable",
        "model.pixel_decoder.name=fpn,model.decoder.pos_embed=sinusoidal",
    ]
    assert grid.rows[0].config.model.query_init == "learnable"
    assert grid.rows[3].config.model.pixel_decoder.name == "fpn"
    assert all(r.config.solver.max_iter == 10 for r in grid.rows)
    assert grid.seeds == [3, 7] and grid.stage_options == {"noop": {"sleep": 0.1}}
    assert grid.reference == names[0]


@pytest.mark.parametrize(("text", "expected"), [
    ("stages: [noop]\naxes:\n  model.decoder.num_layer: [1, 2]\n",
     "g.yaml:3: axes: unknown config key 'model.decoder.num_layer'; did you mean 'model.decoder.num_layers'?"),
    ("stages: [noop]\naxes:\n  model.query_init:\n    - ia_guided\n    - learnabel\n",
     "g.yaml:5: axes: model.query_init: invalid value 'learnabel'"),
    ("stages: [noop]\naxes:\n  model.decoder.num_layers: 3\n",
     "g.yaml:3: axes: model.decoder.num_layers: expected a non-empty list of values, got 3"),
    ("stages: [noop]\nzip:\n  - model.num_ia_queries: [10, 20]\n    model.num_aux_queries: [1]\n",
     "g.yaml:3: zip: zipped lists must have equal lengths, got [1, 2]"),
    ("stages: [noop, tran]\n", "g.yaml:1: stages: unknown stage 'tran' (choose from ['train', 'eval', 'analyze', "
     "'bench', 'noop']); did you mean 'train'?"),
    ("stages: [noop, analyze]\n", "g.yaml:1: stages: the noop stage runs alone"),
    ("stages: [train]\n", "g.yaml:1: stages: stages ['train'] need 'data'"),
    ("stages: [noop]\nseeds: 0\n", "g.yaml:2: seeds: a seed count must be >= 1"),
    ("stages: [noop]\naxis:\n  model.decoder.num_layers: [1]\n",
     "g.yaml:2: axis: unknown grid field 'axis'; did you mean 'axes'?"),
    ("stages: [noop]\nresources:\n  gpus: -1\n", "g.yaml:3: resources: gpus: expected an integer >= 0"),
    ("stages: [noop]\nrows:\n  - name: a\n    overrides:\n      model.query_source: E9\n",
     "g.yaml:5: rows: model.query_source: invalid value 'E9'"),
    # A cross-field contradiction is reported for the row that has it.
    ("stages: [noop]\nrows:\n  - name: bad\n    overrides: {model.query_init: zero, model.query_source: E3}\n",
     "g.yaml:3: rows: row 'bad': model.query_source=E3 only applies to model.query_init=ia_guided"),
    ("stages: [noop]\naxes:\n  model.decoder.num_layers: [1]\nreference: base\n",
     "g.yaml:4: reference: no row named 'base'"),
    ("stages: [noop]\nbase: missing.yaml\n", "g.yaml:2: base: config file not found"),
    ("stages: [noop]\nstage_options: {bench: {images: 3}}\n",
     "g.yaml:2: stage_options: options for 'bench', which is not in stages ['noop']"),
    ("stages: [noop]\ndata: nowhere\n", "g.yaml:2: data: root: "),
    ("stages: [eval]\nstage_options:\n  eval: {vis_images: -1}\n",
     "g.yaml:3: stage_options: eval.vis_images: expected an integer >= 0, got -1"),
    ("stages: [bench]\nstage_options:\n  bench: {images: many}\n",
     "g.yaml:3: stage_options: bench.images: expected an integer >= 1, got 'many'"),
    ("stages: [noop]\naxes:\n  seed: [1, 2]\n", "g.yaml:3: axes: set seeds with the grid's 'seeds'"),
    ("stages: [noop]\nstage_options:\n  noop:\n    sleeep: 1\n",
     "g.yaml:4: stage_options: unknown option 'sleeep' for stage 'noop' (known: ['sleep', 'fail_attempts', "
     "'records', 'metrics'])"),
    ("stages: [noop]\nspeed: {device: tpu}\n", "g.yaml:2: speed: device: expected one of ['cpu', 'cuda'], got 'tpu'"),
    ("stages: [noop]\nspeed:\n  dtype: int8\n",
     "g.yaml:3: speed: dtype: expected one of ['float32', 'float16', 'bfloat16'], got 'int8'"),
    ("stages: [noop]\nspeed:\n  devices: cpu\n", "g.yaml:3: speed: unknown key 'devices'"),
    ("stages: [noop]\naxes:\n  model.decoder.num_layers: [1, 3]\nbaseline: model.decoder.num_layers=2\n",
     "g.yaml:4: baseline: no row named 'model.decoder.num_layers=2'; did you mean"),
    ("stages: [noop]\naxes:\n  model.decoder.num_layers: [1, 3]\nbaseline: model.decoder.num_layers=1\n"
     "reference: model.decoder.num_layers=3\n", "g.yaml:4: baseline: baseline 'model.decoder.num_layers=1' and "
     "reference 'model.decoder.num_layers=3' differ"),
    ("stages: [eval]\ndata: .\nseeds: 2\nseed_policy: {min: 2, max: 4}\n",
     "g.yaml:4: seed_policy: a seed policy needs a baseline row"),
    ("stages: [noop]\nseeds: 2\nbaseline: base\nseed_policy: {max: 4}\n",
     "g.yaml:4: seed_policy: a seed policy needs the eval stage"),
    ("stages: [eval]\ndata: .\nseeds: 2\nbaseline: base\nseed_policy: {min: 3, max: 4}\n",
     "g.yaml:5: seed_policy: min: 3 but the grid has 2 seed(s) [0, 1]"),
    ("stages: [eval]\ndata: .\nseeds: 3\nbaseline: base\nseed_policy:\n  max: 2\n",
     "g.yaml:6: seed_policy: max: 2 is below min: 3"),
    ("stages: [eval]\ndata: .\nseeds: 2\nbaseline: base\nseed_policy:\n  max: 4\n  metric: AR100\n",
     "g.yaml:7: seed_policy: metric: expected one of ['AP', 'AP50', 'AP75', 'AP_S', 'AP_M', 'AP_L'], got 'AR100'"),
    ("stages: [eval]\ndata: .\nseeds: 2\nbaseline: base\nseed_policy:\n  maximum: 4\n",
     "g.yaml:6: seed_policy: unknown key 'maximum'"),
])
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "name: g\n" + text)
    with pytest.raises(GridError) as info:
        load_grid(path, stages=STAGES)
    message = str(info.value)
    # Lines are counted in the written file, whose first line is "name: g".
    file_part, rest = expected.split(":", 1)
    line, rest = rest.split(":", 1)
    assert message.startswith(f"{path}:{int(line) + 1}:"), message
    assert rest.strip() in message, message
    assert file_part == "g.yaml"


def test_base_file_errors_name_the_base_file(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("model:\n  hidden_dm: 256\n")
    path = write(tmp_path, "name: g\nbase: base.yaml\nstages: [noop]\n")
    with pytest.raises(GridError, match=r"g.yaml:2: base: .*base.yaml: unknown config key 'model.hidden_dm'"):
        load_grid(path)


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(GridError, match="a grid must be a mapping"):
        load_grid(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(write(tmp_path, "axes: [1, 2\n"))
    with pytest.raises(GridError, match="grid file not found"):
        load_grid(tmp_path / "nope.yaml")


def test_data_paths_resolve_relative_to_the_grid(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "val.json").write_text("{}")
    grid = load_grid(write(tmp_path, "stages: [eval]\ndata: {val_json: d/val.json, val_images: d}\n"), STAGES)
    assert grid.data == {"val_json": str(tmp_path / "d" / "val.json"), "val_images": str(tmp_path / "d")}
    grid = load_grid(write(tmp_path, "stages: [eval, train]\ndata: d\n"), STAGES)
    assert grid.data == {"root": str(tmp_path / "d")} and grid.stages == ["train", "eval"]  # the registry's order


def test_without_a_stage_catalog_only_the_structure_is_checked(tmp_path: Path) -> None:
    """What ``fastinst analyze-grid`` reads: stage names and options are not the library's business."""
    path = write(tmp_path, "stages: [analyze, custom]\nstage_options: {custom: {anything: 1}}\n")
    grid = load_grid(path)
    assert grid.stages == ["analyze", "custom"] and grid.stage_options == {"custom": {"anything": 1}}
    with pytest.raises(GridError, match="unknown stage 'custom'"):
        load_grid(path, stages=STAGES)
    with pytest.raises(GridError, match=r"g.yaml:1: stages: unknown stage 3"):
        load_grid(write(tmp_path, "stages: [analyze, 3]\n"))


def test_baseline_and_seed_policy(tmp_path: Path) -> None:
    from fastinst.grid import SeedPolicy, stored_seed_policy

    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text("{}")
    (tmp_path / "annotations" / "instances_train.json").write_text("{}")
    path = write(tmp_path, """
        axes:
          model.decoder.num_layers: [1, 3]
        seeds: 2
        stages: [eval]
        data: .
        baseline: model.decoder.num_layers=3
        seed_policy: {max: 5, metric: AP50, level: 0.9}
    """)
    grid = load_grid(path, stages=STAGES)
    assert grid.reference == "model.decoder.num_layers=3"
    assert grid.seed_policy == SeedPolicy(min=2, max=5, metric="AP50", level=0.9)
    assert stored_seed_policy(grid.spec, grid.seeds, grid.reference, grid.stages) == grid.seed_policy
    old = write(tmp_path, "stages: [noop]\naxes:\n  model.decoder.num_layers: [1, 3]\n"
                          "reference: model.decoder.num_layers=1\n", name="old.yaml")
    assert load_grid(old).reference == "model.decoder.num_layers=1"  # the older name still works
    assert load_grid(old).seed_policy is None


def test_speed_setting_defaults_by_resources(tmp_path: Path) -> None:
    cpu = load_grid(write(tmp_path, "stages: [noop]\nresources: {gpus: 0}\n"), STAGES)
    gpu = load_grid(write(tmp_path, "stages: [noop]\n"), STAGES)  # resources default: one GPU per run
    chosen = load_grid(write(tmp_path, "stages: [noop]\nspeed: {dtype: float16, backend: onnxruntime}\n"), STAGES)
    assert cpu.speed == SpeedSetting("cpu", "float32", "eager")
    assert gpu.speed == SpeedSetting("cuda", "float32", "eager")
    assert chosen.speed == SpeedSetting("cuda", "float16", "onnxruntime") and str(chosen.speed) == "cuda/float16/onnxruntime"
    assert reference_speed(chosen.spec) == chosen.speed and reference_speed({"resources": {"gpus": 0}}) == cpu.speed
    with pytest.raises(GridError, match=r"backend: expected one of \['eager', 'compile', 'cudagraph', 'onnxruntime', "
                                        r"'openvino'\], got 'eagr'"):
        load_grid(write(tmp_path, "stages: [noop]\nspeed: {backend: eagr}\n"), STAGES)
