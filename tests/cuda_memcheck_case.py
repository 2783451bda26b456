"""One small case of every CUDA kernel of sgc_fast._C, for the memory checker (not a pytest file).

    compute-sanitizer --tool memcheck python tests/cuda_memcheck_case.py
    compute-sanitizer --tool racecheck python tests/cuda_memcheck_case.py

Shapes are small and odd (tails everywhere) but reach every kernel and branch: batched_cam's flat
(vectorised) and strided kernels, per-position / compact / kind "grad" weights, split and unsplit
channel chunks, fp32 / bf16 / fp64; contrast_sweep's gram (symmetric with diagonal and off-diagonal
tiles, separate negatives), rows, finish, coef and fields kernels (shared-memory and global grids),
bilinear (fast) and dense (general) interpolation windows. Prints one line per case and "ok" at the end;
exits non-zero on an error.
"""

from __future__ import annotations

import sys

import torch

import sgc_fast
from sgc_fast import contrast, fused


def batched_cam_cases(dev: torch.device) -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        for B, K, h, w in ((3, 37, 7, 7), (300, 8, 5, 3), (2, 2047, 1, 1)):
            for layout in ("flat", "strided"):
                feats = torch.rand(B, K, h, w, device=dev, dtype=dtype)
                if layout == "strided":
                    feats = feats.contiguous(memory_format=torch.channels_last)
                for grads in (torch.randn(B, K, h, w, device=dev, dtype=dtype), torch.randn(B, K, device=dev, dtype=dtype)):
                    for kind in ("hires", "grad"):
                        f = feats.detach().requires_grad_()
                        g = grads.detach().requires_grad_()
                        cam = torch.ops.sgc_fast.batched_cam(f, g, kind)
                        d = torch.autograd.grad(cam, (f, g), torch.randn_like(cam))
                        torch.cuda.synchronize()
                        assert torch.isfinite(cam).all() and all(torch.isfinite(x).all() for x in d)
                        print(f"batched_cam {dtype} B{B} K{K} {h}x{w} {layout} grads{list(grads.shape)} {kind}: ok")
    # The public entry with head_grads' expanded view (compact path through sgc_fast.batched_cam).
    weight = torch.randn(10, 64, device=dev, requires_grad=True)
    feats = torch.rand(5, 64, 7, 7, device=dev, requires_grad=True)
    cam = sgc_fast.batched_cam(feats, sgc_fast.head_grads(weight, feats, torch.arange(5, device=dev)), backend="cuda")
    torch.autograd.grad(cam.sum(), (feats, weight))
    torch.cuda.synchronize()
    print("batched_cam head_grads: ok")


def sweep_case(dev, B, N, h, w, H, W, dtype, crop, generic):
    co, ca = torch.rand(B, h, w, device=dev), torch.rand(B, h, w, device=dev)
    neg = torch.rand(N, h, w, device=dev) if N else None
    box = flip = None
    if crop:
        hh, ww = torch.randint(1, H + 1, (B,)), torch.randint(1, W + 1, (B,))
        top = (torch.rand(B) * (H - hh + 1)).floor().long()
        left = (torch.rand(B) * (W - ww + 1)).floor().long()
        box, flip = torch.stack([top, left, hh, ww], 1).to(dev), (torch.rand(B) < 0.5).to(dev)
    pb = contrast.prepare(co, ca, neg, box, flip, (H, W), 1e-8)
    mask = (torch.rand(B, H, W, device=dev) < 0.6).view(torch.uint8)
    neg_mask = (torch.rand(N, H, W, device=dev) < 0.6).view(torch.uint8) if N else None
    args = list(fused.sweep_args(pb, mask, neg_mask, dtype))
    if generic:
        args[3] = torch.rand(H, h, device=dev, dtype=dtype)
        args[4] = torch.rand(W, w, device=dev, dtype=dtype)
    stats = torch.ops.sgc_fast.contrast_sweep(*args)
    coefs = (torch.randn(B, B, device=dev, dtype=torch.float64), torch.randn(B, N, device=dev, dtype=torch.float64),
             torch.randn(N, B, device=dev, dtype=torch.float64), torch.randn(N, device=dev, dtype=torch.float64),
             *(torch.randn(B, device=dev, dtype=torch.float64) for _ in range(3)))
    grads = torch.ops.sgc_fast.contrast_sweep_backward(*args, *coefs)
    torch.cuda.synchronize()
    assert all(torch.isfinite(s).all() for s in stats) and all(torch.isfinite(g).all() for g in grads)


def contrast_cases(dev: torch.device) -> None:
    cases = [
        # (B, N, h, w, H, W): symmetric with two M tiles (off-diagonal tile), tails in every dimension
        (130, 0, 7, 7, 23, 37),
        (3, 0, 5, 3, 33, 17),
        (3, 5, 7, 7, 19, 45),
        (1, 130, 5, 3, 9, 40),
        (4, 2, 14, 14, 30, 29),  # 14x14: the fields kernel keeps its grids in global memory (float32)
        (3, 2, 4, 1, 12, 7),     # w = 1: general taps
    ]
    for dtype in (torch.float32, torch.float64):
        for case in cases:
            for crop in (False, True):
                for generic in (False, True):
                    sweep_case(dev, *case, dtype=dtype, crop=crop, generic=generic)
                    print(f"contrast_sweep {dtype} {case} crop={crop} generic={generic}: ok")
    # The public entry (prepare + sweep + logits + backward), SGC and separate negatives.
    B, h, w, H, W = 4, 7, 7, 40, 36
    co = torch.rand(B, h, w, device=dev, requires_grad=True)
    ca = torch.rand(B, h, w, device=dev, requires_grad=True)
    mask = torch.rand(B, H, W, device=dev) < 0.6
    logits = sgc_fast.contrast_logits(co, ca, mask=mask, size=(H, W), backend="cuda")
    torch.autograd.grad(logits.logsumexp(1).sum(), (co, ca))
    torch.cuda.synchronize()
    print("contrast_logits sgc: ok")
    neg = torch.rand(37, h, w, device=dev, requires_grad=True)  # 37 columns: partial warps in the glue kernels
    neg_mask = torch.rand(37, H, W, device=dev) < 0.6
    self_index = torch.tensor([0, -1, 36, 5], device=dev)
    logits = sgc_fast.contrast_logits(co, ca, mask=mask, size=(H, W), neg_cam=neg, neg_mask=neg_mask,
                                      self_index=self_index, backend="cuda")
    torch.autograd.grad(logits.logsumexp(1).sum(), (co, ca, neg))
    torch.cuda.synchronize()
    print("contrast_logits sgc, separate negatives: ok")
    crop = torch.tensor([[0, 0, H, W], [3, 2, 5, 4], [1, 1, 1, 1], [10, 3, 7, 9]], device=dev)
    flip = torch.tensor([False, True, True, False], device=dev)
    logits = sgc_fast.contrast_logits(co, ca, crop=crop, flip=flip, size=(H, W), backend="cuda")
    torch.autograd.grad(logits.logsumexp(1).sum(), (co, ca))
    torch.cuda.synchronize()
    print("contrast_logits cgc (warp_matrices, lowres closed forms): ok")
    logits = sgc_fast.contrast_logits(co, ca, crop=crop, flip=flip, size=(H, W), neg_cam=neg, self_index=self_index,
                                      backend="cuda")
    torch.autograd.grad(logits.logsumexp(1).sum(), (co, ca, neg))
    torch.cuda.synchronize()
    print("contrast_logits cgc, separate negatives: ok")


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    if not torch._C._dispatch_has_kernel_for_dispatch_key("sgc_fast::batched_cam", "CUDA"):
        print("sgc_fast._C has no CUDA kernels (build with FORCE_CUDA=1)")
        return 1
    torch.manual_seed(0)
    dev = torch.device("cuda")
    batched_cam_cases(dev)
    contrast_cases(dev)
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
