"""benchmarks/research_step.py does the work sgc-train does: on the same batch (same views, same masks, same crops)
and the same float64 weights, the research-style step and this library's step give the same loss and the same
parameter gradients, for SGC and CGC; and bench_step.py runs end to end on a tiny shape."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import research_step  # noqa: E402

import sgc_fast  # noqa: E402
from sgc_fast.data.synthetic import SyntheticShapes  # noqa: E402
from sgc_fast.data.views import GroundTruthMasks, MultiViewDataset, collate_views  # noqa: E402
from sgc_fast.loss import CGCLoss, SGCLoss  # noqa: E402
from sgc_fast.train.loop import train_step  # noqa: E402

BACKENDS = [b for b in ("cpu", "reference") if b in sgc_fast.available_backends("cpu")]
S, B = 64, 4


def _batch(method: str) -> dict:
    base = SyntheticShapes("train", size=S, length=B)
    masks = GroundTruthMasks(base, S) if method == "sgc" else None
    views = MultiViewDataset(base, method, S, masks=masks, seed=1)
    batch = collate_views([views[i] for i in range(B)])
    for k in ("xe", "orig", "aug"):
        batch[k] = batch[k].double()
    return batch


def _model():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).double().train()
    with torch.no_grad():  # mostly positive class weights: nonzero CAMs at initialisation
        model.fc.weight.uniform_(-0.3, 1.0).div_(512**0.5)
    return model


@pytest.mark.parametrize("method", ["sgc", "cgc"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_research_step_and_library_step_do_the_same_work(method, backend):
    batch = _batch(method)
    if method == "sgc":
        assert 0 < batch["mask"].float().mean() < 1
    torch.manual_seed(1)
    model_r = _model()
    extra = {"mask": batch["mask"][:, None].long()} if method == "sgc" else {"crop": batch["crop"],
                                                                               "flip": batch["flip"]}
    loss_r = research_step.research_loss(model_r, batch["xe"], batch["orig"], batch["aug"], batch["target"],
                                         method=method, lam=0.5, temperature=0.5, **extra)
    loss_r.backward()
    model_l = _model()
    term = SGCLoss(backend=backend) if method == "sgc" else CGCLoss(size=(S, S), backend=backend)
    loss_l, _ = train_step(model_l, batch, method, term, 0.5, torch.device("cpu"))
    loss_l.backward()
    assert loss_l.item() == pytest.approx(loss_r.item(), rel=1e-9)
    for (name, p_r), p_l in zip(model_r.named_parameters(), model_l.parameters(), strict=True):
        torch.testing.assert_close(p_l.grad, p_r.grad, rtol=1e-7, atol=1e-12, msg=name)
    # the batch-norm statistics moved the same way too (three train-mode forwards each)
    for (name, b_r), b_l in zip(model_r.named_buffers(), model_l.buffers(), strict=True):
        torch.testing.assert_close(b_l, b_r, rtol=1e-9, atol=1e-12, msg=name)


def test_research_masks_come_from_u2net_in_the_loader():
    from sgc_fast.saliency.u2net import U2Net

    torch.manual_seed(0)
    base = SyntheticShapes("train", size=S, length=2)
    data = research_step.ResearchSGCData(base, U2Net(small=True), S)
    xe, sample, aug, pred, target = data[0]
    assert pred.dtype == torch.int64 and pred.shape == (1, S, S)
    assert torch.equal(aug, pred * sample) and not aug.requires_grad
    assert isinstance(target, int | np.integer)


def test_bench_step_runs_and_appends_rows(tmp_path):
    import bench_step

    out = tmp_path / "step.csv"
    rows = bench_step.main(["--arch", "resnet18", "--batch", "2", "--image-size", "64", "--steps", "1", "--warmup",
                            "0", "--u2net", "small", "--precision", "fp32", "--csv", str(out)])
    pipelines = [r["pipeline"] for r in rows]
    assert pipelines[0] == "research" and "library:reference" in pipelines and len(pipelines) >= 4
    written = list(csv.DictReader(out.open()))
    assert [r["pipeline"] for r in written] == pipelines
    for r in written:
        assert r.keys() == set(bench_step.COLUMNS) and float(r["step_s"]) > 0 and float(r["peak_mb"]) > 0
    assert written[0]["speedup_vs_research"] == "1.00"
