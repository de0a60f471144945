"""The fastinst metadata of an exported ONNX graph: its config and dataset categories.

An export carries ``metadata_props`` ``fastinst_config`` (the resolved config as YAML) and
``fastinst_categories`` (a JSON list of ``{"id", "name"}`` in class-index order). A file without
them, or whose model config differs from the one given, is another model: :class:`OnnxModelError`
names the file in one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fastinst.config import Config, ConfigError, config_from_dict, flatten

CONFIG_KEY = "fastinst_config"
CATEGORIES_KEY = "fastinst_categories"


class OnnxModelError(ValueError):
    """An ONNX file that is not a usable fastinst export; the message names the file."""


@dataclass
class OnnxMetadata:
    config: Config
    categories: list[dict[str, Any]] | None


def _metadata_props(path: Path) -> dict[str, str]:
    """The file's ``metadata_props`` (with ``onnx`` when installed, else through ONNX Runtime)."""
    try:
        try:
            import onnx
        except ImportError:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            return dict(session.get_modelmeta().custom_metadata_map)
        model = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in model.metadata_props}
    except ImportError:
        raise OnnxModelError(f"{path}: reading ONNX files needs onnx or onnxruntime (pip install onnxruntime)") from None
    except Exception as exc:  # noqa: BLE001 - onnx and onnxruntime raise their own (unexported) error types
        raise OnnxModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None


def read_onnx_metadata(path: str | Path) -> OnnxMetadata:
    """Config and categories stored in the exported ONNX file ``path``."""
    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(f"{path}: ONNX file not found")
    props = _metadata_props(path)
    if CONFIG_KEY not in props:
        raise OnnxModelError(f"{path}: not a fastinst export (no {CONFIG_KEY!r} metadata); "
                             "export one with fastinst's exporter")
    try:
        config = config_from_dict(yaml.safe_load(props[CONFIG_KEY]) or {})
    except (yaml.YAMLError, ConfigError) as exc:
        raise OnnxModelError(f"{path}: its {CONFIG_KEY!r} metadata is not a valid config ({exc})") from None
    categories = None
    if CATEGORIES_KEY in props:
        try:
            categories = json.loads(props[CATEGORIES_KEY])
        except json.JSONDecodeError as exc:
            raise OnnxModelError(f"{path}: its {CATEGORIES_KEY!r} metadata is not JSON ({exc})") from None
    return OnnxMetadata(config, categories)


def check_onnx_matches(path: str | Path, exported: Config, cfg: Config) -> None:
    """Raise when the model part (``model.*``) of the config ``exported`` with ``path`` differs from ``cfg``'s."""
    mine, theirs = flatten(cfg.to_dict()["model"], "model."), flatten(exported.to_dict()["model"], "model.")
    differ = [k for k in mine if mine[k] != theirs.get(k)]
    if differ:
        shown = ", ".join(f"{k}={theirs.get(k)!r} (config: {mine[k]!r})" for k in differ[:3])
        raise OnnxModelError(f"{path}: exported from another model than the config: {shown}"
                             + (f" and {len(differ) - 3} more" if len(differ) > 3 else ""))
