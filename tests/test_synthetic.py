"""Synthetic shapes dataset: reproducible, valid COCO, covers sizes, formats, crowd and occlusion."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from fastinst.data.synthetic import SHAPES, make_synthetic, render

SIZE, SEED = 256, 3


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    make_synthetic(out, num_train=40, num_val=4, size=SIZE, seed=SEED, num_classes=4, workers=2)
    return out


@pytest.fixture(scope="module")
def coco(synth: Path) -> COCO:
    return COCO(str(synth / "annotations" / "instances_train.json"))


def test_same_seed_same_files_whatever_the_workers(synth: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    make_synthetic(again, num_train=40, num_val=4, size=SIZE, seed=SEED, num_classes=4, workers=1)
    assert _digest(again) == _digest(synth)
    assert len(list((synth / "train").glob("*.png"))) == 40 and len(list((synth / "val").glob("*.png"))) == 4


def test_other_seed_other_images(synth: Path, tmp_path: Path) -> None:
    make_synthetic(tmp_path, num_train=2, num_val=0, size=SIZE, seed=SEED + 1)
    assert (tmp_path / "train" / "000000.png").read_bytes() != (synth / "train" / "000000.png").read_bytes()


def test_annotations_round_trip_through_pycocotools(coco: COCO) -> None:
    """Decoding each annotation gives back the visible mask the generator rendered."""
    for image_id in (1, 2, 3, 7):
        rendered = render(np.random.default_rng([SEED, 0, image_id - 1]), SIZE, 4)[1]
        anns = coco.imgToAnns[image_id]
        assert len(anns) == len(rendered)
        for ann, layer in zip(anns, rendered):
            assert np.array_equal(coco.annToMask(ann).astype(bool), layer.mask)
            assert ann["area"] == layer.mask.sum() and ann["iscrowd"] == int(layer.crowd)


def test_categories_are_distinct_shapes_with_non_contiguous_ids(coco: COCO) -> None:
    cats = coco.loadCats(coco.getCatIds())
    assert [c["id"] for c in cats] == [1, 3, 5, 7]
    assert [c["name"] for c in cats] == list(SHAPES[:4])
    assert {a["category_id"] for a in coco.dataset["annotations"]} == {1, 3, 5, 7}


def test_sizes_formats_and_crowd_are_all_present(coco: COCO) -> None:
    anns = coco.dataset["annotations"]
    areas = np.array([a["area"] for a in anns if not a["iscrowd"]])
    assert (areas < 32**2).mean() > 0.15 and (areas > 96**2).mean() > 0.1
    assert ((areas >= 32**2) & (areas <= 96**2)).mean() > 0.15
    kinds = {("crowd" if a["iscrowd"] else "polygon" if isinstance(a["segmentation"], list)
              else "rle") for a in anns}
    assert kinds == {"crowd", "polygon", "rle"}
    crowd = [a for a in anns if a["iscrowd"]]
    assert all(isinstance(a["segmentation"]["counts"], list) for a in crowd)


def test_visible_masks_do_not_overlap(coco: COCO) -> None:
    for image_id in coco.getImgIds()[:20]:
        masks = [coco.annToMask(a) for a in coco.imgToAnns[image_id]]
        if masks:
            assert np.stack(masks).sum(0).max() <= 1


def test_json_is_plain_coco(synth: Path) -> None:
    data = json.loads((synth / "annotations" / "instances_val.json").read_text())
    assert {"images", "annotations", "categories"} <= set(data)
    assert all(im["height"] == im["width"] == SIZE for im in data["images"])
    ids = [a["id"] for a in data["annotations"]]
    assert ids == list(range(1, len(ids) + 1))


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic(tmp_path, 1, 1, num_classes=len(SHAPES) + 1)
