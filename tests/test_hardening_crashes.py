"""Hardening, no unhelpful crash: damaged checkpoints and mask caches, undecodable images, non-UTF-8 names,
zero channels, NaN metric inputs, nonsense numbers and devices on the CLIs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hardening_common import TINY, build_cache, train
from PIL import Image

import sgc_fast
from sgc_fast.saliency.cache import MaskCache
from sgc_fast.train import cli
from sgc_fast.train.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture
def good_checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("good")
    train(tmp, "--epochs", "1")
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
    good = tmp_path / "m.sgcmask"
    build_cache(good)
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
