"""COCO dataset loading, its errors, DataSpec discovery, transforms and loaders."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from fastinst.config import load_config
from fastinst.data import CocoInstanceDataset, DatasetError, DataSpec, build_train_loader, collate
from fastinst.data.transforms import (
    EvalTransform,
    InfiniteSampler,
    TrainTransform,
    hflip,
    random_crop,
    shortest_edge_size,
)

H, W = 20, 30


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def _box(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _uncompressed(mask: np.ndarray) -> dict[str, Any]:
    flat = mask.ravel(order="F").astype(int)
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    return {"size": [H, W], "counts": [*counts, run]}


def _coco(**changes: Any) -> dict[str, Any]:
    """Three images (the third without annotations); categories 9, 2, 5 (unsorted, non-contiguous)."""
    data = {
        "images": [{"id": i, "file_name": f"im{i}.png", "height": H, "width": W} for i in (10, 11, 12)],
        "categories": [{"id": 9, "name": "nine"}, {"id": 2, "name": "two"}, {"id": 5, "name": "five"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 9, "iscrowd": 0,
             "segmentation": [[2, 3, 12, 3, 12, 9, 2, 9]]},  # polygon: the box x 2..12, y 3..9
            {"id": 2, "image_id": 10, "category_id": 2, "iscrowd": 0, "segmentation": _rle(_box(20, 10, 28, 18))},
            {"id": 3, "image_id": 10, "category_id": 5, "iscrowd": 1, "segmentation": _uncompressed(_box(0, 0, 4, 4))},
            {"id": 4, "image_id": 11, "category_id": 5, "iscrowd": 0, "segmentation": _uncompressed(_box(5, 5, 9, 15))},
        ],
    }
    data.update(changes)
    return data


def _write(root: Path, data: dict[str, Any] | Any, images: tuple[int, ...] = (10, 11, 12)) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "imgs").mkdir(exist_ok=True)
    for i in images:
        pixels = np.full((H, W, 3), i, dtype=np.uint8)
        Image.fromarray(pixels).save(root / "imgs" / f"im{i}.png")
    (root / "ann.json").write_text(json.dumps(data))
    return root / "ann.json", root / "imgs"


@pytest.fixture()
def dataset(tmp_path: Path) -> CocoInstanceDataset:
    return CocoInstanceDataset(*_write(tmp_path, _coco()))


# --------------------------------------------------------------------------- dataset


def test_item_shapes_dtypes_and_masks(dataset: CocoInstanceDataset) -> None:
    item = dataset[0]
    assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.float32
    assert float(item["image"].max()) == 10.0  # raw 0-255 values, not normalised
    assert item["image_id"] == 10 and item["orig_size"] == (H, W) and item["file_name"] == "im10.png"
    assert item["labels"].dtype == torch.int64 and item["masks"].dtype == torch.bool
    assert item["masks"].shape == (2, H, W)  # the crowd annotation is not a target
    assert torch.equal(item["masks"][1], torch.from_numpy(_box(20, 10, 28, 18)))
    assert torch.equal(dataset[1]["masks"][0], torch.from_numpy(_box(5, 5, 9, 15)))
    polygon = item["masks"][0]
    assert polygon[4:8, 3:11].all() and not polygon[:, 14:].any() and not polygon[:2].any()


def test_category_ids_map_to_contiguous_classes(dataset: CocoInstanceDataset) -> None:
    assert dataset.contiguous_to_category_id == [2, 5, 9]
    assert dataset.class_names == ["two", "five", "nine"]
    assert dataset[0]["labels"].tolist() == [2, 0]  # category 9, then category 2
    assert dataset[1]["labels"].tolist() == [1]


def test_empty_images_kept_unless_filtered(tmp_path: Path) -> None:
    paths = _write(tmp_path, _coco())
    empty = CocoInstanceDataset(*paths)[2]
    assert empty["masks"].shape == (0, H, W) and empty["labels"].shape == (0,)
    assert CocoInstanceDataset(*paths, filter_empty=True).image_ids == [10, 11]


def test_degenerate_polygons_are_skipped_and_counted(tmp_path: Path) -> None:
    data = _coco()
    data["annotations"] += [
        {"id": 7, "image_id": 11, "category_id": 2, "iscrowd": 0, "segmentation": [[1, 1, 5, 5]]},
        {"id": 8, "image_id": 11, "category_id": 2, "iscrowd": 0, "segmentation": [[1, 1, 5, 5, 9, 9]]},
        {"id": 9, "image_id": 11, "category_id": 2, "iscrowd": 0,
         "segmentation": [[1, 1, 2, 2, 3, 3], [0, 0, 4, 0, 4, 4]]},  # one bad, one good part: kept
    ]
    with pytest.warns(UserWarning, match="annotation id 7"):
        ds = CocoInstanceDataset(*_write(tmp_path, data))
    assert ds.num_skipped_annotations == 2
    assert ds[1]["labels"].tolist() == [1, 0]


@pytest.mark.parametrize(("data", "message"), [
    ([1, 2], "top level is list"),
    ({"images": [], "categories": []}, "'annotations' is missing"),
    ({"images": {}, "annotations": [], "categories": []}, "'images' is a dict, not a list"),
    ({"images": [{"id": 1}], "annotations": [], "categories": []}, r"images\[0\] must be an object with fields"),
])
def test_not_coco_json_is_refused(tmp_path: Path, data: Any, message: str) -> None:
    json_path, images = _write(tmp_path, data)
    with pytest.raises(DatasetError, match=message) as info:
        CocoInstanceDataset(json_path, images)
    assert str(json_path) in str(info.value)


def test_invalid_json_text_is_refused(tmp_path: Path) -> None:
    json_path, images = _write(tmp_path, _coco())
    json_path.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        CocoInstanceDataset(json_path, images)


def test_unknown_category_id_is_refused(tmp_path: Path) -> None:
    data = _coco()
    data["annotations"][1]["category_id"] = 4
    with pytest.raises(DatasetError, match=r"annotation id 2 has category_id 4, which is not in 'categories'"):
        CocoInstanceDataset(*_write(tmp_path, data))


def test_missing_images_are_listed(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"2 image file\(s\) missing .*im10.png, im12.png"):
        CocoInstanceDataset(*_write(tmp_path, _coco(), images=(11,)))


def test_rle_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    data = _coco()
    data["annotations"][1]["segmentation"]["size"] = [W, H]
    with pytest.raises(DatasetError, match="annotation id 2 .* RLE size"):
        CocoInstanceDataset(*_write(tmp_path, data))


# --------------------------------------------------------------------------- DataSpec


def _touch(root: Path, *paths: str) -> None:
    for p in paths:
        target = root / p
        target.parent.mkdir(parents=True, exist_ok=True)
        if p.endswith("/"):
            target.mkdir(exist_ok=True)
        else:
            target.write_text("{}")


def test_dataspec_finds_the_coco_layout(tmp_path: Path) -> None:
    _touch(tmp_path, "annotations/instances_train2017.json", "annotations/instances_val2017.json",
           "train2017/", "val2017/", "val_extra/")
    spec = DataSpec.from_folder(tmp_path)
    assert spec == DataSpec(tmp_path / "annotations/instances_train2017.json", tmp_path / "train2017",
                            tmp_path / "annotations/instances_val2017.json", tmp_path / "val2017")
    assert spec.split("val") == (spec.val_json, spec.val_images)


def test_dataspec_finds_images_subfolders_and_a_single_split(tmp_path: Path) -> None:
    _touch(tmp_path, "annotations/instances_val.json", "images/val/")
    spec = DataSpec.from_folder(tmp_path)
    assert spec.val_images == tmp_path / "images" / "val" and spec.train_json is None
    with pytest.raises(DatasetError, match="no train split"):
        spec.split("train")


@pytest.mark.parametrize(("paths", "message"), [
    (("train/",), "no annotations/instances_train"),
    (("annotations/instances_val.json", "train/"), r"found instances_val.json but no image folder val\*/"),
    (("annotations/instances_val.json", "val_a/", "val_b/"), "several val image folders"),
])
def test_dataspec_errors(tmp_path: Path, paths: tuple[str, ...], message: str) -> None:
    _touch(tmp_path, *paths)
    with pytest.raises(DatasetError, match=message):
        DataSpec.from_folder(tmp_path)
    with pytest.raises(DatasetError, match="data folder not found"):
        DataSpec.from_folder(tmp_path / "nope")


# --------------------------------------------------------------------------- transforms


def _marked(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An image that is bright exactly where its (single, off-centre) mask is."""
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    mask[0, h // 4: h // 2, w // 8: w // 3] = True
    return mask[0].float().mul(255).expand(3, h, w).clone(), mask


def test_hflip_moves_image_and_mask_together() -> None:
    image, masks = _marked(40, 60)
    flipped_image, flipped_masks = hflip(image, masks)
    assert torch.equal(flipped_masks[0], masks[0].flip(-1)) and torch.equal(flipped_image, image.flip(-1))
    assert flipped_masks[0, 10:20, -20:-7].all() and not flipped_masks[0, :, :20].any()


@pytest.mark.parametrize("crop_prob", [0.0, 1.0])
def test_train_transform_keeps_masks_aligned_and_sizes_in_bounds(crop_prob: float) -> None:
    cfg = load_config(None, [f"input.crop_prob={crop_prob}", "input.min_size_train=[64, 80, 96]",
                             "input.max_size_train=120", "input.crop_resize_choices=[90, 110]",
                             "input.crop_size=[60, 100]"])
    transform, flips = TrainTransform(cfg), 0
    for seed in range(12):
        image, masks = transform(*_marked(90, 160), random.Random(seed))
        h, w = image.shape[-2:]
        assert masks.shape == (1, h, w)
        assert min(h, w) in (64, 80, 96) or max(h, w) == 120
        assert max(h, w) <= 120
        inside, outside = image[0][masks[0]], image[0][~masks[0]]
        if inside.numel():
            assert inside.mean() > 200
        assert outside.mean() < 40
        flips += bool(masks[0, :, w // 2:].any())  # the mark sits in the left third unless flipped
    assert 0 < flips < 12
    again = transform(*_marked(90, 160), random.Random(3))
    assert torch.equal(again[0], transform(*_marked(90, 160), random.Random(3))[0])


def test_random_crop_size_range_is_clipped_to_the_image() -> None:
    image, masks = torch.zeros(3, 50, 500), torch.zeros(2, 50, 500, dtype=torch.bool)
    for seed in range(20):
        cropped, cropped_masks = random_crop(image, masks, (100, 200), random.Random(seed))
        assert cropped.shape[1] == 50 and 100 <= cropped.shape[2] <= 200
        assert cropped_masks.shape[1:] == cropped.shape[1:]


def test_test_transform_resizes_the_shorter_edge_with_a_cap() -> None:
    transform = EvalTransform(load_config(None))
    image, masks = transform(torch.zeros(3, 480, 640), torch.zeros(0, 480, 640, dtype=torch.bool))
    assert image.shape == (3, 640, 853) and masks.shape == (0, 640, 853)
    assert shortest_edge_size(100, 1000, 640, 853) == (85, 853)
    assert shortest_edge_size(300, 200, 640) == (960, 640)


def test_dataset_transform_is_seeded_per_key(tmp_path: Path) -> None:
    ds = CocoInstanceDataset(*_write(tmp_path, _coco()), transform=TrainTransform(load_config(None)))
    first, second = ds[(0, 5)], ds[(0, 5)]
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["masks"], second["masks"])
    assert first["orig_size"] == (H, W) and min(first["image"].shape[-2:]) >= 416


# --------------------------------------------------------------------------- loaders


def test_infinite_sampler_is_seeded_sharded_and_resumable() -> None:
    def take(n: int, **kw: Any) -> list[tuple[int, int]]:
        return list(itertools.islice(InfiniteSampler(7, seed=1, **kw), n))

    assert take(14) == take(14)
    assert take(7) != list(itertools.islice(InfiniteSampler(7, seed=2), 7))
    assert sorted(i for i, _ in take(7)) == list(range(7))
    assert sorted(i for i, _ in take(14)[7:]) == list(range(7))
    rank0, rank1 = take(4, rank=0, world_size=2), take(3, rank=1, world_size=2)
    interleaved = [key for pair in itertools.zip_longest(rank0, rank1) for key in pair if key is not None]
    assert interleaved == take(7)  # the ranks share one stream of keys, each its own positions
    assert take(5, start=3) == take(8)[3:]
    assert take(2, rank=1, world_size=2, start=1) == take(4, rank=1, world_size=2)[1:3]


def test_train_loader_batches_lists_and_is_reproducible_across_workers(tmp_path: Path) -> None:
    cfg = load_config(None, ["input.min_size_train=[32]", "input.max_size_train=64"])
    ds = CocoInstanceDataset(*_write(tmp_path, _coco()), transform=TrainTransform(cfg))
    batches = [list(itertools.islice(build_train_loader(cfg, ds, batch_size=2, seed=4, num_workers=w), 3))
               for w in (0, 2)]
    assert all(isinstance(b, list) and len(b) == 2 for b in batches[0])
    for single, multi in zip(*batches):
        for a, b in zip(single, multi):
            assert a["image_id"] == b["image_id"] and torch.equal(a["image"], b["image"])
            assert torch.equal(a["masks"], b["masks"])
    assert collate([{"a": 1}]) == [{"a": 1}]
