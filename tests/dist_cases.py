"""Workers of tests/test_distributed.py: each runs in its own process of a 2-rank gloo group.

The parent builds the problem (feats, grads, masks, crops, a tiny model without BatchNorm) with a fixed seed,
saves it, and compares what every rank saved with the single-process computation on the concatenated batch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import sgc_fast


class TinyNet(nn.Module):
    """conv -> relu -> conv (the CAM layer) -> GAP -> fc: no BatchNorm, so DDP's only coupling is the loss."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2,
                                                                                                 padding=1))
        self.fc = nn.Linear(12, classes)

    def forward(self, x):
        feats = torch.relu(self.body(x))
        return self.fc(feats.mean((2, 3))), feats


def model_loss(net: TinyNet, images, targets, mask, crop, flip, method: str, negatives: str, chunk=None,
               backend: str = "cpu"):
    """CE + 0.5 * term of two views (the same images twice, the second masked or cropped: enough to couple the
    rows through the negatives)."""
    logits_o, feats_o = net(images)
    logits_a, feats_a = net(images.flip(3) if method == "cgc" else images * mask[:, None])
    cam_t = logits_o.detach().argmax(1)
    g_o = sgc_fast.head_grads(net.fc.weight, feats_o, cam_t)
    g_a = sgc_fast.head_grads(net.fc.weight, feats_a, cam_t)
    H, W = images.shape[2:]
    if method == "sgc":
        term = sgc_fast.SGCLoss(negatives=negatives, chunk=chunk, backend=backend)(feats_o, g_o, feats_a, g_a, mask)
    else:
        term = sgc_fast.CGCLoss(size=(H, W), negatives=negatives, chunk=chunk, backend=backend)(
            feats_o, g_o, feats_a, g_a, crop, flip)
    return F.cross_entropy(logits_o, targets) + 0.5 * term, term


def loss_worker(rank: int, world: int, folder: str) -> None:
    folder = Path(folder)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank, world_size=world)
    try:
        case = torch.load(folder / "case.pt", weights_only=False)
        out = {}
        for key, (method, negatives, backend) in case["runs"].items():
            net = TinyNet()
            net.load_state_dict(case["state"])
            ddp = nn.parallel.DistributedDataParallel(net)
            B = case["images"].shape[0] // world
            rows = slice(rank * B, (rank + 1) * B)
            part = {k: case[k][rows] for k in ("images", "targets", "mask", "crop", "flip")}

            def forward(x, _ddp=ddp):
                return _ddp(x)

            shim = _Shim(forward, net.fc)
            loss, term = model_loss(shim, part["images"], part["targets"], part["mask"], part["crop"], part["flip"],
                                    method, negatives, backend=backend)
            loss.backward()
            out[key] = {"loss": loss.detach(), "term": term.detach(),
                        "grads": {n: p.grad.clone() for n, p in net.named_parameters()}}
        torch.save(out, folder / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


class _Shim:
    """``net(x)`` through the DDP wrapper, ``net.fc`` the wrapped module's head."""

    def __init__(self, forward, fc) -> None:
        self._forward, self.fc = forward, fc

    def __call__(self, x):
        return self._forward(x)


if __name__ == "__main__":  # torchrun entry of the sgc-train test: record each rank's weights after each epoch
    import hashlib

    from sgc_fast.train import cli

    out = Path(os.environ["SGC_TEST_OUT"])
    real_evaluate = cli.evaluate

    def evaluate(model, *args, **kwargs):
        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        with open(out / f"weights-rank{os.environ['RANK']}.txt", "a") as f:
            f.write(h.hexdigest() + "\n")
        return real_evaluate(model, *args, **kwargs)

    cli.evaluate = evaluate
    cli.main(sys.argv[1:])
