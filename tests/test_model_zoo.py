"""The model zoo (one config per official release, names usable as configs) and the built-in COCO classes.

Official figures: the spec's section 9 (README targets, params) and section 6 (test sizes);
docs/official_architecture.md#params-flops-fps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastinst import ConfigError, Predictor, build_model, cli, load_config, model_zoo
from fastinst.config import read_yaml
from fastinst.data.coco_classes import COCO_CLASSES, coco_categories
from fastinst.engine.analyze import count_parameters

# name: backbone, decoder layers, test size, params (M, official README), AP, FPS (V100, official README)
OFFICIAL = {
    "fastinst_R50_ppm-fpn_x1_576": ("resnet50", 1, (576, 777), 30, 34.9, 53.8),
    "fastinst_R50_ppm-fpn_x3_640": ("resnet50", 3, (640, 853), 34, 37.9, 35.5),
    "fastinst_R101_ppm-fpn_x3_640": ("resnet101", 3, (640, 853), 53, 38.9, 28.0),
    "fastinst_R50-vd-dcn_ppm-fpn_x1_576": ("resnet50d_dcn", 1, (576, 777), 30, 37.4, 47.8),
    "fastinst_R50-vd-dcn_ppm-fpn_x3_640": ("resnet50d_dcn", 3, (640, 853), 35, 40.1, 32.5),
}
# The spec's own counts of the official code (section 9), in millions, where it states them.
SPEC_PARAMS_M = {"fastinst_R50_ppm-fpn_x1_576": 29.66, "fastinst_R50_ppm-fpn_x3_640": 34.18,
                 "fastinst_R101_ppm-fpn_x3_640": 53.12, "fastinst_R50-vd-dcn_ppm-fpn_x3_640": 34.69}
BACKBONE_LABEL = {"resnet50": "R50", "resnet101": "R101", "resnet50d_dcn": "R50-d-DCN"}
SETTINGS = {"model.backbone.name", "model.decoder.num_layers", "input.min_size_test", "input.max_size_test"}
CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "cpu_tiny.yaml"
TINY_80 = ["model.num_classes=80", "model.backbone.name=resnet18", "model.hidden_dim=64",
           "model.decoder.dim_feedforward=128", "model.decoder.num_layers=1", "model.num_ia_queries=10",
           "model.num_aux_queries=2", "model.test.detections_per_image=10", "input.min_size_test=64",
           "input.max_size_test=96"]


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


# The download links of the official README (junjiehe96/FastInst, GitHub release v0.1.0).
RELEASE_FILES = {name: f"https://github.com/junjiehe96/FastInst/releases/download/v0.1.0/{file}" for name, file in (
    ("fastinst_R50_ppm-fpn_x1_576", "fastinst_R50_ppm-fpn_x1_576_34.9.pth"),
    ("fastinst_R50_ppm-fpn_x3_640", "fastinst_R50_ppm-fpn_x3_640_37.9.pth"),
    ("fastinst_R101_ppm-fpn_x3_640", "fastinst_R101_ppm-fpn_x3_640_38.9.pth"),
    ("fastinst_R50-vd-dcn_ppm-fpn_x1_576", "fastinst_R50-vd-dcn_ppm-fpn_x1_576_37.4.pth"),
    ("fastinst_R50-vd-dcn_ppm-fpn_x3_640", "fastinst_R50-vd-dcn_ppm-fpn_x3_640_40.1.pth"),
)}


def test_the_table_lists_each_official_release_once_with_its_figures() -> None:
    assert model_zoo.names() == list(OFFICIAL)
    for release in model_zoo.RELEASES:
        backbone, layers, size, params_m, ap, fps = OFFICIAL[release.name]
        assert (release.backbone, release.decoder_layers, release.test_size) == (BACKBONE_LABEL[backbone], layers, size)
        assert (release.params_m, release.ap, release.fps) == (params_m, ap, fps)
        assert release.weights_url == RELEASE_FILES[release.name]
    assert sorted(p.stem for p in model_zoo.CONFIG_DIR.glob("*.yaml")) == sorted(OFFICIAL)


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_config_states_the_official_settings_and_nothing_else(name: str) -> None:
    backbone, layers, (min_size, max_size), *_ = OFFICIAL[name]
    cfg = load_config(name)
    assert (cfg.model.backbone.name, cfg.model.decoder.num_layers) == (backbone, layers)
    assert (cfg.input.min_size_test, cfg.input.max_size_test) == (min_size, max_size)
    assert set(_flat(read_yaml(model_zoo.get_config_file(name)))) == SETTINGS
    ours, defaults = _flat(cfg.to_dict()), _flat(load_config(None).to_dict())
    assert {k for k in ours if ours[k] != defaults[k]} <= SETTINGS


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_config_builds_with_the_official_parameter_count(name: str) -> None:
    params = count_parameters(build_model(load_config(name)))
    assert round(params / 1e6) == OFFICIAL[name][3]
    if name in SPEC_PARAMS_M:
        assert params / 1e6 == pytest.approx(SPEC_PARAMS_M[name], abs=0.005)


def test_names_resolve_and_an_existing_file_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "fastinst_R50_ppm-fpn_x1_576"
    assert load_config(f"{name}.yaml") == load_config(name) == load_config(model_zoo.get_config_file(name))
    monkeypatch.chdir(tmp_path)
    Path(name).write_text("model:\n  decoder:\n    num_layers: 2\n")
    assert load_config(name).model.decoder.num_layers == 2
    with pytest.raises(ConfigError, match=r"^unknown config 'nope': not a file and not a model-zoo name "
                                          r"\(known: fastinst_R50_ppm-fpn_x1_576, "):
        load_config("nope")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope")


def test_cli_takes_a_name_and_rejects_an_unknown_one_in_one_line(capsys: pytest.CaptureFixture) -> None:
    name, overrides = "fastinst_R50_ppm-fpn_x1_576", TINY_80[1:6]
    code = cli.main(["analyze", name, *(a for o in overrides for a in ("--set", o)), "--size", "64x64", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["config_hash"] == load_config(name, overrides).hash()
    done = subprocess.run([sys.executable, "-m", "fastinst.cli", "analyze", "nope"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"fastinst: config error: unknown config 'nope': not a file and not a "
                                        f"model-zoo name (known: {', '.join(OFFICIAL)})"]
    assert cli.main(["model-zoo"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in OFFICIAL) and "40.1" in listing and "53M" in listing


def test_coco_classes_have_the_original_ids_and_names() -> None:
    ids = [cid for cid, _ in COCO_CLASSES]
    assert len(COCO_CLASSES) == 80 and ids == sorted(ids) and len({n for _, n in COCO_CLASSES}) == 80
    assert set(range(1, 91)) - set(ids) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    assert [COCO_CLASSES[k] for k in (0, 14, 15, 79)] == [(1, "person"), (16, "bird"), (17, "cat"), (90, "toothbrush")]
    assert coco_categories()[14] == {"id": 16, "name": "bird"}


def test_predictor_names_coco_classes_unless_the_checkpoint_has_its_own(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = build_model(load_config(CONFIG, TINY_80)).state_dict()
    bare, own = tmp_path / "bare.pth", tmp_path / "own.pth"
    torch.save(state, bare)
    categories = [{"id": 100 + k, "name": f"thing {k}"} for k in range(80)]
    torch.save({"model": state, "categories": categories}, own)
    coco = Predictor(CONFIG, bare, device="cpu", overrides=TINY_80)
    assert coco.categories == coco_categories() and coco.class_names[14] == "bird"
    pred = coco(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8))
    assert pred.category_ids == [COCO_CLASSES[k][0] for k in pred.labels.tolist()]
    assert pred.names == [COCO_CLASSES[k][1] for k in pred.labels.tolist()]
    assert Predictor(CONFIG, own, device="cpu", overrides=TINY_80).categories == categories


def test_eval_of_a_model_zoo_config_on_a_coco_layout_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``fastinst eval NAME --weights W --data DIR`` on a COCO-layout folder with COCO's 80 categories (a
    synthetic set relabelled), with the AP's image-bootstrap interval."""
    from fastinst.data.synthetic import make_synthetic

    make_synthetic(tmp_path / "coco", num_train=0, num_val=2, size=96, seed=1, workers=1)
    ann_path = tmp_path / "coco" / "annotations" / "instances_val.json"
    ann = json.loads(ann_path.read_text())
    to_coco = {c["id"]: cid for c, (cid, _name) in zip(ann["categories"], COCO_CLASSES)}
    ann["categories"] = coco_categories()
    for a in ann["annotations"]:
        a["category_id"] = to_coco[a["category_id"]]
    ann_path.write_text(json.dumps(ann))
    name = "fastinst_R50_ppm-fpn_x1_576"
    torch.manual_seed(0)
    weights = tmp_path / "random.pth"
    torch.save(build_model(load_config(name)).state_dict(), weights)
    assert cli.main(["eval", name, "--weights", str(weights), "--data", str(tmp_path / "coco"), "--device", "cpu",
                     "--bootstrap", "20", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["num_images"] == 2 and 0 <= metrics["AP"] <= 1 and len(metrics["AP_ci"]) == 2
