"""``fastinst predict`` and ``Predictor``: arrays/tensors/paths, batches, images/folders/globs/videos in,
overlays and pycocotools-loadable COCO results out; bad inputs named, the rest still processed."""

from __future__ import annotations

import contextlib
import io
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from fastinst import Predictor, build_model, cli, load_config
from fastinst.checkpoint import CheckpointError
from fastinst.data.synthetic import make_synthetic
from fastinst.deploy.onnx_meta import OnnxModelError
from fastinst.engine.visualize import draw_predictions
from fastinst.predict.media import MediaError, collect_inputs

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "cpu_tiny.yaml"
TINY = ["model.num_classes=4", "model.backbone.name=resnet18", "model.hidden_dim=64",
        "model.decoder.dim_feedforward=128", "model.decoder.num_layers=1", "model.num_ia_queries=10",
        "model.num_aux_queries=2", "model.pixel_decoder.dim_feedforward=128", "model.test.detections_per_image=10",
        "input.min_size_test=64", "input.max_size_test=96", "data.num_workers=0"]
SETS = [arg for key in TINY for arg in ("--set", key)]
CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 3, "name": "rectangle"}, {"id": 5, "name": "triangle"},
              {"id": 7, "name": "star"}]
FPS, FRAMES = 12, 5


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four synthetic 96 px images, a 96x80 video of ``FRAMES`` frames at ``FPS``, a checkpoint with categories."""
    root = tmp_path_factory.mktemp("predict")
    make_synthetic(root / "synth", num_train=0, num_val=4, size=96, seed=2, workers=1)
    torch.manual_seed(0)
    weights = root / "model.pth"
    torch.save({"model": build_model(load_config(CONFIG, TINY)).state_dict(), "categories": CATEGORIES}, weights)
    video = root / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 96, 80, "yuv420p"
        for i in range(FRAMES):
            frame = np.full((80, 96, 3), 90, np.uint8)
            frame[10 + 6 * i:40 + 6 * i, 20:60] = (220, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return {"images": root / "synth" / "val", "weights": weights, "video": video, "root": root}


@pytest.fixture(scope="module")
def predictor(data: dict[str, Path]) -> Predictor:
    return Predictor(CONFIG, data["weights"], device="cpu", batch_size=2, overrides=TINY)


def _predict(*args: str, progress: bool = False) -> int:
    return cli.main(["predict", str(CONFIG), *SETS, *args, "--device", "cpu", *([] if progress else ["--no-progress"])])


def test_predictor_takes_arrays_tensors_and_paths_alone_or_batched(predictor: Predictor, data: dict[str, Path]) -> None:
    paths = sorted(data["images"].glob("*.png"))
    array = np.asarray(Image.open(paths[0]).convert("RGB"))
    single = predictor(array)
    assert single.masks.shape == (10, 96, 96) and single.masks.dtype == torch.bool
    assert single.names == [CATEGORIES[k]["name"] for k in single.labels.tolist()]
    assert single.category_ids == [CATEGORIES[k]["id"] for k in single.labels.tolist()]
    from_tensor = predictor(torch.from_numpy(array.copy()).permute(2, 0, 1))
    batched = predictor([paths[0], paths[1], array])  # a batch of two, then one
    assert len(batched) == 3
    for other in (from_tensor, batched[0], batched[2]):
        torch.testing.assert_close(other.scores, single.scores)
        assert torch.equal(other.masks, single.masks)
    assert predictor.class_names == ["circle", "rectangle", "triangle", "star"]


def test_bfloat16_on_cpu_finds_the_same_top_instance(predictor: Predictor, data: dict[str, Path]) -> None:
    half = Predictor(CONFIG, data["weights"], device="cpu", dtype="bfloat16", overrides=TINY)
    path = sorted(data["images"].glob("*.png"))[0]
    a, b = predictor(path), half(path)
    assert b.masks.shape == a.masks.shape and b.scores.dtype == torch.float32
    assert abs(float(a.scores[0]) - float(b.scores[0])) < 0.05


def test_predictor_rejects_a_wrong_array_and_a_checkpoint_that_does_not_fit(predictor: Predictor,
                                                                              data: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\).*float32"):
        predictor(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(CheckpointError, match=rf"^{data['weights']}: checkpoint does not fit"):
        Predictor(CONFIG, data["weights"], device="cpu", overrides=[*TINY, "model.num_classes=3"])


def test_predict_writes_overlays_video_and_results_that_pycocotools_loads(data: dict[str, Path], tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted(data["images"].glob("*.png"))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("skipped: not an image")
    out = tmp_path / "out"
    code = _predict(str(folder), str(data["video"]), "--weights", str(data["weights"]), "--out", str(out),
                    "--batch", "2", "--score", "0.05")
    err = capsys.readouterr().err
    assert code == 1  # the broken image failed, everything else was written
    assert f"{folder / 'broken.png'}: not a readable image" in err and "1 of 5 inputs failed" in err
    assert sorted(p.name for p in out.glob("*.png")) == ["000000.png", "000001.png", "000002.png"]
    overlay = np.asarray(Image.open(out / "000000.png"))
    assert overlay.shape == (384, 384, 3)  # 96 px enlarged 4x so captions stay readable
    assert not np.array_equal(overlay[::4, ::4], np.asarray(Image.open(folder / "000000.png").convert("RGB")))
    with av.open(str(out / "clip.mp4")) as container:
        stream = container.streams.video[0]
        assert Fraction(stream.average_rate) == FPS
        assert sum(1 for _ in container.decode(stream)) == FRAMES
    with contextlib.redirect_stdout(io.StringIO()):
        images = COCO(str(out / "images.json"))
        results = images.loadRes(str(out / "results.json"))
    assert len(images.imgs) == 3 + FRAMES and len(results.anns) == 10 * (3 + FRAMES)
    frames = [im for im in images.dataset["images"] if "frame_index" in im]
    assert [f["frame_index"] for f in frames] == list(range(FRAMES))
    assert {(f["file_name"], f["height"], f["width"]) for f in frames} == {(str(data["video"]), 80, 96)}
    assert images.dataset["categories"] == CATEGORIES
    assert {a["category_id"] for a in results.anns.values()} <= {c["id"] for c in CATEGORIES}
    ann = next(iter(results.anns.values()))
    assert results.annToMask(ann).shape == (images.imgs[ann["image_id"]]["height"],
                                            images.imgs[ann["image_id"]]["width"])


def test_unreadable_video_is_named_and_globs_still_run(data: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    image = sorted(data["images"].glob("*.png"))[0]
    out = tmp_path / "out"
    code = _predict(str(bad), str(image.parent / "00000[0].png"), "--out", str(out), progress=True)
    err = capsys.readouterr().err
    assert code == 1 and f"{bad}: not a readable video" in err
    assert "predict: 100%" in err and "1/1" in err  # the bar counts images and frames (the bad video has none)
    assert [p.name for p in out.glob("*.png")] == [image.name] and not (out / "bad.mp4").exists()
    assert len(json.loads((out / "images.json").read_text())["images"]) == 1
    assert json.loads((out / "images.json").read_text())["categories"][0] == {"id": 0, "name": "class 0"}


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "a.gif", "a.gif: unsupported extension '.gif'"),
    (lambda d: d / "missing.png", "missing.png: no such file or folder"),
    (lambda d: str(d / "*.jpg"), "no images or videos found"),
])
def test_bad_input_names_the_file_before_loading_anything(tmp_path: Path, make, message: str,  # noqa: ANN001
                                                          capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    with pytest.raises(MediaError, match=message.replace(".", r"\.").replace("*", r"\*")):
        collect_inputs([str(make(tmp_path))])
    assert _predict(str(make(tmp_path)), "--out", str(tmp_path / "out")) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_cli_reports_a_checkpoint_that_does_not_fit_in_one_line(data: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    code = _predict(str(data["video"]), "--weights", str(data["weights"]), "--out", str(tmp_path),
                    "--set", "model.hidden_dim=96", "--set", "model.decoder.num_heads=4")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith(f"fastinst predict: {data['weights']}: checkpoint does not fit the model")


def test_onnx_files_of_another_model_are_named(data: dict[str, Path], tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def save(path: Path, props: dict[str, str]) -> Path:
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        model = helper.make_model(graph)
        helper.set_model_props(model, props)
        onnx.save(model, str(path))
        return path

    foreign = save(tmp_path / "foreign.onnx", {})
    with pytest.raises(OnnxModelError, match=rf"^{foreign}: not a fastinst export"):
        Predictor(foreign)
    other_config = load_config(CONFIG, [*TINY, "model.hidden_dim=96", "model.decoder.num_heads=4"])
    other = save(tmp_path / "other.onnx", {"fastinst_config": other_config.to_yaml()})
    with pytest.raises(OnnxModelError, match=rf"^{other}: exported from another model.*model.hidden_dim=96"):
        Predictor(CONFIG, other, overrides=TINY)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01garbage")
    with pytest.raises(OnnxModelError, match=rf"^{garbage}: not a readable ONNX model"):
        Predictor(garbage)


@pytest.mark.slow  # the export takes ~40 s on 2 CPU cores
def test_predict_runs_an_onnx_export_through_onnxruntime_like_eager(data: dict[str, Path], predictor: Predictor,
                                                                   tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from fastinst.deploy.onnx_export import export_onnx

    model = export_onnx(load_config(CONFIG, TINY), data["weights"], tmp_path / "model.onnx")
    out = tmp_path / "out"
    image = sorted(data["images"].glob("*.png"))[0]
    assert cli.main(["predict", str(model), str(image), "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "images.json").read_text())["categories"] == CATEGORIES
    results = json.loads((out / "results.json").read_text())
    eager = predictor(image)
    np.testing.assert_allclose([r["score"] for r in results], eager.scores.numpy(), atol=1e-4)
    assert [r["category_id"] for r in results] == eager.category_ids
    with pytest.raises(ValueError, match=rf"^{model}: an ONNX file runs with backend onnxruntime or openvino"):
        Predictor(model, backend="eager")


def test_draw_predictions_draws_only_instances_at_or_above_the_threshold() -> None:
    image = np.full((40, 40, 3), 100, np.uint8)
    masks = np.zeros((2, 40, 40), bool)
    masks[0, 2:12, 2:12] = masks[1, 25:35, 25:35] = True
    drawn = np.asarray(draw_predictions(image, masks, ["a", "b"], [0.9, 0.3], score_threshold=0.5, min_side=0))
    assert drawn.shape == image.shape
    assert (drawn[7, 7] != 100).any() and (drawn[30, 30] == 100).all()


@pytest.mark.gpu
def test_predictor_on_cuda_matches_cpu(data: dict[str, Path], predictor: Predictor) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gpu = Predictor(CONFIG, data["weights"], device="cuda", batch_size=2, overrides=TINY)
    paths = sorted(data["images"].glob("*.png"))
    for a, b in zip(predictor(paths), gpu(paths)):
        torch.testing.assert_close(a.scores, b.scores, atol=1e-3, rtol=1e-3)
        assert (a.masks != b.masks).float().mean() < 0.01
