"""Several processes (gloo on the CPU): global negatives on 2 ranks == one process on the concatenated batch,
local negatives == per-chunk negatives on one process; ``torchrun`` of sgc-train (one epoch, resume, the same
weights on every rank, checkpoints from rank 0 only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from dist_cases import TinyNet, loss_worker, model_loss

import sgc_fast
from sgc_fast.distributed import gather_negatives
from sgc_fast.train.checkpoint import load_checkpoint

TESTS = Path(__file__).resolve().parent
BACKENDS = [b for b in ("cpu", "reference") if b in sgc_fast.available_backends("cpu")]
WORLD, B_RANK, S = 2, 3, 24


def _case(tmp: Path, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    B = WORLD * B_RANK
    net = TinyNet()
    mask = torch.rand(B, S, S, generator=g) < 0.6
    mask[0] = False  # an empty mask among the negatives
    top = torch.randint(0, 8, (B,), generator=g)
    left = torch.randint(0, 8, (B,), generator=g)
    case = {
        "state": net.state_dict(), "images": torch.randn(B, 3, S, S, generator=g),
        "targets": torch.randint(0, 5, (B,), generator=g), "mask": mask,
        "crop": torch.stack([top, left, S - 8 + 0 * top, S - 10 + 0 * left], 1),
        "flip": torch.rand(B, generator=g) < 0.5,
        "runs": {f"{m}-{n}-{b}": (m, n, b) for m in ("sgc", "cgc") for n in ("global", "local") for b in BACKENDS},
    }
    torch.save(case, tmp / "case.pt")
    return case


def _single(case: dict, method: str, backend: str, chunk=None):
    net = TinyNet()
    net.load_state_dict(case["state"])
    loss, term = model_loss(net, case["images"], case["targets"], case["mask"], case["crop"], case["flip"], method,
                            "local", chunk=chunk, backend=backend)
    loss.backward()
    return loss.detach(), term.detach(), {n: p.grad for n, p in net.named_parameters()}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist_loss")
    case = _case(tmp, 7)
    mp.spawn(loss_worker, args=(WORLD, str(tmp)), nprocs=WORLD, join=True)
    return case, [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("method", ["sgc", "cgc"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_global_negatives_equal_one_process_on_the_global_batch(two_ranks, method, backend):
    case, ranks = two_ranks
    loss, term, grads = _single(case, method, backend)
    got = [r[f"{method}-global-{backend}"] for r in ranks]
    # each rank's loss is the mean over its rows; their mean is the global mean
    torch.testing.assert_close(sum(r["loss"] for r in got) / WORLD, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sum(r["term"] for r in got) / WORLD, term, rtol=1e-5, atol=1e-6)
    for r in got:  # DDP's averaged gradients are the single process's, on every rank
        for name, g in grads.items():
            torch.testing.assert_close(r["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", ["sgc", "cgc"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_local_negatives_equal_per_chunk_negatives(two_ranks, method, backend):
    case, ranks = two_ranks
    loss, term, grads = _single(case, method, backend, chunk=B_RANK)
    got = [r[f"{method}-local-{backend}"] for r in ranks]
    torch.testing.assert_close(sum(r["term"] for r in got) / WORLD, term, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sum(r["loss"] for r in got) / WORLD, loss, rtol=1e-5, atol=1e-6)
    for r in got:
        for name, g in grads.items():
            torch.testing.assert_close(r["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
    # and the chunked objective is another objective than the global one
    assert not torch.allclose(term, _single(case, method, backend)[1])


def test_chunk_options_are_checked():
    with pytest.raises(ValueError, match="chunk"):
        sgc_fast.SGCLoss(chunk=1)
    with pytest.raises(ValueError, match="chunk"):
        sgc_fast.SGCLoss(negatives="global", chunk=4)
    with pytest.raises(ValueError, match="negatives"):
        sgc_fast.CGCLoss(negatives="all")
    feats = torch.rand(5, 4, 3, 3)
    with pytest.raises(ValueError, match="last chunk of 1"):
        sgc_fast.SGCLoss(chunk=2)(feats, feats, feats, feats, torch.ones(5, 12, 12, dtype=torch.bool))


def test_global_without_a_process_group_is_local():
    feats, grads = torch.rand(4, 6, 3, 3), torch.rand(4, 6, 3, 3)
    mask = torch.rand(4, 12, 12) < 0.5
    a = sgc_fast.SGCLoss(negatives="global")(feats, grads, feats * 0.5, grads, mask)
    b = sgc_fast.SGCLoss()(feats, grads, feats * 0.5, grads, mask)
    assert torch.equal(a, b)
    neg_cam, neg_mask, self_index = gather_negatives(torch.rand(4, 3, 3), mask)
    assert neg_cam.shape == (4, 3, 3) and neg_mask.dtype == torch.uint8 and self_index.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="mask"):
        gather_negatives(torch.rand(4, 3, 3), mask[:3])


# ------------------------------------------------------------------------------------------------ torchrun

TINY = ["--dataset", "synthetic", "--image-size", "48", "--limit", "48", "-b", "16", "--lr", "0.002", "-j", "0",
        "--seed", "0", "--no-progress", "--method", "sgc", "--saliency", "ground-truth", "--device", "cpu"]


def _torchrun(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SGC_TEST_OUT=str(tmp), OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
           str(TESTS / "dist_cases.py"), *TINY, "--save_dir", str(tmp / "ckpt"), "--log_dir", str(tmp / "logs"), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_torchrun_trains_resumes_and_agrees_across_ranks(tmp_path):
    first = _torchrun(tmp_path, "--epochs", "1")
    assert first.stdout.count("sgc-train: data set synthetic") == 1, first.stdout  # rank 0 speaks
    assert "2 process(es)" in first.stdout
    ckpt = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["world_size"] == WORLD and ckpt["args"]["negatives"] == "global"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["best.pt", "last.pt"]
    _torchrun(tmp_path, "--epochs", "2", "--resume", str(tmp_path / "ckpt" / "last.pt"))
    digests = [(tmp_path / f"weights-rank{r}.txt").read_text().split() for r in range(WORLD)]
    assert len(digests[0]) == 2 and digests[0] == digests[1], digests  # the same weights on both ranks, per epoch
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["epoch"] == 2
    steps = [line for line in (tmp_path / "logs" / "train.jsonl").read_text().splitlines() if '"train"' in line]
    assert len(steps) == 2 * (48 // 16)  # one line per global step, from rank 0 only
