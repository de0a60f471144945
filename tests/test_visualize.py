"""Prediction images: ground truth beside predictions, drawn on the original image."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from fastinst.data.synthetic import make_synthetic
from fastinst.engine.visualize import GAP, draw_instances, outline, write_prediction_images


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[COCO, Path]:
    out = tmp_path_factory.mktemp("synth")
    make_synthetic(out, num_train=0, num_val=4, size=96, seed=5, workers=1)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out / "annotations" / "instances_val.json"))
    return coco, out / "val"


def test_outline_is_the_inner_boundary() -> None:
    mask = np.zeros((7, 7), bool)
    mask[1:6, 2:5] = True
    edge = outline(mask)
    assert edge[1, 2] and edge[5, 4] and edge[3, 2] and not edge[3, 3]
    assert not (edge & ~mask).any() and edge.sum() == 5 * 3 - 3 * 1


def test_draw_instances_enlarges_small_images_and_tints_only_masks() -> None:
    image = np.full((40, 50, 3), 100, np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[20:30, 5:15] = True
    panel = np.asarray(draw_instances(image, [mask], ["x"]))
    assert panel.shape == (280, 350, 3)  # 7x: the smallest factor taking the longer side to >= 320
    assert (panel[25 * 7 + 3, 10 * 7 + 3] != 100).any()  # inside the mask: tinted
    assert (panel[5 * 7, 40 * 7] == 100).all()  # far from mask and caption: untouched


def test_prediction_images_show_gt_and_thresholded_predictions(synth: tuple[COCO, Path], tmp_path: Path) -> None:
    coco, image_dir = synth
    image_ids = [i for i in coco.getImgIds() if coco.imgToAnns.get(i)][:2]
    preds = []
    for ann in coco.dataset["annotations"]:
        if ann["image_id"] in image_ids and not ann["iscrowd"]:
            rle = mask_util.encode(np.asfortranarray(coco.annToMask(ann)))
            preds.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 0.3,
                          "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    for threshold, expect_drawn in ((0.5, False), (0.2, True)):
        paths = write_prediction_images(coco, image_dir, preds, tmp_path / str(threshold), image_ids, threshold)
        assert [p.name for p in paths] == [Path(coco.imgs[i]["file_name"]).stem + ".png" for i in image_ids]
        original = np.asarray(Image.open(image_dir / coco.imgs[image_ids[0]]["file_name"]).convert("RGB"))
        scale = 4  # the smallest factor taking 96 px to >= 320
        enlarged = original.repeat(scale, 0).repeat(scale, 1)
        drawn = np.asarray(Image.open(paths[0]))
        assert drawn.shape == (enlarged.shape[0], 2 * enlarged.shape[1] + GAP, 3)
        left, right = drawn[:, : enlarged.shape[1]], drawn[:, enlarged.shape[1] + GAP:]
        assert not np.array_equal(left, enlarged)  # GT always drawn
        assert np.array_equal(right, enlarged) != expect_drawn  # predictions only above the threshold
