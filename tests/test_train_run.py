"""sgc-train's run safety: data set and recipe, argument checks, non-finite steps, resume rules, writable
outputs, mid-epoch checkpoints resumed exactly, mixed precision, TensorBoard."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sgc_fast.train import cli, loop
from sgc_fast.train.checkpoint import load_checkpoint
from sgc_fast.train.cli import main

TINY = ["--dataset", "synthetic", "--image-size", "48", "--limit", "48", "-b", "16", "--lr", "0.002",
        "-j", "0", "--seed", "0", "--no-progress", "--method", "sgc", "--saliency", "ground-truth"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(tmp, *extra, base=TINY):
    return main([*base, "--save_dir", str(tmp / "ckpt"), "--log_dir", str(tmp / "logs"), *extra])


def _log(tmp, kind):
    with open(tmp / "logs" / "train.jsonl") as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def _weights(path):
    return load_checkpoint(path)["model"]


# ------------------------------------------------------------------------------------------- data set, recipe

def test_data_path_with_synthetic_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="--dataset synthetic, which never reads it"):
        _run(tmp_path, "/data/cub")


def test_first_line_names_the_data_set(tmp_path, capsys):
    _run(tmp_path, "--epochs", "1")
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("sgc-train: data set synthetic shapes (bias 0.0, seed 0)"), first
    assert "sgc on 1 process(es)" in first
    start = _log(tmp_path, "start")[0]
    assert start["data"].startswith("synthetic") and start["world_size"] == 1


def test_num_classes_and_the_narrow_resnet(tmp_path):
    _run(tmp_path, "--epochs", "1", "--num-classes", "3", "-a", "resnet18_w32")
    ckpt = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert ckpt["classes"] == ["circle", "square", "triangle"] and ckpt["arch"] == "resnet18_w32"
    assert ckpt["model"]["conv1.weight"].shape[0] == 32 and ckpt["model"]["fc.weight"].shape == (3, 256)
    with pytest.raises(SystemExit, match="--num-classes 4 \\(checkpoint: 3\\)"):
        _run(tmp_path, "--num-classes", "4", "--resume", str(tmp_path / "ckpt" / "last.pt"), "--epochs", "2")
    with pytest.raises(SystemExit, match="--num-classes: only the synthetic set"):
        main(["/data/cub", "--dataset", "cub", "--num-classes", "3"])
    with pytest.raises(SystemExit, match="no ImageNet weights for resnet18_w32"):
        _run(tmp_path / "p", "--epochs", "1", "-a", "resnet18_w32", "--pretrained")


def test_recipe_fills_what_the_command_line_leaves_out():
    argv = ["--recipe", "sgc", "-b", "64"]
    args = cli.build_parser().parse_args(argv)
    cli._apply_recipe(args, cli.given_args(argv))
    assert (args.arch, args.epochs, args.lr, args.lambda_, args.temperature, args.method) == (
        "resnet50", 200, 0.01, 0.5, 0.5, "sgc")
    assert args.batch_size == 64  # given: kept
    args = cli.build_parser().parse_args(["--recipe", "cgc"])
    cli._apply_recipe(args, cli.given_args(["--recipe", "cgc"]))
    assert (args.method, args.epochs, args.batch_size, args.lr) == ("cgc", 90, 256, 0.1)


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs: expected >= 1"),
    (["--lambda", "-5"], "--lambda: expected a finite number >= 0"),
    (["--lambda", "nan"], "--lambda"),
    (["--limit", "0"], "--limit: expected >= 1"),
    (["-b", "1"], "-b: expected >= 2"),
    (["--lr", "0"], "--lr"),
    (["-t", "0"], "-t"),
    (["--image-size", "16"], "--image-size: expected >= 32"),
    (["--negatives-per-chunk", "1"], "--negatives-per-chunk"),
    (["--negatives", "global", "--negatives-per-chunk", "4"], "per-chunk negatives are local"),
    (["-e"], "-e: evaluation needs a checkpoint"),
    (["--bias", "2"], "--bias"),
    (["--num-classes", "9"], "--num-classes: expected 2..8"),
    (["--num-classes", "1"], "--num-classes: expected 2..8"),
])
def test_nonsense_arguments_are_refused(tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message.replace("-", r"\-").replace("[", r"\[")):
        _run(tmp_path, *flags)
    assert not (tmp_path / "ckpt").exists()  # refused before any work


def test_unwritable_save_dir_fails_before_training(tmp_path, monkeypatch):
    (tmp_path / "ckpt").write_text("a file where the folder should be")
    calls = []
    monkeypatch.setattr(cli, "train_one_epoch", lambda *a, **k: calls.append(1))
    with pytest.raises(SystemExit, match="--save_dir: .* is not a writable folder"):
        _run(tmp_path)
    assert calls == []


# ------------------------------------------------------------------------------------------- non-finite steps

def _poison(monkeypatch, bad_steps, value):
    """train_step returns a ``value`` loss (NaN or inf) on the given global step numbers."""
    real, counter = loop.train_step, {"n": 0}

    def step(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        k = counter["n"]
        counter["n"] += 1
        if k in bad_steps:
            loss = loss * value
            parts = parts.clone()
            parts[0] = parts[0] * value
        return loss, parts

    monkeypatch.setattr(loop, "train_step", step)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_step_is_skipped_and_counted(tmp_path, monkeypatch, value):
    _poison(monkeypatch, {1}, value)
    result = _run(tmp_path, "--epochs", "1")
    assert result["skipped_steps"] == 1
    skips = _log(tmp_path, "skip")
    assert [r["step"] for r in skips] == [1]
    applied = [r["applied"] for r in _log(tmp_path, "train")]
    assert applied == [True, False, True]
    for w in _weights(tmp_path / "ckpt" / "last.pt").values():
        assert torch.isfinite(w.float()).all()
    assert math.isfinite(_log(tmp_path, "val")[0]["train_loss"])


def test_too_many_bad_steps_stop_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch):
    _run(tmp_path, "--epochs", "1")
    good = _weights(tmp_path / "ckpt" / "last.pt")
    _poison(monkeypatch, {0, 1, 2}, float("nan"))
    with pytest.raises(loop.NonFiniteLossError, match="2 steps in a row"):
        _run(tmp_path, "--epochs", "2", "--max-bad-steps", "2", "--resume", str(tmp_path / "ckpt" / "last.pt"))
    after = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert after["epoch"] == 1
    assert all(torch.equal(good[k], after["model"][k]) for k in good)


# ------------------------------------------------------------------------------------------- resume rules

@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one_epoch")
    _run(tmp, "--epochs", "1")
    return tmp / "ckpt" / "last.pt"


def test_resume_refuses_a_changed_run(one_epoch, tmp_path):
    with pytest.raises(SystemExit, match=r"-a resnet50 \(checkpoint: resnet18\).*--image-size 64 \(checkpoint: 48\)"):
        _run(tmp_path, "--epochs", "2", "-a", "resnet50", "--image-size", "64", "--resume", str(one_epoch))
    with pytest.raises(SystemExit, match=r"-b 8 \(checkpoint: 16\)"):
        _run(tmp_path, "--epochs", "2", "-b", "8", "--resume", str(one_epoch))
    with pytest.raises(SystemExit, match=r"--lr 0.1 \(checkpoint: 0.002"):
        _run(tmp_path, "--epochs", "2", "--lr", "0.1", "--resume", str(one_epoch))
    with pytest.raises(SystemExit, match="--method cgc"):
        _run(tmp_path, "--epochs", "2", "--method", "cgc", "--resume", str(one_epoch))


def test_resume_takes_the_run_from_the_checkpoint(one_epoch, tmp_path, capsys):
    # only the data set flag and the new epoch count: everything else comes from the checkpoint
    result = main(["--dataset", "synthetic", "-j", "0", "--no-progress", "--epochs", "2", "--resume", str(one_epoch),
                   "--save_dir", str(tmp_path / "ckpt"), "--log_dir", str(tmp_path / "logs")])
    assert result["epoch"] == 2
    args = load_checkpoint(tmp_path / "ckpt" / "last.pt")["args"]
    assert (args["image_size"], args["batch_size"], args["lr"], args["limit"]) == (48, 16, 0.002, 48)
    assert "training to epoch 2" in capsys.readouterr().out


def test_resume_past_the_last_epoch_is_an_error(one_epoch, tmp_path):
    with pytest.raises(SystemExit, match="already trained 1 of --epochs 1"):
        _run(tmp_path, "--epochs", "1", "--resume", str(one_epoch))
    with pytest.raises(SystemExit, match="already trained 1 of --epochs 1"):
        _run(tmp_path, "--resume", str(one_epoch))  # --epochs from the checkpoint: nothing left to do


def test_checkpoint_every_resumes_mid_epoch_exactly(tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    _run(ref, "--epochs", "2")
    saved = []
    real_save = cli.save_checkpoint

    def save(path, state):
        real_save(path, state)
        if state["step"] == 2 and state["epoch"] == 1:  # inside the second epoch: keep a copy
            real_save(tmp_path / "mid.pt", state)
            saved.append(state["step"])

    monkeypatch.setattr(cli, "save_checkpoint", save)
    _run(tmp_path / "a", "--epochs", "2", "--checkpoint-every", "2")
    assert saved == [2]
    mid = load_checkpoint(tmp_path / "mid.pt")
    assert (mid["epoch"], mid["step"]) == (1, 2)
    monkeypatch.setattr(cli, "save_checkpoint", real_save)
    _run(tmp_path / "b", "--epochs", "2", "--checkpoint-every", "2", "--resume", str(tmp_path / "mid.pt"))
    a, b = _weights(ref / "ckpt" / "last.pt"), _weights(tmp_path / "b" / "ckpt" / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    resumed = _log(tmp_path / "b", "train")
    assert [r["step"] for r in resumed] == [2]  # only the epoch's last step ran again
    assert resumed[0]["loss"] == _log(ref, "train")[-1]["loss"]
    assert _log(tmp_path / "b", "val")[-1]["train_loss"] == pytest.approx(_log(ref, "val")[-1]["train_loss"], rel=1e-12)


# ------------------------------------------------------------------------------------------- precision, logs

def test_bf16_autocast_steps_are_finite_and_close_to_fp32(tmp_path):
    _run(tmp_path / "fp32", "--epochs", "1")
    _run(tmp_path / "bf16", "--epochs", "1", "--amp", "bf16", "--channels-last")
    a, b = _log(tmp_path / "fp32", "train"), _log(tmp_path / "bf16", "train")
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b, strict=True):
        assert rb["applied"] and math.isfinite(rb["loss"])
        for key in ("loss", "ce_xe", "term"):
            assert rb[key] == pytest.approx(ra[key], rel=0.03), (key, ra[key], rb[key])
    assert a[0]["loss"] != b[0]["loss"]  # bf16 really ran


def test_fp16_on_the_cpu_runs_with_a_grad_scaler(tmp_path):
    result = _run(tmp_path, "--epochs", "1", "--amp", "fp16")
    assert "scaler" in load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert math.isfinite(_log(tmp_path, "val")[0]["train_loss"]) and result["epoch"] == 1


def test_tensorboard_events_beside_the_json_lines(tmp_path):
    pytest.importorskip("tensorboard")
    _run(tmp_path, "--epochs", "1")
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))
    assert _log(tmp_path, "start")[0]["tensorboard"] is True


@pytest.mark.parametrize("method", ["sgc", "cgc"])
def test_single_forward_is_the_same_loss_without_batch_statistics(method):
    """In eval mode (no batch statistics) one forward of the concatenated views is the three forwards exactly; in
    train mode BatchNorm normalises the views together, a different (documented) objective."""
    import torchvision

    from sgc_fast.data.synthetic import SyntheticShapes
    from sgc_fast.data.views import GroundTruthMasks, MultiViewDataset, collate_views

    base = SyntheticShapes("train", size=48, length=4)
    views = MultiViewDataset(base, method, 48, masks=GroundTruthMasks(base, 48) if method == "sgc" else None)
    batch = collate_views([views[i] for i in range(4)])
    for k in ("xe", "orig", "aug"):
        batch[k] = batch[k].double()
    term = loop.consistency_term(method, 48, 0.5)
    results = {}
    for train_mode in (False, True):
        for single in (False, True):
            torch.manual_seed(0)
            model = torchvision.models.resnet18(num_classes=5).double().train(train_mode)
            loss, _ = loop.train_step(model, batch, method, term, 0.5, torch.device("cpu"), single_forward=single)
            loss.backward()
            results[train_mode, single] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    (a, ga), (b, gb) = results[False, False], results[False, True]
    assert torch.allclose(a, b, rtol=1e-10, atol=0)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-12)
    assert torch.isfinite(results[True, True][0]) and not torch.allclose(results[True, True][0], results[True, False][0])


def test_single_forward_flag_trains(tmp_path):
    result = _run(tmp_path, "--epochs", "1", "--single-forward")
    assert result["epoch"] == 1 and load_checkpoint(tmp_path / "ckpt" / "last.pt")["args"]["single_forward"] is True
