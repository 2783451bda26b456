"""The semi-supervised workflow: a SwAV-style checkpoint initialises the backbone (its projection head and
prototypes dropped, a new fc), and sgc-train --labels-fraction trains with the cross-entropy on the labelled share
and the consistency term on every image; backbone-only or misfit classifiers are refused for evaluation."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from sgc_fast.data.synthetic import SyntheticShapes
from sgc_fast.train import cli
from sgc_fast.train.checkpoint import load_checkpoint
from sgc_fast.train.cli import labelled_indices, main
from sgc_fast.train.models import build_model, load_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def _swav_state(arch="resnet18", seed=3) -> dict:
    """What a SwAV checkpoint holds: module.-prefixed backbone, an MLP projection head and prototypes, no fc."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)()
    state = {f"module.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    dim = net.fc.in_features
    state.update({"module.projection_head.0.weight": torch.randn(64, dim), "module.projection_head.0.bias": torch.zeros(64),
                  "module.projection_head.1.weight": torch.ones(64), "module.projection_head.3.weight": torch.randn(16, 64),
                  "module.prototypes.weight": torch.randn(30, 16)})
    return state


def test_swav_keys_initialise_the_backbone_with_a_new_head(tmp_path):
    state = _swav_state()
    path = tmp_path / "swav_800ep_pretrain.pth.tar"
    torch.save(state, path)
    messages = []
    model = build_model("resnet18", 7, weights=path, log=messages.append)
    torch.testing.assert_close(model.conv1.weight, state["module.conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.layer4[1].bn2.running_var, state["module.layer4.1.bn2.running_var"], rtol=0, atol=0)
    assert model.fc.weight.shape == (7, 512)
    assert any("self-supervised head" in m for m in messages) and any("no classifier" in m for m in messages)


def test_evaluation_refuses_a_missing_or_misfit_classifier(tmp_path):
    torch.save(_swav_state(), tmp_path / "swav.pt")
    with pytest.raises(ValueError, match="no classifier"):
        build_model("resnet18", 7, weights=tmp_path / "swav.pt", require_head=True)
    full = torchvision.models.resnet18(num_classes=10).state_dict()
    with pytest.raises(ValueError, match="cannot be evaluated"):
        load_weights(build_model("resnet18", 7), full, require_head=True)
    with pytest.raises(SystemExit, match="no classifier"):  # sgc-train -e never scores a random classifier
        main(["--dataset", "synthetic", "--image-size", "32", "-e", "--weights", str(tmp_path / "swav.pt"), "-j", "0",
              "--no-progress"])


def test_labelled_indices_per_class_and_from_a_subset_file(tmp_path):
    base = SyntheticShapes("train", size=32, length=200)  # 5 classes x 40
    chosen = labelled_indices(base, range(200), 0.1, None, seed=0)
    per_class = [sum(base.targets[i] == c for i in chosen) for c in range(5)]
    assert per_class == [4] * 5 and chosen == sorted(chosen)
    assert chosen == labelled_indices(base, range(200), 0.1, None, seed=0)
    assert chosen != labelled_indices(base, range(200), 0.1, None, seed=1)
    assert [sum(base.targets[i] == c for i in labelled_indices(base, range(200), 0.001, None, 0)) for c in range(5)] \
        == [1] * 5  # at least one per class
    names = tmp_path / "1percent.txt"
    names.write_text("\n".join(base.image_id(i).split("/")[-1] for i in (3, 9)) + "\n")
    # synthetic ids end in their index: the file names select exactly those images
    assert labelled_indices(base, range(200), None, str(names), 0) == [3, 9]


def test_semisup_trains_from_swav_on_one_percent(tmp_path):
    torch.save(_swav_state(), tmp_path / "swav.pt")
    argv = ["--dataset", "synthetic", "--image-size", "48", "--limit", "400", "--labels-fraction", "0.05", "-b", "8",
            "--lr", "0.02", "--lr-last-layer", "5", "--wd", "0", "--schedule", "multistep", "--milestones", "1",
            "--gamma", "0.2", "--epochs", "2", "-j", "0", "--seed", "0", "--no-progress", "--weights",
            str(tmp_path / "swav.pt"), "--save_dir", str(tmp_path / "ck"), "--log_dir", str(tmp_path / "lg")]
    result = main(argv)
    assert result["epoch"] == 2 and result["skipped_steps"] == 0
    steps = [json.loads(x) for x in (tmp_path / "lg" / "train.jsonl").read_text().splitlines()]
    train = [r for r in steps if r["kind"] == "train"]
    assert len(train) == 2 * (20 // 8)  # 5% of 80 per class = 4, x 5 classes = 20 labelled: 2 steps per epoch
    for r in train:
        assert r["ce_orig"] == 0 and r["ce_aug"] == 0 and r["term"] > 0  # CE on the labelled batch only
        assert r["loss"] == pytest.approx(r["ce_xe"] + 0.5 * r["term"], rel=1e-5)
    lrs = sorted({(r["epoch"], r["lr"]) for r in train})
    assert lrs == [(0, 0.02), (1, 0.02 * 0.2)]
    ckpt = load_checkpoint(tmp_path / "ck" / "last.pt")
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == pytest.approx([0.02 * 0.2, 5 * 0.2])
    assert [g["weight_decay"] for g in ckpt["optimizer"]["param_groups"]] == [0.0, 0.0]
    start = torch.load(tmp_path / "swav.pt")["module.conv1.weight"]
    assert not torch.equal(ckpt["model"]["conv1.weight"], start)  # the backbone trained
    assert all(torch.isfinite(v.float()).all() for v in ckpt["model"].values())


def test_semisup_recipe_and_refusals(tmp_path):
    args = cli.build_parser().parse_args(["--recipe", "semisup"])
    cli._apply_recipe(args, cli.given_args(["--recipe", "semisup"]))
    assert (args.arch, args.epochs, args.batch_size, args.lr, args.lr_last_layer, args.wd, args.milestones,
            args.gamma, args.labels_fraction) == ("resnet50", 50, 128, 0.02, 5.0, 0.0, [12, 16], 0.2, 0.01)
    with pytest.raises(SystemExit, match="not both"):
        main(["--labels-fraction", "0.1", "--labels-subset", "x.txt"])
    with pytest.raises(SystemExit, match="--labels-fraction: expected in"):
        main(["--labels-fraction", "0"])
    with pytest.raises(SystemExit, match="labelled images < batch size"):
        main(["--dataset", "synthetic", "--image-size", "48", "--limit", "50", "--labels-fraction", "0.02", "-b", "8",
              "--epochs", "1", "-j", "0", "--no-progress", "--save_dir", str(tmp_path / "c"), "--log_dir",
              str(tmp_path / "l")])
