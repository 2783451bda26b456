"""sgc-train end to end on tiny data (CPU): the loss goes down, interrupted + resumed == uninterrupted bit
for bit, -e reproduces the logged accuracy; ImageFolder skips unreadable files; weights loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from sgc_fast.train.checkpoint import load_checkpoint, save_checkpoint
from sgc_fast.train.cli import main
from sgc_fast.train.models import build_model, export_state_dict, load_weights

# Tiny run: 48 px views (layer4 2x2), 48 training / 48 validation images, 3 steps per epoch.
TINY = ["--dataset", "synthetic", "--image-size", "48", "--limit", "48", "-b", "16", "--lr", "0.002",
        "-j", "0", "--seed", "0", "--no-progress", "--method", "sgc", "--saliency", "ground-truth"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(tmp, *extra):
    return main([*TINY, "--save_dir", str(tmp / "ckpt"), "--log_dir", str(tmp / "logs"), *extra])


def _log(tmp, kind):
    with open(tmp / "logs" / "train.jsonl") as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two_epochs")
    result = _run(tmp, "--epochs", "2")
    return tmp, result


def test_training_lowers_loss_and_logs(two_epochs):
    tmp, result = two_epochs
    val = _log(tmp, "val")
    assert [r["epoch"] for r in val] == [0, 1]
    assert val[1]["train_loss"] < val[0]["train_loss"], val
    steps = _log(tmp, "train")
    assert len(steps) == 6
    for r in steps:
        assert {"loss", "ce_xe", "ce_orig", "ce_aug", "term", "lr", "images_per_s"} <= set(r)
        assert np.isclose(r["loss"], r["ce_xe"] + r["ce_orig"] + r["ce_aug"] + 0.5 * r["term"], rtol=1e-5)
    ckpt = load_checkpoint(tmp / "ckpt" / "last.pt")  # weights_only=True
    assert ckpt["epoch"] == 2 and ckpt["acc1"] == val[1]["acc1"] == result["acc1"]
    assert (tmp / "ckpt" / "best.pt").is_file()
    assert not [p for p in (tmp / "ckpt").iterdir() if p.name.endswith(".tmp")]
    torchvision.models.resnet18(num_classes=5).load_state_dict(ckpt["model"])  # plain torchvision keys


def test_resume_is_bit_identical(two_epochs, tmp_path):
    ref, _ = two_epochs
    _run(tmp_path, "--epochs", "1")  # "killed" at the epoch boundary
    _run(tmp_path, "--epochs", "2", "--resume", str(tmp_path / "ckpt" / "last.pt"))
    a = load_checkpoint(ref / "ckpt" / "last.pt")
    b = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(s["momentum_buffer"], t["momentum_buffer"])
    assert a["acc1"] == b["acc1"] and a["scheduler"] == b["scheduler"]
    steps_a = [r["loss"] for r in _log(ref, "train")]
    steps_b = [r["loss"] for r in _log(tmp_path, "train")]
    assert steps_a == steps_b


def test_evaluate_reproduces_logged_accuracy(two_epochs, capsys):
    tmp, _ = two_epochs
    logged = _log(tmp, "val")[-1]
    out = main([*TINY, "-e", "--resume", str(tmp / "ckpt" / "last.pt")])
    assert out["acc1"] == logged["acc1"] and out["acc5"] == logged["acc5"]
    assert f"top-1 {logged['acc1']:.3f}" in capsys.readouterr().out


def _write_folder(root, corrupt: bool = True):
    g = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("cat", "dog"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(g.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(d / f"{i}.png")
    if corrupt:
        (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
        (root / "train" / "dog" / "notes.txt").write_text("ignored: not an image")


def test_folder_skips_unreadable_and_trains(tmp_path):
    from sgc_fast.data.folder import ImageFolder

    _write_folder(tmp_path / "data")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\): dog/broken.jpg"):
        ds = ImageFolder(tmp_path / "data", "train")
    assert ds.num_skipped == 1 and len(ds) == 12 and ds.classes == ["cat", "dog"]
    assert ds.image_id(0) == "cat/0.png" and ds[11][1] == 1 and ds[0][0].mode == "RGB"
    with pytest.warns(UserWarning):
        out = main([str(tmp_path / "data"), "--dataset", "folder", "--method", "cgc", "--image-size", "32", "--allow-degenerate",
                    "-b", "6", "--epochs", "1", "-j", "0", "--no-progress", "--lr", "0.001",
                    "--save_dir", str(tmp_path / "ckpt"), "--log_dir", str(tmp_path / "logs")])
    assert 0 <= out["acc1"] <= 100
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["classes"] == ["cat", "dog"]


def test_mask_cache_feeds_sgc_views(tmp_path):
    from sgc_fast.data.synthetic import SyntheticShapes
    from sgc_fast.data.views import GroundTruthMasks, MultiViewDataset
    from sgc_fast.saliency import key_extra
    from sgc_fast.saliency.cache import MaskCache
    from sgc_fast.saliency.providers import GroundTruthProvider
    from sgc_fast.saliency.transforms import center_view_params
    from sgc_fast.train.cli import open_mask_cache

    S = 48
    base = SyntheticShapes("train", size=S, length=20)
    ids = [base.image_id(i) for i in range(len(base))]
    MaskCache.build(tmp_path / "m.sgcmask", ids, GroundTruthProvider(base, S), None,
                    key_extra=key_extra(base, S), progress=False)
    cache = open_mask_cache(tmp_path / "m.sgcmask", base, S)
    a = MultiViewDataset(base, "sgc", S, masks=cache, indices=[3, 17])
    b = MultiViewDataset(base, "sgc", S, masks=GroundTruthMasks(base, S), indices=[3, 17])
    for i in range(2):
        assert torch.equal(a[i]["mask"], b[i]["mask"]) and torch.equal(a[i]["aug"], b[i]["aug"])
    with pytest.raises(SystemExit, match="stale"):
        open_mask_cache(tmp_path / "m.sgcmask", base, 64)
    with pytest.raises(SystemExit, match="stale"):
        open_mask_cache(tmp_path / "m.sgcmask", SyntheticShapes("val", size=S, length=20), S)
    # the same image ids with another background bias are other pixels: refused
    with pytest.raises(SystemExit, match="bias"):
        open_mask_cache(tmp_path / "m.sgcmask", SyntheticShapes("train", size=S, length=20, bias=0.9), S)
    # a cache keyed without the data set's signature (transform only) is refused too
    MaskCache.build(tmp_path / "old.sgcmask", ids, GroundTruthProvider(base, S), None,
                    key_extra={"transform": center_view_params(S)}, progress=False)
    with pytest.raises(SystemExit, match="dataset"):
        open_mask_cache(tmp_path / "old.sgcmask", base, S)


def test_weights_from_research_checkpoint():
    src = torchvision.models.resnet18(num_classes=1000)
    research = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}
    messages = []
    model = build_model("resnet18", 5, log=messages.append)
    fc_before = model.fc.weight.detach().clone()
    load_weights(model, research, log=messages.append)
    assert any("skipping classifier" in m for m in messages)
    assert torch.equal(model.fc.weight, fc_before) and model.fc.out_features == 5
    exported = export_state_dict(model)
    for k, v in src.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(exported[k], v), k
    with pytest.raises(ValueError, match="does not fit"):
        load_weights(torchvision.models.resnet50(num_classes=5), research, log=messages.append)


def test_pretrained_never_downloads(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        with pytest.raises(FileNotFoundError, match="never downloads"):
            build_model("resnet18", 5, pretrained=True)
    finally:
        torch.hub.set_dir(old)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"x": torch.ones(2)})

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"x": torch.zeros(2)})
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
