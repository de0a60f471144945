"""Inference backends: one call shape, outputs equal to the eager model (tiny config, CPU; CUDA paths marked gpu)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train import TINY, _one_thread  # noqa: F401 (autouse: one thread for tiny tensors)

import fastinst
from fastinst.checkpoint import CheckpointError
from fastinst.config import config_from_dict
from fastinst.deploy.backends import BACKENDS, build_backend
from fastinst.deploy.compare import Variant, compare, default_variants, mask_iou, parity
from fastinst.deploy.pooling import MatrixAdaptiveAvgPool2d, replace_adaptive_pools

CFG = config_from_dict(TINY)
SIZES = [(96, 128), (112, 80)]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.pt"
    model = fastinst.build_model(CFG)
    torch.save({"model": model.state_dict(), "categories": [{"id": 10 + i, "name": f"c{i}"} for i in range(4)]}, path)
    return path


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, h, w, generator=g) * 255 for h, w in SIZES]


def _assert_equal_results(a: list[dict], b: list[dict], atol: float = 0.0) -> None:
    for x, y in zip(a, b):
        torch.testing.assert_close(x["scores"], y["scores"], atol=atol, rtol=0)
        assert torch.equal(x["labels"], y["labels"])
        assert torch.equal(x["masks"], y["masks"])


def test_eager_backend_is_the_model_with_its_categories(weights: Path) -> None:
    backend = build_backend("eager", CFG, weights, device="cpu")
    assert (backend.name, backend.device.type, backend.dtype) == ("eager", "cpu", "float32")
    assert backend.categories[0] == {"id": 10, "name": "c0"}
    model = fastinst.build_model(CFG)
    fastinst.checkpoint.load_weights(model, weights)
    out_sizes = [(100, 140), (112, 80)]
    with torch.inference_mode():
        expected = model.eval()(_images(), output_sizes=out_sizes)
    got = backend(_images(), out_sizes)
    _assert_equal_results(got, expected)
    assert got[0]["masks"].shape[-2:] == (100, 140) and got[0]["masks"].dtype == torch.bool


def test_channels_last_and_bfloat16_stay_close(weights: Path) -> None:
    reference = build_backend("eager", CFG, weights, device="cpu")(_images(), SIZES)
    nhwc = build_backend("eager", CFG, weights, device="cpu", channels_last=True)(_images(), SIZES)
    dev = parity(reference, nhwc)
    assert dev["score_dev"] < 1e-5 and dev["mask_iou_mean"] > 0.999
    half = build_backend("eager", CFG, weights, device="cpu", dtype="bfloat16")(_images(), SIZES)
    assert all(r["scores"].dtype == torch.float32 or r["scores"].dtype == torch.bfloat16 for r in half)
    assert parity(reference, half)["score_dev"] < 0.05


def test_bad_names_and_weights(weights: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'; known: eager, compile"):
        build_backend("tensorrt", CFG, weights)
    with pytest.raises(ValueError, match="dtype must be one of"):
        build_backend("eager", CFG, weights, dtype="int8")
    with pytest.raises(ValueError, match="float16 is not offered on the CPU"):
        build_backend("eager", CFG, weights, device="cpu", dtype="float16")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        build_backend("cudagraph", CFG, weights, device="cpu")
    other = config_from_dict({**TINY, "model.num_classes": 7})
    with pytest.raises(CheckpointError, match=str(weights)):
        build_backend("eager", other, weights, device="cpu")
    assert list(BACKENDS)[0] == "eager"


def test_matrix_pooling_equals_adaptive_pooling() -> None:
    x = torch.randn(2, 5, 13, 22)
    for bins in (1, 2, 3, 6):
        torch.testing.assert_close(MatrixAdaptiveAvgPool2d(bins)(x), torch.nn.AdaptiveAvgPool2d(bins)(x),
                                   atol=1e-6, rtol=1e-6)
    model = fastinst.build_model(fastinst.load_config(None, ["model.backbone.name=resnet18"]))
    assert replace_adaptive_pools(model) == 4  # the PPM's 1, 2, 3 and 6 bins
    assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in model.modules())


def test_parity_is_order_free_and_measures_masks() -> None:
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2], masks[1, 2:], masks[2, :, :2] = True, True, True
    ref = {"scores": torch.tensor([0.9, 0.5, 0.2]), "labels": torch.tensor([1, 2, 1]), "masks": masks}
    perm = torch.tensor([2, 0, 1])
    swapped = {k: v[perm] for k, v in ref.items()}
    assert parity([ref], [swapped]) == {"score_dev": 0.0, "label_agree": 1.0, "mask_iou_mean": 1.0,
                                        "mask_iou_min": 1.0}
    shifted = {**ref, "scores": ref["scores"] + torch.tensor([0.0, 0.01, 0.0]), "masks": masks.clone()}
    shifted["masks"][0, 1] = False  # mask 0 keeps 4 of its 8 pixels
    dev = parity([ref], [shifted])
    assert dev["score_dev"] == pytest.approx(0.01) and dev["mask_iou_min"] == pytest.approx(0.5)
    assert mask_iou(masks[:1], masks[1:2]).item() == 0.0


def test_compare_runs_variants_and_reports_errors(weights: Path) -> None:
    samples = [(im, im.shape[-2:]) for im in _images()]
    variants = [Variant("eager"), Variant("eager", channels_last=True), Variant("cudagraph")]
    rows = compare(lambda v: build_backend(v.backend, CFG, weights, device="cpu", dtype=v.dtype,
                                           channels_last=v.channels_last), variants, samples, rounds=2)
    first, nhwc, cuda = (r.summary(len(samples)) for r in rows)
    assert first["score_dev"] == 0.0 and first["mask_iou_min"] == 1.0 and first["fps"] > 0
    assert len(rows[1].pass_seconds) == 2 and nhwc["mask_iou_mean"] > 0.999
    assert "needs a CUDA device" in cuda["error"] and "fps" not in cuda
    names = [v.backend for v in default_variants(torch.device("cpu"), ["onnxruntime"])]
    assert names == ["eager", "onnxruntime"]


@pytest.mark.slow  # torch.compile of even the tiny model takes about a minute on two loaded cores
def test_compiled_model_gives_the_same_outputs(weights: Path) -> None:
    eager = build_backend("eager", CFG, weights, device="cpu")
    compiled = build_backend("compile", CFG, weights, device="cpu")
    images = _images()[:1]
    _assert_equal_results(compiled(images, SIZES[:1]), eager(images, SIZES[:1]), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name,dtype", [("cudagraph", "float32"), ("eager", "float16"), ("cudagraph", "float16")])
def test_cuda_backends_match_eager(weights: Path, name: str, dtype: str) -> None:
    reference = build_backend("eager", CFG, weights, device="cuda")(_images(), SIZES)
    backend = build_backend(name, CFG, weights, device="cuda", dtype=dtype)
    for _ in range(2):  # the second call replays the captured graphs
        dev = parity(reference, backend(_images(), SIZES))
    limit = 1e-5 if dtype == "float32" else 0.05
    assert dev["score_dev"] < limit and dev["mask_iou_mean"] > (0.999 if dtype == "float32" else 0.9)
