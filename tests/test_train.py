"""Training engine, bench and their CLIs on a tiny synthetic dataset (CPU; GPU-marked tests need CUDA)."""

from __future__ import annotations

import json
import os
import socket
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from fastinst import build_model
from fastinst.cli import main
from fastinst.config import Config, config_from_dict, load_config
from fastinst.data.spec import DataSpec
from fastinst.data.synthetic import make_synthetic
from fastinst.deploy.bench import bench
from fastinst.engine import train as train_module
from fastinst.engine.records import EvalRecord, RecordError, StepRecord, parse_record
from fastinst.engine.solver import build_optimizer, build_scheduler, lr_factor
from fastinst.engine.train import NonFiniteLossError, autocast_dtype, train

TINY = {
    "model.num_classes": 4, "model.hidden_dim": 64, "model.backbone.name": "resnet18",
    "model.decoder.num_layers": 1, "model.decoder.dim_feedforward": 128, "model.num_ia_queries": 8,
    "model.num_aux_queries": 4, "model.test.detections_per_image": 8, "loss.num_points": 256,
    "input.min_size_train": [96], "input.max_size_train": 128, "input.crop_resize_choices": [112],
    "input.crop_size": [64, 96], "input.min_size_test": 96, "input.max_size_test": 128,
    "solver.batch_size": 2, "solver.max_iter": 4, "solver.log_period": 1, "solver.checkpoint_period": 2,
    "solver.eval_period": 0, "solver.warmup_iters": 2, "solver.warmup_factor": 0.5, "solver.steps": [0.75],
    "data.num_workers": 0,
}


def tiny_config(**overrides: object) -> Config:
    return config_from_dict({**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}})


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Tiny tensors: one thread is as fast, and far faster on a shared, loaded CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> DataSpec:
    root = tmp_path_factory.mktemp("synth")
    make_synthetic(root, num_train=12, num_val=3, size=96, seed=1, workers=1)
    return DataSpec.from_folder(root)


@pytest.fixture
def deterministic() -> None:
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def final_state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model_final.pth", map_location="cpu", weights_only=True)["model"]


# --------------------------------------------------------------------------- optimizer and schedule


def test_param_groups_backbone_lr_and_no_decay_on_norms_and_embeddings() -> None:
    cfg = tiny_config()
    model = build_model(cfg)
    groups = {g["name"]: g for g in build_optimizer(cfg, model).param_groups}
    assert len(groups) == sum(1 for p in model.parameters() if p.requires_grad)
    modules = dict(model.named_modules())
    kinds = set()
    for name, g in groups.items():
        module = modules[name.rpartition(".")[0]]
        lr = cfg.solver.base_lr * (cfg.solver.backbone_multiplier if name.startswith("backbone.") else 1.0)
        assert g["lr"] == pytest.approx(lr), name
        if isinstance(module, (nn.GroupNorm, nn.LayerNorm, nn.Embedding)):
            assert g["weight_decay"] == 0.0, name
            kinds.add(type(module).__name__)
        else:
            assert g["weight_decay"] == cfg.solver.weight_decay, name
    assert kinds == {"GroupNorm", "LayerNorm", "Embedding"}
    assert any(n.startswith("backbone.") for n in groups) and cfg.solver.backbone_multiplier == 0.1


def test_lr_schedule_warmup_and_steps() -> None:
    cfg = config_from_dict({"solver.max_iter": 100, "solver.steps": [0.5, 0.9], "solver.warmup_iters": 10,
                            "solver.warmup_factor": 0.1, "solver.base_lr": 1.0})
    expected = {0: 0.1, 5: 0.55, 10: 1.0, 49: 1.0, 50: 0.1, 89: 0.1, 90: 0.01, 99: 0.01}
    for it, factor in expected.items():
        assert lr_factor(cfg, it) == pytest.approx(factor), it
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(cfg, optimizer)
    seen = []
    for _ in range(100):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert [seen[i] for i in expected] == pytest.approx(list(expected.values()))
    assert lr_factor(load_config(None), 0) == 1.0  # official: warmup factor 1.0, no warmup in effect


def test_autocast_dtype_per_device(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(tiny_config(), cuda) == torch.float16
    assert autocast_dtype(tiny_config(), cpu) is None  # fp16 autocast is CUDA-only
    assert autocast_dtype(tiny_config(solver__amp=False), cuda) is None
    bf16 = tiny_config(solver__amp_dtype="bfloat16")
    assert autocast_dtype(bf16, cuda) == torch.bfloat16
    monkeypatch.setattr(train_module, "cpu_has_bf16", lambda: True)
    assert autocast_dtype(bf16, cpu) == torch.bfloat16
    monkeypatch.setattr(train_module, "cpu_has_bf16", lambda: False)
    assert autocast_dtype(bf16, cpu) is None
    assert "no native bf16" in caplog.text


def test_bfloat16_autocast_training_on_cpu(synth: DataSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_module, "cpu_has_bf16", lambda: True)  # emulated where not native: still correct
    seen: list[torch.dtype] = []
    real_step = train_module.train_step

    def spy(model: nn.Module, *args: object, **kwargs: object) -> object:
        handle = model.backbone.conv1.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        try:
            return real_step(model, *args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(train_module, "train_step", spy)
    result = train(tiny_config(solver__max_iter=2, solver__amp_dtype="bfloat16"), synth, tmp_path, progress=False)
    assert seen == [torch.bfloat16, torch.bfloat16]
    state = final_state(tmp_path)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert 0.0 <= result["AP"] <= 1.0


# --------------------------------------------------------------------------- records


def test_step_record_from_means_sums_the_terms_and_round_trips() -> None:
    record = StepRecord.from_means(5, {"time": 0.2, "data_time": 0.1, "lr": 1e-4, "loss_cls": 1.5,
                                       "loss_mask": 2.0})
    assert record.total_loss == 3.5 and record.losses == {"loss_cls": 1.5, "loss_mask": 2.0}
    assert record.to_dict() == {"type": "train", "iteration": 5, "time": 0.2, "data_time": 0.1, "lr": 1e-4,
                                "total_loss": 3.5, "loss_cls": 1.5, "loss_mask": 2.0}
    assert parse_record(json.loads(json.dumps(record.to_dict()))) == record
    assert parse_record({"type": "eval", "iteration": 5, "AP": 0.5}) == EvalRecord(5, {"AP": 0.5})


@pytest.mark.parametrize(("change", "message"), [
    ({"lr": "high"}, "'lr' must be a number, got 'high'"),
    ({"iteration": 1.5}, "'iteration' must be a whole number"),
    ({"loss": 3.5}, "unknown key 'loss' \\(loss terms are named loss_\\*\\)"),
    ({"total_loss": 4.0}, "'total_loss' 4.0 is not the sum of the loss terms 3.5"),
    ({"type": "step"}, "'type' must be one of \\['train', 'eval'\\]"),
])
def test_off_schema_records_are_refused(change: dict, message: str) -> None:
    good = {"type": "train", "iteration": 1, "time": 0.1, "data_time": 0.0, "lr": 1e-4, "total_loss": 3.5,
            "loss_cls": 1.5, "loss_mask": 2.0}
    with pytest.raises(RecordError, match=message):
        parse_record({**good, **change})


# --------------------------------------------------------------------------- the loop


def test_train_writes_records_checkpoints_and_eval(synth: DataSpec, tmp_path: Path) -> None:
    received: list[dict] = []
    result = train(tiny_config(solver__max_iter=3), synth, tmp_path, on_record=received.append, progress=False)
    assert result["iterations"] == 3 and result["finished"]
    assert Path(result["checkpoint"]) == tmp_path / "model_final.pth"
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert (tmp_path / "model_0000002.pth").is_file()
    records = read_records(tmp_path / "metrics.jsonl")
    assert records == json.loads(json.dumps(received))
    assert [parse_record(r).to_dict() for r in records] == records  # every line follows the schema
    steps = [r for r in records if r["type"] == "train"]
    assert [r["iteration"] for r in steps] == [1, 2, 3]
    for r in steps:
        assert {"loss_cls", "loss_mask", "loss_dice", "loss_ia", "total_loss", "lr", "time", "data_time"} <= set(r)
        assert r["total_loss"] == pytest.approx(sum(v for k, v in r.items() if k.startswith("loss_")))
    # warmup from 0.5 over 2 iterations, then x0.1 at int(0.75 * 3) = 2: the lr each step used
    assert [r["lr"] for r in steps] == pytest.approx([5e-5, 7.5e-5, 1e-5])
    evals = [r for r in records if r["type"] == "eval"]
    assert len(evals) == 1 and evals[0]["iteration"] == 3 and 0.0 <= evals[0]["AP"] <= 1.0
    assert result["AP"] == evals[0]["AP"]
    assert load_config(tmp_path / "config.yaml").hash() == tiny_config(solver__max_iter=3).hash()


def test_resume_gives_the_same_parameters(synth: DataSpec, tmp_path: Path, deterministic: None) -> None:
    cfg = tiny_config(solver__eval_period=2)
    train(cfg, synth, tmp_path / "straight", progress=False)
    stopped = train(cfg, synth, tmp_path / "resumed", max_iter=2, progress=False)
    assert stopped["iterations"] == 2 and not stopped["finished"]
    assert stopped["checkpoint"].endswith("model_0000002.pth")
    again = train(cfg, synth, tmp_path / "resumed", progress=False)
    assert again["iterations"] == 4 and again["finished"]
    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    initial = build_model(cfg).state_dict()
    assert not all(torch.equal(a[k], initial[k]) for k in a)  # training did change the weights
    resumed_iters = [r["iteration"] for r in read_records(tmp_path / "resumed" / "metrics.jsonl")
                     if r["type"] == "train"]
    assert resumed_iters == [1, 2, 3, 4]


def test_non_finite_loss_stops_with_iteration_and_term(synth: DataSpec, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from fastinst.modeling.criterion import SetCriterion

    calls = {"n": 0}
    real_forward = SetCriterion.forward

    def dice_nan_on_second_step(self: SetCriterion, outputs: dict, targets: list[dict]) -> dict:
        calls["n"] += 1
        losses = real_forward(self, outputs, targets)
        if calls["n"] == 2:
            losses["loss_dice"] = losses["loss_dice"] * float("nan")
        return losses

    monkeypatch.setattr(SetCriterion, "forward", dice_nan_on_second_step)
    with pytest.raises(NonFiniteLossError, match=r"iteration 2: loss_dice=nan") as info:
        train(tiny_config(), synth, tmp_path, progress=False)
    assert info.value.iteration == 2 and list(info.value.terms) == ["loss_dice"]
    assert not (tmp_path / "model_final.pth").exists()


def test_cli_train_and_bench(synth: DataSpec, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config().to_yaml())
    run = tmp_path / "run"
    args = ["train", str(config), "--train-json", str(synth.train_json), "--train-images", str(synth.train_images),
            "--out", str(run), "--max-iter", "1", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["iterations"] == 1 and not result["finished"] and "AP" not in result
    assert main(["train", str(config), "--out", str(run)]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["bench", str(config), "--weights", result["checkpoint"], "--val-json", str(synth.val_json),
                 "--val-images", str(synth.val_images), "--images", "2", "--warmup", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["num_images"] == 2 and out["fps"] > 0


@pytest.mark.parametrize("command", ["eval", "bench", "train"])
def test_cli_names_a_non_checkpoint_weights_file_in_one_line(synth: DataSpec, tmp_path: Path, command: str,
                                                             capsys: pytest.CaptureFixture) -> None:
    """``eval``/``bench --weights`` and ``train``'s resume: exit 2, one line naming the file, no traceback."""
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config().to_yaml())
    bad = tmp_path / "run" / "notackpt.pth"
    bad.parent.mkdir()
    bad.write_bytes(b"not a checkpoint at all")
    if command == "train":
        (bad.parent / "last_checkpoint").write_text(bad.name + "\n")
        args = ["train", str(config), "--train-json", str(synth.train_json), "--train-images",
                str(synth.train_images), "--out", str(bad.parent)]
    else:
        args = [command, str(config), "--weights", str(bad), "--val-json", str(synth.val_json), "--val-images",
                str(synth.val_images), "--images", "1", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}: not a readable PyTorch checkpoint" in err
    assert "weights_only" not in err and "Traceback" not in err


# --------------------------------------------------------------------------- distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, data: dict, out: str, states: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = train(tiny_config(solver__max_iter=2), DataSpec(**data), out, progress=False, device="cpu")
    model = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)["model"] if rank == 0 else None
    torch.save({"result": result, "final": model, "rank": rank}, Path(states) / f"rank{rank}.pt")


def test_ddp_two_gloo_processes(synth: DataSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, states = tmp_path / "run", tmp_path / "states"
    states.mkdir()
    # Spawned children re-run the parent's __main__ file; after a Streamlit AppTest in the same session
    # that is dashboard/app.py, so give them a bare __main__ instead.
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    mp.spawn(_ddp_worker, args=(2, _free_port(), synth.to_dict(), str(out), str(states)), nprocs=2, join=True)
    r0, r1 = (torch.load(states / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["result"]["world_size"] == 2 and r0["result"]["iterations"] == 2
    records = [r for r in read_records(out / "metrics.jsonl") if r["type"] == "train"]
    assert [r["iteration"] for r in records] == [1, 2]  # written once, by rank 0
    checkpoint = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert len(checkpoint["rng"]) == 2  # every rank's RNG state
    initial = build_model(tiny_config()).state_dict()
    assert not all(torch.equal(v, initial[k]) for k, v in checkpoint["model"].items())


# --------------------------------------------------------------------------- slow / GPU


@pytest.mark.slow
def test_short_cpu_run_learns(tmp_path: Path) -> None:
    """The CPU preset, 300 iterations on a small synthetic set: the loss falls, AP leaves zero."""
    make_synthetic(tmp_path / "data", num_train=300, num_val=40, size=160, seed=3, workers=1)
    data = DataSpec.from_folder(tmp_path / "data")
    cfg = load_config(Path(__file__).parents[1] / "experiments" / "configs" / "cpu_tiny.yaml",
                      ["solver.max_iter=300", "solver.eval_period=0", "solver.checkpoint_period=0",
                       "data.num_workers=0"])
    result = train(cfg, data, tmp_path / "run", progress=False)
    losses = [r["total_loss"] for r in read_records(tmp_path / "run" / "metrics.jsonl") if r["type"] == "train"]
    assert sum(losses[-3:]) < 0.75 * sum(losses[:3])
    assert result["AP"] > 0.01 and result["AP50"] > 0.03


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_gpu_amp_training_steps_and_eval(synth: DataSpec, tmp_path: Path) -> None:
    cfg = tiny_config(solver__max_iter=3, solver__amp=True)
    result = train(cfg, synth, tmp_path, device="cuda", progress=False)
    assert result["iterations"] == 3 and 0.0 <= result["AP"] <= 1.0
    checkpoint = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    assert checkpoint["scaler"]["scale"] > 0  # GradScaler was active
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
    from fastinst.engine.evaluate import evaluate

    metrics = evaluate(cfg, tmp_path / "model_final.pth", synth, device="cuda", progress=False)
    assert metrics["AP"] == pytest.approx(result["AP"], abs=0.02)


@pytest.mark.gpu
@needs_cuda
def test_gpu_bench_float16(synth: DataSpec) -> None:
    result = bench(tiny_config(), None, synth, images=3, warmup=1, device="cuda", dtype="float16")
    assert result["device_type"] == "cuda" and result["dtype"] == "float16" and result["fps"] > 0
    assert result["device"] == torch.cuda.get_device_name()
