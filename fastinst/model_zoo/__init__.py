"""The official FastInst releases: one config per release in ``configs/``, named as the official ones.

A model-zoo name (e.g. ``fastinst_R50_ppm-fpn_x3_640``) works wherever a config path does:
``fastinst.config.load_config`` resolves it with :func:`get_config_file` when no such file exists.
AP (COCO val) and FPS (one V100) are the official README's; params are its rounding to millions;
``weights_url`` is the release file the official README links (GitHub release v0.1.0 of
junjiehe96/FastInst). No checksums are published, so none is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class Release:
    """One official model: its config name, what it is, and the figures the official README gives."""

    name: str
    backbone: str  # as the official README writes it
    decoder_layers: int
    test_size: tuple[int, int]  # shorter edge, longer-edge cap
    ap: float  # COCO val2017 mask AP
    fps: float  # one V100, FP32, batch 1
    params_m: int  # millions, rounded

    @property
    def weights_url(self) -> str:
        """The release file the official README links."""
        return f"https://github.com/junjiehe96/FastInst/releases/download/v0.1.0/{self.name}_{self.ap}.pth"


RELEASES: tuple[Release, ...] = (
    Release("fastinst_R50_ppm-fpn_x1_576", "R50", 1, (576, 777), 34.9, 53.8, 30),
    Release("fastinst_R50_ppm-fpn_x3_640", "R50", 3, (640, 853), 37.9, 35.5, 34),
    Release("fastinst_R101_ppm-fpn_x3_640", "R101", 3, (640, 853), 38.9, 28.0, 53),
    Release("fastinst_R50-vd-dcn_ppm-fpn_x1_576", "R50-d-DCN", 1, (576, 777), 37.4, 47.8, 30),
    Release("fastinst_R50-vd-dcn_ppm-fpn_x3_640", "R50-d-DCN", 3, (640, 853), 40.1, 32.5, 35),
)


def names() -> list[str]:
    """The releases' names, in table order."""
    return [r.name for r in RELEASES]


def get_config_file(name: str) -> Path:
    """The config YAML of the release ``name`` (a trailing ``.yaml`` is accepted); KeyError if unknown."""
    name = name.removesuffix(".yaml")
    if name not in names():
        raise KeyError(name)
    return CONFIG_DIR / f"{name}.yaml"
