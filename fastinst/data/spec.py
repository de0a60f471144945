"""Where a COCO-format dataset lives: ``DataSpec`` and the data layer's ``DatasetError``.

Kept free of torch so that config-level code (``runner``, grids) can describe data cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val")


class DatasetError(ValueError):
    """A dataset file or annotation is missing or malformed; the message names it."""


@dataclass
class DataSpec:
    """Train/val annotation JSONs and image folders; any of them may be ``None``."""

    train_json: Path | None = None
    train_images: Path | None = None
    val_json: Path | None = None
    val_images: Path | None = None

    def __post_init__(self) -> None:
        for name in ("train_json", "train_images", "val_json", "val_images"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))

    @classmethod
    def from_folder(cls, path: str | Path) -> DataSpec:
        """Find ``annotations/instances_{train,val}*.json`` and their image folders under ``path``.

        Image folders may be ``train*/``, ``val*/`` or ``images/train*`` etc.; a folder named like the
        JSON's suffix (``instances_val2017.json`` → ``val2017/``) wins when several match.
        """
        root = Path(path)
        if not root.is_dir():
            raise DatasetError(f"data folder not found: {root}")
        found: dict[str, Path | None] = {}
        for split in SPLITS:
            json_path = _find_json(root, split)
            found[f"{split}_json"] = json_path
            found[f"{split}_images"] = _find_images(root, split, json_path) if json_path else None
        if found["train_json"] is None and found["val_json"] is None:
            raise DatasetError(
                f"{root}: no annotations/instances_train*.json or annotations/instances_val*.json found"
            )
        return cls(**found)

    def split(self, split: str) -> tuple[Path, Path]:
        """``(json, image folder)`` of ``"train"`` or ``"val"``; a clear error if either is unset."""
        json_path, images = getattr(self, f"{split}_json"), getattr(self, f"{split}_images")
        if json_path is None or images is None:
            raise DatasetError(f"no {split} split given (need both {split}_json and {split}_images)")
        return json_path, images

    def to_dict(self) -> dict[str, str | None]:
        """JSON-serialisable form (paths as strings)."""
        return {k: None if v is None else str(v) for k, v in vars(self).items()}


def _find_json(root: Path, split: str) -> Path | None:
    matches = sorted((root / "annotations").glob(f"instances_{split}*.json"))
    if len(matches) > 1:
        names = ", ".join(m.name for m in matches)
        raise DatasetError(f"{root / 'annotations'}: several {split} annotation files ({names}); pass one explicitly")
    return matches[0] if matches else None


def _find_images(root: Path, split: str, json_path: Path) -> Path:
    suffix = json_path.stem[len("instances_"):]
    candidates = [d for base in (root, root / "images") for d in sorted(base.glob(f"{split}*")) if d.is_dir()]
    exact = [d for d in candidates if d.name == suffix]
    if exact:
        return exact[0]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DatasetError(
            f"{root}: found {json_path.name} but no image folder {split}*/ or images/{split}*/ next to it"
        )
    names = ", ".join(str(c.relative_to(root)) for c in candidates)
    raise DatasetError(f"{root}: several {split} image folders ({names}) and none named {suffix!r}")
