"""Config tree: defaults, YAML round trip, overrides, validation messages, canonical hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastinst.config import ConfigError, all_keys, config_from_dict, load_config


def test_defaults_are_fastinst_d3_r50() -> None:
    cfg = load_config(None, [])
    assert cfg.model.backbone.name == "resnet50"
    assert cfg.model.pixel_decoder.name == "ppm_fpn"
    assert (cfg.model.decoder.num_layers, cfg.model.num_ia_queries, cfg.model.num_aux_queries) == (3, 100, 8)
    assert cfg.model.query_init == "ia_guided" and cfg.model.query_source == "E4"
    assert cfg.model.decoder.gt_mask_guidance and cfg.model.decoder.pos_embed == "learnable"
    assert (cfg.loss.class_weight, cfg.loss.mask_weight, cfg.loss.dice_weight, cfg.loss.ia_weight) == (2, 5, 5, 20)
    assert cfg.input.max_size_test == 853 and cfg.solver.clip_grad_norm == 0


def test_design_contract_keys_exist() -> None:
    keys = set(all_keys())
    for key in ("model.query_init", "model.decoder.update", "model.decoder.gt_mask_guidance",
                "model.pixel_decoder.name", "model.decoder.num_layers", "model.num_ia_queries",
                "model.num_aux_queries", "model.query_source", "loss.ia.assignment", "loss.ia.location_cost",
                "model.decoder.pos_embed", "model.backbone.name"):
        assert key in keys


def test_yaml_round_trip_and_hash(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.decoder.num_layers=1", "solver.steps=[0.5, 0.75]"])
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path, [])
    assert again == cfg
    assert again.hash() == cfg.hash()
    assert load_config(None, []).hash() != cfg.hash()


def test_hash_is_stable_across_key_order() -> None:
    a = config_from_dict({"model": {"decoder": {"num_layers": 1}, "num_ia_queries": 50}})
    b = config_from_dict({"model.num_ia_queries": 50, "model.decoder.num_layers": 1})
    assert a.hash() == b.hash()
    assert len(a.hash()) == 16


def test_base_inheritance(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("model:\n  num_classes: 4\n  decoder:\n    num_layers: 1\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nmodel:\n  decoder:\n    num_layers: 2\n")
    cfg = load_config(tmp_path / "child.yaml", [])
    assert (cfg.model.num_classes, cfg.model.decoder.num_layers) == (4, 2)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.decoder.num_layer=1", "did you mean 'model.decoder.num_layers'"),
        ("model.query_init=ia-guided", "did you mean 'ia_guided'"),
        ("model.decoder.num_layers=two", "model.decoder.num_layers: expected an integer"),
        ("model.decoder.gt_mask_guidance=1", "expected true/false"),
        ("model.pixel_decoder.name=unet", "model.pixel_decoder.name: invalid value 'unet'"),
        ("model.num_ia_queries", "not of the form KEY=VALUE"),
    ],
)
def test_errors_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, [override])


def test_contradictions_rejected() -> None:
    with pytest.raises(ConfigError, match="query_source"):
        load_config(None, ["model.query_init=learnable", "model.query_source=E3"])
    with pytest.raises(ConfigError, match="location_cost"):
        load_config(None, ["loss.ia.assignment=semantic"])
    assert load_config(None, ["loss.ia.assignment=semantic", "loss.ia.location_cost=false"])


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  decoder:\n    layers: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'model\.decoder\.layers'"):
        load_config(bad, [])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml", [])
