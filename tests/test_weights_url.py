"""Weights by URL (``fastinst.weights_cache``) against a local HTTP server on 127.0.0.1: one download
reused from the cache, resumed or restarted transfers, checksums, and one-line failures."""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from test_predict import CONFIG, SETS, TINY

from fastinst import build_model, cli, load_config
from fastinst.checkpoint import CheckpointError, load_weights, read_checkpoint
from fastinst.data.coco_classes import COCO_CLASSES
from fastinst.data.synthetic import make_synthetic
from fastinst.weights_cache import ATTEMPTS, DownloadError, cache_dir, cache_name, fetch


class _Server(ThreadingHTTPServer):
    """Serves ``files``; answers Range requests unless the path is in ``no_range``; cuts the body of a
    path's next ``cut[path]`` responses to half (Content-Length still announcing all of it)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.no_range: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        srv, requested = self.server, self.headers.get("Range")
        srv.requests.append((self.path, requested))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = int(requested.removeprefix("bytes=").removesuffix("-")) if requested and \
            self.path not in srv.no_range else 0
        if start >= len(data) > 0:
            self.send_error(416)
            return
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut.get(self.path, 0) > 0:
            srv.cut[self.path] -= 1
            body = body[:len(body) // 2]
        self.wfile.write(body)  # HTTP/1.0: the connection closes after the response

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FASTINST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


def _checkpoint(model: torch.nn.Module, **extra: object) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), **extra}, buffer)
    return buffer.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_first_download_is_cached_and_reused(server: _Server, cache: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    server.files["/v1/model_final.pth"] = _checkpoint(model, iteration=7)
    url = server.url("/v1/model_final.pth")
    for _ in range(2):
        other = torch.nn.Linear(3, 2)
        ckpt = load_weights(other, url)
        assert torch.equal(other.weight, model.weight)
    assert server.requests == [("/v1/model_final.pth", None)]
    assert ckpt.path == cache / cache_name(url) and ckpt.path.name.startswith("model_final.")
    assert ckpt.path.suffix == ".pth" and cache_dir() == cache
    assert sorted(p.name for p in cache.iterdir()) == [ckpt.path.name]  # no partial left
    # the same file name under another URL is another cache entry
    assert cache_name(server.url("/v2/model_final.pth")) != ckpt.path.name


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "restarted"])
def test_a_broken_transfer_is_resumed_or_restarted(server: _Server, ranges: bool) -> None:
    data = bytes(range(256)) * 1000
    server.files["/w.pth"], server.cut["/w.pth"] = data, 1
    if not ranges:
        server.no_range.add("/w.pth")
    path = fetch(server.url(f"/w.pth#sha256={_sha(data)}"), progress=False)
    assert path.read_bytes() == data
    assert server.requests == [("/w.pth", None), ("/w.pth", f"bytes={len(data) // 2}-")]


def test_a_partial_file_of_an_earlier_run_is_resumed_and_a_stale_one_replaced(server: _Server, cache: Path) -> None:
    data = b"0123456789" * 5000
    server.files["/a.pth"] = server.files["/b.pth"] = data
    cache.mkdir(parents=True)
    (cache / f"{cache_name(server.url('/a.pth'))}.partial").write_bytes(data[:1234])
    (cache / f"{cache_name(server.url('/b.pth'))}.partial").write_bytes(data + b"junk")
    assert fetch(server.url("/a.pth"), progress=False).read_bytes() == data
    assert fetch(server.url("/b.pth"), progress=False).read_bytes() == data
    assert server.requests == [("/a.pth", "bytes=1234-"), ("/b.pth", f"bytes={len(data) + 4}-"), ("/b.pth", None)]
    assert not list(cache.glob("*.partial"))


def test_a_wrong_checksum_is_one_line_and_leaves_nothing(server: _Server, cache: Path) -> None:
    data, other = b"the published weights" * 100, b"something else"
    server.files["/m.pth"] = data
    url = server.url("/m.pth")
    with pytest.raises(DownloadError) as info:
        fetch(f"{url}#sha256={_sha(other)}", progress=False)
    assert str(info.value) == f"{url}: sha256 mismatch: expected {_sha(other)}, got {_sha(data)}"
    assert not list(cache.iterdir())
    with pytest.raises(CheckpointError, match=rf"^{url}: sha256 mismatch: expected {_sha(other)[:10]}, got"):
        read_checkpoint(url, sha256=_sha(other)[:10])  # the Python API's argument; a prefix is enough
    assert not list(cache.iterdir())
    with pytest.raises(DownloadError, match="only URL fragment understood is #sha256="):
        fetch(f"{url}#md5=0123", progress=False)


def test_a_hash_prefix_in_the_file_name_is_checked(server: _Server) -> None:
    data = b"resnet weights" * 100
    good, bad, dated = f"/resnet-{_sha(data)[:8]}.pth", "/resnet-deadbeef.pth", "/model-20231231.pth"
    for path in (good, bad, dated):
        server.files[path] = data
    assert fetch(server.url(good), progress=False).read_bytes() == data
    assert fetch(server.url(dated), progress=False).read_bytes() == data  # all decimal: a date, not a hash
    with pytest.raises(DownloadError, match=r"resnet-deadbeef.pth: sha256 mismatch: expected deadbeef, got"):
        fetch(server.url(bad), progress=False)


def test_a_cached_file_failing_a_newly_given_checksum_is_downloaded_again(server: _Server) -> None:
    server.files["/c.pth"] = b"old release"
    fetch(server.url("/c.pth"), progress=False)
    server.files["/c.pth"] = b"new release"
    path = fetch(server.url(f"/c.pth#sha256={_sha(b'new release')}"), progress=False)
    assert path.read_bytes() == b"new release" and len(server.requests) == 2


@pytest.mark.parametrize("where", ["closed port", "missing file", "invalid port"])
def test_an_unreachable_url_or_http_error_is_one_line(server: _Server, cache: Path, where: str) -> None:
    url, error = {"closed port": (f"http://127.0.0.1:{_closed_port()}/w.pth", "cannot download ("),
                  "missing file": (server.url("/nothing.pth"), "download failed: HTTP 404 "),
                  "invalid port": ("http://127.0.0.1:port/w.pth", "not a valid URL (")}[where]
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(url)
    message = str(info.value)
    assert message.startswith(f"{url}: {error}") and "\n" not in message
    assert not cache.exists() or not list(cache.iterdir())


def test_a_truncated_download_fails_after_retrying_with_no_complete_looking_file(server: _Server,
                                                                                 cache: Path) -> None:
    data = b"x" * 10_000
    server.files["/t.pth"], server.cut["/t.pth"] = data, 100
    server.no_range.add("/t.pth")
    url = server.url("/t.pth")
    with pytest.raises(DownloadError) as info:
        fetch(url, progress=False)
    assert str(info.value) == f"{url}: download incomplete after {ATTEMPTS} attempts (5000 of 10000 bytes)"
    assert len(server.requests) == ATTEMPTS
    assert [p.name for p in cache.iterdir()] == [f"{cache_name(url)}.partial"]  # kept, to be resumed


def test_predict_with_weights_by_url_end_to_end(server: _Server, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    make_synthetic(tmp_path / "synth", num_train=0, num_val=1, size=96, seed=2, workers=1)
    torch.manual_seed(0)
    categories = [{"id": k + 1, "name": f"shape {k}"} for k in range(4)]
    data = _checkpoint(build_model(load_config(CONFIG, TINY)), categories=categories)
    server.files["/releases/tiny.pth"] = data
    image, out = str(next((tmp_path / "synth" / "val").glob("*.png"))), tmp_path / "out"
    common = ["predict", str(CONFIG), *SETS, image, "--device", "cpu", "--no-progress", "--out", str(out)]
    assert cli.main([*common, "--weights", server.url(f"/releases/tiny.pth#sha256={_sha(data)}")]) == 0
    assert json.loads((out / "images.json").read_text())["categories"] == categories
    assert server.requests == [("/releases/tiny.pth", None)]
    capsys.readouterr()
    missing = f"http://127.0.0.1:{_closed_port()}/tiny.pth"
    assert cli.main([*common, "--weights", missing]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fastinst predict: {missing}: cannot download (") and err.count("\n") == 1


def _detectron2_layout(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Our backbone keys in detectron2's names (the inverse of ``fastinst.convert``'s backbone rules), as
    the numpy arrays detectron2's model-zoo pickles hold."""
    rules = [(r"^backbone\.bn1\.", "backbone.stem.conv1.norm."), (r"^backbone\.conv1\.", "backbone.stem.conv1."),
             (r"^backbone\.layer(\d)\.(\d+)\.downsample\.0\.", "backbone.res{s}.{1}.shortcut."),
             (r"^backbone\.layer(\d)\.(\d+)\.downsample\.1\.", "backbone.res{s}.{1}.shortcut.norm."),
             (r"^backbone\.layer(\d)\.(\d+)\.bn(\d)\.", "backbone.res{s}.{1}.conv{2}.norm."),
             (r"^backbone\.layer(\d)\.(\d+)\.conv(\d)\.", "backbone.res{s}.{1}.conv{2}.")]
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            if (m := re.match(pattern, key)) is not None:
                key = repl.format(*m.groups(), s=int(m.group(1)) + 1 if m.groups() else 0) + key[m.end():]
                break
        out[key] = value.numpy()
    return out


def _official_release(server: _Server, reference: dict) -> str:
    """The official D3 R50 head weights (``reference``: ../shared/reference) with a random backbone, in a file
    written the way detectron2 writes checkpoints (official keys, numpy arrays), served on loopback: its URL."""
    head = reference["state_dict"]
    torch.manual_seed(0)
    backbone = {k: v for k, v in build_model(load_config("fastinst_R50_ppm-fpn_x3_640")).state_dict().items()
                if k.startswith("backbone.")}
    model = {**_detectron2_layout(backbone), **{k: v.float().numpy() for k, v in head.items()}}
    buffer = io.BytesIO()
    torch.save({"model": model, "__author__": "Detectron2 Model Zoo", "iteration": 0}, buffer)
    server.files["/fastinst_R50_ppm-fpn_x3_640.pth"] = buffer.getvalue()
    return server.url("/fastinst_R50_ppm-fpn_x3_640.pth")


def _predict(model: str, tmp_path: Path, out: Path, *extra: str) -> tuple[list[dict], list[dict]]:
    """``fastinst predict MODEL`` on one synthetic image: (images.json categories, results.json)."""
    make_synthetic(tmp_path / "synth", num_train=0, num_val=1, size=160, seed=2, workers=1)
    image = next((tmp_path / "synth" / "val").glob("*.png"))
    assert cli.main(["predict", model, str(image), *extra, "--device", "cpu", "--no-progress", "--score", "0",
                     "--out", str(out)]) == 0
    assert (out / f"{image.stem}.png").is_file()
    return json.loads((out / "images.json").read_text())["categories"], json.loads((out / "results.json").read_text())


def test_model_zoo_name_with_the_official_head_by_url_predicts_coco_classes(server: _Server, tmp_path: Path,
                                                                           reference: dict) -> None:
    """``fastinst predict fastinst_R50_ppm-fpn_x3_640 --weights http://…`` (``_official_release``) names
    COCO's classes and ids in its overlays, images.json and results.json."""
    categories, results = _predict("fastinst_R50_ppm-fpn_x3_640", tmp_path, tmp_path / "out", "--weights",
                                   _official_release(server, reference))
    assert categories == [{"id": i, "name": n} for i, n in COCO_CLASSES]
    assert len(results) == 100 and {r["category_id"] for r in results} <= {i for i, _n in COCO_CLASSES}


@pytest.mark.slow
def test_model_zoo_release_exported_to_onnx_predicts_the_same_classes(server: _Server, tmp_path: Path,
                                                                     reference: dict) -> None:
    """The same release exported to ONNX (``fastinst export NAME --weights URL``) and run through ONNX
    Runtime: the same COCO categories, and the same top detections' classes as the checkpoint."""
    url = _official_release(server, reference)
    eager = _predict("fastinst_R50_ppm-fpn_x3_640", tmp_path, tmp_path / "eager", "--weights", url)
    onnx_path = tmp_path / "release.onnx"
    assert cli.main(["export", "fastinst_R50_ppm-fpn_x3_640", "--weights", url, "--format", "onnx",
                     "--out", str(onnx_path)]) == 0
    categories, results = _predict(str(onnx_path), tmp_path, tmp_path / "onnx")
    assert categories == eager[0]
    top = [(r["category_id"], round(r["score"], 3)) for r in sorted(results, key=lambda r: -r["score"])[:5]]
    assert top == [(r["category_id"], round(r["score"], 3)) for r in sorted(eager[1], key=lambda r: -r["score"])[:5]]
