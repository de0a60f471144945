"""One source of truth: the config accepts exactly the names the registries build."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import fastinst.modeling  # noqa: F401  (registers every builder)
from fastinst.config import ConfigError, all_keys, field_registry, load_config
from fastinst.registry import REGISTRIES, Registry

MASK2FORMER = Path(__file__).parents[1] / "experiments" / "configs" / "mask2former_light.yaml"


def test_each_registry_backs_exactly_its_config_key() -> None:
    backed = {key: field_registry(key) for key in all_keys() if field_registry(key) is not None}
    assert backed == {r.config_key: r for r in REGISTRIES}


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda r: r.name)
def test_declared_names_are_exactly_the_built_ones(registry: Registry) -> None:
    assert sorted(registry.choices) == registry.keys()


@pytest.mark.parametrize(("key", "name"), [(r.config_key, c) for r in REGISTRIES for c in r.choices])
def test_config_accepts_every_registered_name(key: str, name: str) -> None:
    cfg = load_config(MASK2FORMER if name == "mask2former" else None, [f"{key}={name}"])
    assert cfg.get(key) == name


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda r: r.name)
def test_config_rejects_other_names_listing_the_registry(registry: Registry) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{registry.config_key}=not_built_anywhere"])
    assert str(info.value) == (f"{registry.config_key}: invalid value 'not_built_anywhere'; "
                               f"choose one of {list(registry.choices)}")


def test_registering_an_undeclared_name_fails() -> None:
    registry = Registry("thing", "model.thing", ("a",))
    registry.register("a")(dict)
    with pytest.raises(KeyError, match="'b' is not declared.*model.thing"):
        registry.register("b")
    with pytest.raises(KeyError, match="already registered"):
        registry.register("a")(dict)


def test_config_import_does_not_import_torch() -> None:
    code = "import sys, fastinst.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_backend_names_are_the_built_backends() -> None:
    """Grids and command lines check backend names against fastinst.registry without importing torch; the
    builders in fastinst.deploy.backends are exactly those names."""
    from fastinst.deploy.backends import BACKENDS
    from fastinst.registry import BACKEND_NAMES

    assert tuple(BACKENDS) == BACKEND_NAMES
