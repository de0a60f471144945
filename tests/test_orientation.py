"""Images and videos the right way up: an image's EXIF orientation (all 8) and a video's display matrix
(rotations and mirrors, written with PyAV) are applied when they are read for prediction."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from test_predict import CONFIG, TINY

from fastinst import Predictor
from fastinst.predict.media import VideoReader, read_image
from fastinst.predict.pipeline import predict_files
from fastinst.predict.predictor import to_tensor

# How a camera stores the upright image ``v`` under each EXIF orientation, from the tag's definition
# (which sides of the scene the stored 0th row and 0th column are).
STORED: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda v: v,  # top, left
    2: lambda v: v[:, ::-1],  # top, right
    3: lambda v: v[::-1, ::-1],  # bottom, right
    4: lambda v: v[::-1],  # bottom, left
    5: lambda v: v.swapaxes(0, 1),  # left, top
    6: lambda v: v.swapaxes(0, 1)[::-1],  # right, top
    7: lambda v: v.swapaxes(0, 1)[::-1, ::-1],  # right, bottom
    8: lambda v: v.swapaxes(0, 1)[:, ::-1],  # left, bottom
}


def _shape(height: int, width: int) -> np.ndarray:
    """An asymmetric drawing: a wide bright block top left, a dimmer one bottom right, a bar down the left."""
    image = np.full((height, width, 3), 30, np.uint8)
    image[:height // 4, :width // 2] = 250
    image[-height // 3:, -width // 4:] = 140
    image[:, :width // 8] = 200
    return image


def _write_image(path: Path, image: np.ndarray, orientation: int, **options: object) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(image)).save(path, exif=exif, **options)


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_every_exif_orientation_is_read_upright(tmp_path: Path, orientation: int) -> None:
    upright = _shape(48, 64)
    stored = STORED[orientation](upright)
    png, jpeg = tmp_path / "photo.png", tmp_path / "photo.jpg"
    _write_image(png, stored, orientation)
    _write_image(jpeg, stored, orientation, quality=95, subsampling=0)
    assert np.array_equal(read_image(png), upright)
    assert torch.equal(to_tensor(png), torch.from_numpy(upright).permute(2, 0, 1).float())  # what Predictor sees
    from_jpeg = read_image(jpeg)
    assert from_jpeg.shape == upright.shape
    assert np.abs(from_jpeg.astype(int) - upright).mean() < 3


def _write_video(path: Path, frame: np.ndarray, degrees: int, hflip: bool, frames: int = 2) -> None:
    """An H.264 MP4 of ``frame`` whose display matrix rotates it ``degrees`` counter-clockwise, then
    mirrors it when ``hflip`` (PyAV's ``set_display_rotation``)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
        stream.set_display_rotation(degrees, hflip=hflip)
        for _ in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _displayed(frame: np.ndarray, degrees: int, hflip: bool) -> np.ndarray:
    shown = np.rot90(frame, degrees // 90)
    return shown[:, ::-1] if hflip else shown


ORIENTATIONS = [(degrees, hflip) for degrees in (0, 90, 180, 270) for hflip in (False, True)]


@pytest.mark.parametrize(("degrees", "hflip"), ORIENTATIONS)
def test_video_frames_are_read_upright(tmp_path: Path, degrees: int, hflip: bool) -> None:
    stored = _shape(32, 48)
    path = tmp_path / "clip.mp4"
    _write_video(path, stored, degrees, hflip)
    with VideoReader(path) as video:
        frames = list(video)
    assert len(frames) == 2
    for frame in frames:
        # the expected orientation is the nearest of all eight (H.264 is lossy)
        errors = {o: np.abs(frame.astype(int) - _displayed(stored, *o)).mean() for o in ORIENTATIONS
                  if _displayed(stored, *o).shape == frame.shape}
        assert min(errors, key=errors.__getitem__) == (degrees, hflip) and errors[degrees, hflip] < 6


def test_predictions_and_output_video_of_rotated_inputs_are_upright(tmp_path: Path) -> None:
    video, photo = tmp_path / "portrait.mp4", tmp_path / "portrait.jpg"
    _write_video(video, _shape(32, 48), 90, False)
    _write_image(photo, STORED[6](_shape(64, 48)), 6)
    predictor = Predictor(CONFIG, device="cpu", overrides=TINY)
    report = predict_files(predictor, [photo, video], tmp_path / "out", progress=False)
    assert not report.failures
    images = json.loads((tmp_path / "out" / "images.json").read_text())["images"]
    assert {(im["file_name"], im["height"], im["width"]) for im in images} == {(str(photo), 64, 48),
                                                                               (str(video), 48, 32)}
    with av.open(str(tmp_path / "out" / "portrait.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.height * 32 == stream.width * 48  # upright, enlarged by a whole factor


def test_datasets_read_images_upright_as_detectron2_does(tmp_path: Path) -> None:
    """Training and evaluation (``CocoInstanceDataset``) apply EXIF orientation too: a photo stored
    rotated (orientation 6) is read as the upright image its annotation's size describes."""
    from fastinst.data.coco import CocoInstanceDataset

    upright = _shape(48, 64)
    (tmp_path / "val").mkdir()
    _write_image(tmp_path / "val" / "p.png", STORED[6](upright), 6)
    ann = {"images": [{"id": 1, "file_name": "p.png", "height": 48, "width": 64}], "categories": [{"id": 1, "name": "a"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 32, 12], "area": 384,
                            "iscrowd": 0, "segmentation": [[0, 0, 32, 0, 32, 12, 0, 12]]}]}
    (tmp_path / "val.json").write_text(json.dumps(ann))
    item = CocoInstanceDataset(tmp_path / "val.json", tmp_path / "val")[0]
    assert torch.equal(item["image"], torch.from_numpy(upright).permute(2, 0, 1).float())
