"""Official checkpoints as published: detectron2 writes ``torch.save({"model": ..., "__author__": ...,
"iteration": ...})`` and its values may be numpy arrays. They load with ``weights_only=True`` (numpy's
array reconstructor and numeric dtypes allowed, nothing else) and become tensors."""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fastinst.checkpoint import CheckpointError, read_checkpoint
from fastinst.convert import convert_official_state_dict


def _save_detectron2_style(path: Path, model: dict[str, torch.Tensor | np.ndarray]) -> None:
    torch.save({"model": model, "__author__": "FastInst", "iteration": 269999}, path)


def _as_written_by_numpy1(path: Path) -> None:
    """Rewrite the checkpoint's pickle as numpy 1 names the array reconstructor (``numpy.core``)."""
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w") as dst:
        for info, data in entries:
            if info.filename.endswith("/data.pkl"):
                assert b"cnumpy._core.multiarray\n" in data
                data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
            dst.writestr(info, data)


def test_official_d3_head_weights_saved_as_detectron2_does_load_with_numpy_arrays(reference: dict,
                                                                                  tmp_path: Path) -> None:
    state_dict = reference["state_dict"]
    path = tmp_path / "model_final.pth"
    # every other value a numpy array, as detectron2's pickles may hold
    _save_detectron2_style(path, {k: v.numpy() if i % 2 else v for i, (k, v) in enumerate(state_dict.items())})
    assert {"numpy.ndarray", "numpy.dtype"} <= set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    loaded = read_checkpoint(path).state_dict
    expected = convert_official_state_dict(state_dict)
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key


def test_numpy1_pickles_and_every_numeric_dtype_load(tmp_path: Path) -> None:
    arrays = {f"w.{np.dtype(t).name}": np.arange(6).reshape(2, 3).astype(t)
              for t in (np.float16, np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_)}
    path = tmp_path / "numpy1.pth"
    _save_detectron2_style(path, arrays)
    _as_written_by_numpy1(path)
    loaded = read_checkpoint(path).state_dict
    for key, array in arrays.items():
        assert torch.equal(loaded[key], torch.from_numpy(array)), key


@pytest.mark.parametrize("extra", [argparse.Namespace(lr=0.1), np.array([1, "a"], dtype=object)],
                         ids=["other object", "object array"])
def test_other_objects_are_still_refused_in_one_line(tmp_path: Path, extra: object) -> None:
    path = tmp_path / "unsafe.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": extra}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert str(info.value) == (f"{path}: not a readable PyTorch checkpoint (a pickle holding objects other than "
                               "tensors, numpy arrays and plain values, which are not loaded for safety)")
