"""Hardening, one class of failure per section: no data lost, no wrong results, no silent nonsense, no unhelpful
crash, API types. Each test is an input a demanding user tried, and asserts the specific error or behaviour."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import sgc_fast
from sgc_fast import files
from sgc_fast.data.synthetic import SyntheticShapes
from sgc_fast.saliency import key_extra
from sgc_fast.saliency.cache import MaskCache
from sgc_fast.saliency.providers import GroundTruthProvider, SaliencyProvider
from sgc_fast.train import cli
from sgc_fast.train.checkpoint import load_checkpoint, save_checkpoint

TINY = ["--dataset", "synthetic", "--image-size", "48", "--limit", "48", "-b", "16", "--lr", "0.002", "-j", "0",
        "--seed", "0", "--no-progress", "--method", "sgc", "--saliency", "ground-truth"]
BACKENDS = [b for b in ("cpu", "reference") if b in sgc_fast.available_backends("cpu")]

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(tmp, *extra):
    return cli.main([*TINY, "--save_dir", str(tmp / "ckpt"), "--log_dir", str(tmp / "logs"), *extra])


def _cams(B=3, h=4, w=3):
    return torch.rand(B, h, w) + 0.1, torch.rand(B, h, w) + 0.1


# ============================================================================================== data lost


def test_mask_cache_build_never_follows_a_planted_symlink(tmp_path):
    base = SyntheticShapes("train", size=32, length=6)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "m.sgcmask"
    for pid in range(os.getpid() - 2, os.getpid() + 3):  # the old predictable names, and the target itself
        (tmp_path / f".m.sgcmask.tmp-{pid}").symlink_to(victim)
    ids = [base.image_id(i) for i in range(len(base))]
    MaskCache.build(target, ids, GroundTruthProvider(base, 32), None, key_extra=key_extra(base, 32), progress=False)
    assert victim.read_text() == "precious"
    assert len(MaskCache.open(target, None)) == 6
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(files.TEMP_SUFFIX)]


def test_failed_mask_cache_build_keeps_the_old_cache_and_leaves_no_temp(tmp_path):
    base = SyntheticShapes("train", size=32, length=6)
    ids = [base.image_id(i) for i in range(len(base))]
    target = tmp_path / "m.sgcmask"
    MaskCache.build(target, ids, GroundTruthProvider(base, 32), None, key_extra=key_extra(base, 32), progress=False)
    before = target.read_bytes()

    class Failing(GroundTruthProvider):
        def masks_for(self, indices, images):
            if indices[0] >= 2:
                raise RuntimeError("provider died")
            return super().masks_for(indices, images)

    with pytest.raises(RuntimeError, match="provider died"):
        MaskCache.build(target, ids, Failing(base, 32), None, key_extra=key_extra(base, 32), batch_size=2,
                        progress=False)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.sgcmask"]


def test_atomic_write_replaces_a_symlink_instead_of_following_it(tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_text("{}")
    link = tmp_path / "results.json"
    link.symlink_to(victim)
    files.atomic_write_text(link, '{"new": 1}')
    assert victim.read_text() == "{}" and not link.is_symlink() and json.loads(link.read_text()) == {"new": 1}


def test_sgc_eval_checks_its_outputs_before_evaluating(tmp_path, monkeypatch):
    from sgc_fast.eval import cli as eval_cli

    _train(tmp_path, "--epochs", "1")
    calls = []
    monkeypatch.setattr(eval_cli, "_evaluate_one", lambda *a, **k: calls.append(1))
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="--out: .* is not a writable folder"):
        eval_cli.main(["--checkpoint", str(tmp_path / "ckpt" / "last.pt"), "--out", str(tmp_path / "file" / "r.json")])
    (tmp_path / "adir").mkdir()
    with pytest.raises(SystemExit, match="--grid: .* is a folder"):
        eval_cli.main(["--checkpoint", str(tmp_path / "ckpt" / "last.pt"), "--out", "", "--grid", str(tmp_path / "adir")])
    assert calls == []


def test_best_is_written_before_last_and_stale_temps_are_removed(tmp_path, monkeypatch, capsys):
    (tmp_path / "ckpt").mkdir()
    stale = tmp_path / "ckpt" / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    order = []
    real = cli.save_checkpoint
    monkeypatch.setattr(cli, "save_checkpoint", lambda path, state: (order.append(path.name), real(path, state)))
    _train(tmp_path, "--epochs", "1")
    assert order == ["best.pt", "last.pt"]  # a kill between them repeats the epoch and writes best.pt again
    assert not stale.exists() and "remains of an interrupted checkpoint write" in capsys.readouterr().out


def test_kill_during_the_first_best_write_loses_nothing_on_rerun(tmp_path, monkeypatch):
    real = cli.save_checkpoint

    def killed(path, state):
        if path.name == "best.pt":
            raise KeyboardInterrupt  # the process dies inside the write
        real(path, state)

    monkeypatch.setattr(cli, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "--epochs", "1")
    assert not (tmp_path / "ckpt" / "last.pt").exists()  # nothing claims the epoch is done
    monkeypatch.setattr(cli, "save_checkpoint", real)
    _train(tmp_path, "--epochs", "1")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"best.pt", "last.pt"}


# ============================================================================================== wrong results


@pytest.mark.parametrize("dtype, box", [
    (torch.int8, (100, 0, 100, 5)),  # top + height = 200 wraps to -56 in int8
    (torch.uint8, (200, 0, 100, 5)),  # 300 wraps to 44 in uint8
    (torch.int16, (30000, 0, 30000, 5)),
    (torch.int32, (2**31 - 10, 0, 20, 5)),
    (torch.int64, (2**62, 0, 2**62, 5)),  # 2**63 wraps to a negative int64
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_crop_boxes_that_overflow_their_dtype_are_refused(dtype, box, backend):
    co, ca = _cams()
    crop = torch.tensor([box] * 3).to(dtype)
    with pytest.raises(ValueError, match="^crop: box"):
        sgc_fast.contrast_logits(co, ca, crop=crop, flip=torch.zeros(3, dtype=torch.bool), size=(12, 10),
                                 backend=backend)


@pytest.mark.parametrize("eps", [1e19, 2.0, float("inf"), float("nan"), 0.0])
def test_eps_out_of_range_is_refused(eps):
    co, ca = _cams()
    with pytest.raises(ValueError, match="^eps:"):
        sgc_fast.contrast_logits(co, ca, mask=torch.ones(3, 8, 8, dtype=torch.bool), size=(8, 8), eps=eps)
    with pytest.raises(ValueError, match="^eps:"):
        sgc_fast.SGCLoss(eps=eps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_cams_are_refused(backend):
    co, ca = _cams()
    ca[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="^cam_aug: holds NaN"):
        sgc_fast.contrast_logits(co, ca, size=(8, 8), backend=backend)


# ============================================================================================== silent nonsense


class _Empty(SaliencyProvider):
    name, needs_images = "empty", False

    def config(self):
        return {}

    def masks_for(self, indices, images):
        return torch.zeros(len(indices), 48, 48, dtype=torch.bool)


def test_a_cache_of_empty_masks_is_refused_unless_allowed(tmp_path):
    base = SyntheticShapes("train", size=48, bias=0.0, seed=0)
    ids = [base.image_id(i) for i in range(len(base))]
    cache = tmp_path / "empty.sgcmask"
    MaskCache.build(cache, ids, _Empty(), None, key_extra=key_extra(base, 48), progress=False, batch_size=512)
    argv = [a for a in TINY if a not in ("ground-truth",)]
    argv[argv.index("--saliency") + 1:argv.index("--saliency") + 1] = [str(cache)]
    with pytest.raises(SystemExit, match="every saliency mask is empty"):
        cli.main([*argv, "--epochs", "1", "--save_dir", str(tmp_path / "c"), "--log_dir", str(tmp_path / "l")])
    out = cli.main([*argv, "--epochs", "1", "--allow-degenerate", "--save_dir", str(tmp_path / "c"), "--log_dir",
                    str(tmp_path / "l")])
    assert out["epoch"] == 1


@pytest.mark.parametrize("threshold", ["nan", "5", "1", "-0.1"])
def test_sgc_saliency_refuses_thresholds_that_empty_every_mask(threshold, tmp_path):
    from sgc_fast.saliency.cli import main as saliency_main

    with pytest.raises(SystemExit, match="--threshold"):
        saliency_main(["--dataset", "synthetic", "--provider", "opencv", "--threshold", threshold, "--out",
                       str(tmp_path / "x.sgcmask")])


def test_one_cell_cams_are_refused_unless_allowed(tmp_path):
    argv = [*TINY]
    argv[argv.index("48")] = "32"  # --image-size 32 at output stride 32: 1x1 CAMs
    with pytest.raises(SystemExit, match="CAMs are 1x1"):
        cli.main([*argv, "--epochs", "1", "--save_dir", str(tmp_path / "c"), "--log_dir", str(tmp_path / "l")])


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_double_backward_through_the_fused_ops_raises(backend):
    co = torch.rand(3, 4, 4, dtype=torch.float64, requires_grad=True)
    ca = torch.rand(3, 4, 4, dtype=torch.float64, requires_grad=True)
    logits = sgc_fast.contrast_logits(co, ca, mask=torch.rand(3, 8, 8) < 0.5, size=(8, 8), backend=backend)
    (g,) = torch.autograd.grad(logits.logsumexp(1).sum(), co, create_graph=True)
    with pytest.raises(RuntimeError, match="contrast_logits: the gradients of the fused backends are not "):
        torch.autograd.grad(g.sum(), (co, ca))
    feats = torch.rand(2, 3, 4, 4, requires_grad=True)
    grads = torch.rand(2, 3, 4, 4, requires_grad=True)
    cam = sgc_fast.batched_cam(feats, grads, backend=backend)
    (g,) = torch.autograd.grad((cam ** 2).sum(), feats, create_graph=True)
    with pytest.raises(RuntimeError, match="batched_cam: .* backend='reference'"):
        torch.autograd.grad(g.sum(), grads)
    # first derivatives under create_graph=True are unchanged
    (g2,) = torch.autograd.grad((sgc_fast.batched_cam(feats, grads, backend=backend) ** 2).sum(), feats)
    assert torch.equal(g.detach(), g2)


def test_sgc_eval_refuses_an_image_size_it_would_change(tmp_path):
    from sgc_fast.eval.cli import main as eval_main

    with pytest.raises(SystemExit, match="--image-size: expected >= 32, got 16"):
        eval_main(["--checkpoint", str(tmp_path / "none.pt"), "--image-size", "16", "--out", ""])


# ============================================================================================== unhelpful crashes


@pytest.fixture
def good_checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("good")
    _train(tmp, "--epochs", "1")
    return tmp / "ckpt" / "last.pt"


def test_bad_checkpoint_files_give_one_line(tmp_path, good_checkpoint, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01not a checkpoint" * 10)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good_checkpoint.read_bytes()[:5000])
    keyless = tmp_path / "keyless.pt"
    state = load_checkpoint(good_checkpoint)
    del state["arch"]
    save_checkpoint(keyless, state)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path, why in ((garbage, "not a readable checkpoint"), (truncated, "not a readable checkpoint"),
                      (keyless, "without ['arch']"), (empty, "not a readable checkpoint")):
        with pytest.raises(ValueError, match="^checkpoint: ") as info:
            load_checkpoint(path)
        assert why in str(info.value) and "\n" not in str(info.value)
        code = cli.run([*TINY, "--resume", str(path), "--epochs", "2", "--save_dir", str(tmp_path / "c"),
                        "--log_dir", str(tmp_path / "l")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("sgc-train: error: checkpoint:"), err


def test_debug_shows_the_traceback(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        cli.run([*TINY, "--resume", str(garbage), "--debug", "--save_dir", str(tmp_path / "c"), "--log_dir",
                 str(tmp_path / "l")])


def test_truncated_and_oversized_mask_caches_are_named(tmp_path):
    base = SyntheticShapes("train", size=32, length=6)
    ids = [base.image_id(i) for i in range(len(base))]
    good = tmp_path / "m.sgcmask"
    MaskCache.build(good, ids, GroundTruthProvider(base, 32), None, key_extra=key_extra(base, 32), progress=False)
    raw = good.read_bytes()
    for name, data, why in (("short.sgcmask", raw[:-10], "is truncated"), ("long.sgcmask", raw + b"\0" * 64, "longer"),
                            ("header.sgcmask", raw[:20], "truncated"), ("magic.sgcmask", b"PNG" + raw[3:], "bad magic")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=why):
            MaskCache.open(tmp_path / name, None)


def _folder(root, n=4):
    for split in ("train", "val"):
        for c, color in (("cat", (250, 20, 20)), ("dog", (20, 20, 250))):
            for k in range(n):
                p = root / split / c / f"{k}.jpg"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (40, 40), color).save(p, quality=95)


def test_truncated_jpeg_is_replaced_and_counted_during_training(tmp_path):
    _folder(tmp_path / "data")
    bad = tmp_path / "data" / "train" / "cat" / "1.jpg"
    noise = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(bad, quality=95)
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # the header parses; decoding fails
    argv = [str(tmp_path / "data"), "--dataset", "folder", "--method", "cgc", "--image-size", "32", "-b", "4",
            "--epochs", "1", "-j", "0", "--no-progress", "--seed", "0", "--save_dir", str(tmp_path / "c"),
            "--log_dir", str(tmp_path / "l"), "--allow-degenerate"]
    with pytest.warns(UserWarning, match="cannot be decoded"):
        cli.main(argv)
    val = [json.loads(x) for x in (tmp_path / "l" / "train.jsonl").read_text().splitlines() if '"val"' in x]
    assert val[0]["replaced_images"] == 1
    # the full check finds it before training
    out = cli.main([*argv, "--image-check", "full", "--save_dir", str(tmp_path / "c2"), "--log_dir", str(tmp_path / "l2")])
    assert out["epoch"] == 1


def test_non_utf8_file_names(tmp_path):
    _folder(tmp_path / "data", n=2)
    src = tmp_path / "data" / "train" / "cat" / "0.jpg"
    os.rename(bytes(src), bytes(src.parent) + b"/\xff\xfe-0.jpg")  # not valid UTF-8
    from sgc_fast.data.folder import ImageFolder
    from sgc_fast.saliency.cache import ids_digest

    ds = ImageFolder(tmp_path / "data", "train")
    ids = [ds.image_id(i) for i in range(len(ds))]
    assert ids_digest(ids)["count"] == 4
    img, _ = ds[[i for i in range(len(ds)) if "\udcff" in ids[i]][0]]
    assert img.size == (40, 40)


def test_zero_channels_and_nan_metric_inputs_are_named():
    from sgc_fast.metrics import content_heatmap, pointing_game

    with pytest.raises(ValueError, match="^feats: empty shape"):
        sgc_fast.batched_cam(torch.rand(2, 0, 3, 3), torch.rand(2, 0, 3, 3))
    maps = torch.rand(2, 8, 8)
    maps[0, 1, 1] = float("nan")
    boxes = [torch.tensor([[0.0, 0.0, 4.0, 4.0]])] * 2
    with pytest.raises(ValueError, match="^maps: holds NaN"):
        content_heatmap(maps, boxes)
    with pytest.raises(ValueError, match=r"^boxes\[1\]: holds NaN"):
        pointing_game(torch.rand(2, 8, 8), [boxes[0], torch.tensor([[0.0, float("nan"), 4.0, 4.0]])])
    with pytest.raises(ValueError, match="^tolerance:"):
        pointing_game(torch.rand(2, 8, 8), boxes, tolerance=float("nan"))


# ============================================================================================== API types


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), np.int64(1), torch.tensor(0.5)])
def test_numpy_and_tensor_scalars_are_numbers(value):
    co, ca = _cams()
    mask = torch.ones(3, 8, 8, dtype=torch.bool)
    got = sgc_fast.contrast_logits(co, ca, mask=mask, size=(8, 8), temperature=value)
    want = sgc_fast.contrast_logits(co, ca, mask=mask, size=(8, 8), temperature=float(value))
    assert torch.equal(got, want)
    assert sgc_fast.SGCLoss(temperature=value).temperature == float(value)


@pytest.mark.parametrize("value", ["0.5", None, [0.5], True])
def test_non_numbers_name_the_argument(value):
    co, ca = _cams()
    with pytest.raises(TypeError, match="^temperature: expected a positive number"):
        sgc_fast.contrast_logits(co, ca, size=(8, 8), temperature=value)
    with pytest.raises(TypeError, match="^temperature:"):
        sgc_fast.SGCLoss(temperature=value)


@pytest.mark.parametrize("size", [12, "12", "12x12", (12.0, 12), (12,), (True, 12), None])
def test_size_must_be_two_integers(size):
    co, ca = _cams()
    with pytest.raises(ValueError, match="^size: expected"):
        sgc_fast.contrast_logits(co, ca, size=size)
    with pytest.raises(ValueError, match="^size: expected"):
        sgc_fast.CGCLoss(size=size)


@pytest.mark.parametrize("flags, message", [
    (["-b", "0"], "-b: expected >= 1"), (["--limit", "0"], "--limit: expected >= 1"),
    (["--samples", "0"], "--samples"), (["--tolerance", "nan"], "--tolerance"), (["--eval-size", "8"], "--eval-size"),
    (["--causal-limit", "-1"], "--causal-limit"), (["--grid-n", "0"], "--grid-n"),
])
def test_sgc_eval_refuses_nonsense_numbers(flags, message, tmp_path):
    from sgc_fast.eval.cli import main as eval_main

    with pytest.raises(SystemExit, match=message.replace("-", r"\-")):
        eval_main(["--checkpoint", str(tmp_path / "none.pt"), "--out", "", *flags])


def test_a_device_that_is_not_there_is_named():
    from sgc_fast.train.dist import default_device

    with pytest.raises(ValueError, match="--device: 'gpu0' is not a device"):
        default_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            default_device("cuda:0")
