"""Saliency-mask subsystem: U²-Net (names/shapes of the official weight files, forward, strict loading),
post-processing guard, OpenCV provider, ground-truth provider, mask cache (round trip, stale keys,
atomic writes) and the ``sgc-saliency`` command line."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from sgc_fast.saliency import (
    GroundTruthProvider,
    MaskCache,
    OpenCVStaticProvider,
    SaliencyProvider,
    StaleMaskCacheError,
    U2Net,
    U2NetProvider,
    cache_key,
    center_view_mask,
    center_view_params,
    center_view_transform,
    get_provider,
    load_u2net,
    minmax_threshold,
    opencv_saliency_available,
)
from sgc_fast.saliency.cli import main as saliency_main
from sgc_fast.saliency.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize_uint8

CV_OK, CV_WHY = opencv_saliency_available()
needs_cv = pytest.mark.skipif(not CV_OK, reason=f"cv2.saliency unavailable: {CV_WHY}")

# ---------------------------------------------------------------------------------------------------------
# Official parameter layout (xuebinqin/U-2-Net, model/u2net.py), transcribed as facts: for every
# REBNCONV of U2NETP, "name=in>out" of its 3×3 conv_s1 (each also has conv_s1.bias and bn_s1.{weight,
# bias, running_mean, running_var, num_batches_tracked}); then side1…side6 (64→1, 3×3) and outconv (6→1, 1×1).
U2NETP_CONVS = """
stage1: rebnconvin=3>64 rebnconv1=64>16 rebnconv2=16>16 rebnconv3=16>16 rebnconv4=16>16 rebnconv5=16>16 rebnconv6=16>16 rebnconv7=16>16 rebnconv6d=32>16 rebnconv5d=32>16 rebnconv4d=32>16 rebnconv3d=32>16 rebnconv2d=32>16 rebnconv1d=32>64
stage2: rebnconvin=64>64 rebnconv1=64>16 rebnconv2=16>16 rebnconv3=16>16 rebnconv4=16>16 rebnconv5=16>16 rebnconv6=16>16 rebnconv5d=32>16 rebnconv4d=32>16 rebnconv3d=32>16 rebnconv2d=32>16 rebnconv1d=32>64
stage3: rebnconvin=64>64 rebnconv1=64>16 rebnconv2=16>16 rebnconv3=16>16 rebnconv4=16>16 rebnconv5=16>16 rebnconv4d=32>16 rebnconv3d=32>16 rebnconv2d=32>16 rebnconv1d=32>64
stage4: rebnconvin=64>64 rebnconv1=64>16 rebnconv2=16>16 rebnconv3=16>16 rebnconv4=16>16 rebnconv3d=32>16 rebnconv2d=32>16 rebnconv1d=32>64
stage5: rebnconvin=64>64 rebnconv1=64>16 rebnconv2=16>16 rebnconv3=16>16 rebnconv4=16>16 rebnconv3d=32>16 rebnconv2d=32>16 rebnconv1d=32>64
stage6: rebnconvin=64>64 rebnconv1=64>16 rebnconv2=16>16 rebnconv3=16>16 rebnconv4=16>16 rebnconv3d=32>16 rebnconv2d=32>16 rebnconv1d=32>64
stage5d: rebnconvin=128>64 rebnconv1=64>16 rebnconv2=16>16 rebnconv3=16>16 rebnconv4=16>16 rebnconv3d=32>16 rebnconv2d=32>16 rebnconv1d=32>64
stage4d: rebnconvin=128>64 rebnconv1=64>16 rebnconv2=16>16 rebnconv3=16>16 rebnconv4=16>16 rebnconv3d=32>16 rebnconv2d=32>16 rebnconv1d=32>64
stage3d: rebnconvin=128>64 rebnconv1=64>16 rebnconv2=16>16 rebnconv3=16>16 rebnconv4=16>16 rebnconv5=16>16 rebnconv4d=32>16 rebnconv3d=32>16 rebnconv2d=32>16 rebnconv1d=32>64
stage2d: rebnconvin=128>64 rebnconv1=64>16 rebnconv2=16>16 rebnconv3=16>16 rebnconv4=16>16 rebnconv5=16>16 rebnconv6=16>16 rebnconv5d=32>16 rebnconv4d=32>16 rebnconv3d=32>16 rebnconv2d=32>16 rebnconv1d=32>64
stage1d: rebnconvin=128>64 rebnconv1=64>16 rebnconv2=16>16 rebnconv3=16>16 rebnconv4=16>16 rebnconv5=16>16 rebnconv6=16>16 rebnconv7=16>16 rebnconv6d=32>16 rebnconv5d=32>16 rebnconv4d=32>16 rebnconv3d=32>16 rebnconv2d=32>16 rebnconv1d=32>64
"""

# Full U2NET (u2net.pth): entry count, parameter count (44.0 M, the 176 MB file) and a sample of entries.
U2NET_ENTRIES = 798
U2NET_PARAMS = 44_009_869
U2NET_SAMPLE = {
    "stage1.rebnconvin.conv_s1.weight": (64, 3, 3, 3),
    "stage1.rebnconv7.conv_s1.weight": (32, 32, 3, 3),
    "stage1.rebnconv1d.conv_s1.weight": (64, 64, 3, 3),
    "stage2.rebnconvin.conv_s1.weight": (128, 64, 3, 3),
    "stage4.rebnconv4.conv_s1.weight": (128, 128, 3, 3),
    "stage5.rebnconv4.conv_s1.weight": (256, 256, 3, 3),
    "stage6.rebnconv1d.conv_s1.weight": (512, 512, 3, 3),
    "stage5d.rebnconvin.conv_s1.weight": (512, 1024, 3, 3),
    "stage4d.rebnconvin.conv_s1.weight": (256, 1024, 3, 3),
    "stage3d.rebnconv5.bn_s1.running_var": (64,),
    "stage2d.rebnconv6.bn_s1.num_batches_tracked": (),
    "stage1d.rebnconv1d.conv_s1.weight": (64, 32, 3, 3),
    "side3.weight": (1, 128, 3, 3),
    "side6.weight": (1, 512, 3, 3),
    "outconv.weight": (1, 6, 1, 1),
    "outconv.bias": (1,),
}


def official_u2netp_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for line in U2NETP_CONVS.strip().splitlines():
        stage, convs = line.split(": ")
        for conv in convs.split():
            name, io_ = conv.split("=")
            cin, cout = (int(v) for v in io_.split(">"))
            p = f"{stage}.{name}"
            shapes[f"{p}.conv_s1.weight"] = (cout, cin, 3, 3)
            shapes[f"{p}.conv_s1.bias"] = (cout,)
            for field in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{p}.bn_s1.{field}"] = (cout,)
            shapes[f"{p}.bn_s1.num_batches_tracked"] = ()
    for i in range(1, 7):
        shapes[f"side{i}.weight"] = (1, 64, 3, 3)
        shapes[f"side{i}.bias"] = (1,)
    shapes["outconv.weight"] = (1, 6, 1, 1)
    shapes["outconv.bias"] = (1,)
    return shapes


def shapes_of(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def full_model() -> U2Net:
    return U2Net(small=False)


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory) -> str:
    """A u2netp-format weight file (random values, BN statistics perturbed so eval mode is non-trivial)."""
    torch.manual_seed(0)
    model = U2Net(small=True)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "u2netp.pth"
    torch.save(model.state_dict(), path)
    return str(path)


# ---------------------------------------------------------------------------------------------------------
# U²-Net


def test_u2netp_names_and_shapes_equal_official():
    expected = official_u2netp_shapes()
    got = shapes_of(U2Net(small=True))
    assert len(expected) == 798
    assert sorted(set(expected) - set(got)) == [] and sorted(set(got) - set(expected)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}
    assert list(got) == [k for k in got if k in expected]


def test_u2net_full_names_shapes_and_param_count(full_model):
    got = shapes_of(full_model)
    assert len(got) == U2NET_ENTRIES
    assert sum(p.numel() for p in full_model.parameters()) == U2NET_PARAMS
    assert {k: got.get(k) for k in U2NET_SAMPLE} == U2NET_SAMPLE
    # the full model has the same entry names as the small one, only wider
    assert set(got) == set(official_u2netp_shapes())


def test_u2net_full_state_dict_round_trip(full_model):
    buf = io.BytesIO()
    torch.save(full_model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, map_location="cpu", weights_only=True)
    fresh = U2Net(small=False)
    fresh.load_state_dict(state, strict=True)
    a, b = full_model.state_dict(), fresh.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_u2net_dilations_follow_the_paper():
    m = U2Net(small=True)
    assert m.stage1.rebnconv7.conv_s1.dilation == (2, 2) and m.stage1.rebnconv6.conv_s1.dilation == (1, 1)
    assert m.stage4d.rebnconv4.conv_s1.dilation == (2, 2)
    assert [getattr(m.stage5, f"rebnconv{k}").conv_s1.dilation[0] for k in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert [getattr(m.stage6, f"rebnconv{k}d").conv_s1.dilation[0] for k in (3, 2, 1)] == [4, 2, 1]
    assert all(c.padding == c.dilation for c in m.modules() if isinstance(c, torch.nn.Conv2d) and c.kernel_size == (3, 3))


@pytest.mark.parametrize("hw", [(32, 32), (27, 19)])
def test_u2netp_forward_shapes(hw):
    m = U2Net(small=True).eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        outs = m(x)
        logits = m.side_logits(x)
    assert len(outs) == 7
    assert all(o.shape == (2, 1, *hw) for o in outs)
    assert all(bool(((o >= 0) & (o <= 1)).all()) for o in outs)
    torch.testing.assert_close(outs[0], torch.sigmoid(logits[0]))


def test_u2netp_state_dict_round_trip_through_a_file(small_weights):
    model = load_u2net(small_weights, small=True)
    assert not model.training
    saved = torch.load(small_weights, map_location="cpu", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)


def test_load_u2net_errors_name_the_path(tmp_path, small_weights):
    missing = tmp_path / "nope" / "u2net.pth"
    with pytest.raises(FileNotFoundError, match="nope/u2net.pth"):
        load_u2net(missing)
    with pytest.raises(ValueError, match=r"u2netp\.pth.*shape mismatches: stage1\.rebnconv1\.conv_s1\.weight"):
        load_u2net(small_weights, small=False)  # the small file into the full model
    state = torch.load(small_weights, map_location="cpu", weights_only=True)
    state["outconv.w"] = state.pop("outconv.weight")
    bad = tmp_path / "renamed.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"renamed\.pth.*missing keys: outconv\.weight; unexpected keys: outconv\.w"):
        load_u2net(bad, small=True)


def test_load_u2net_accepts_module_prefix_and_old_files(tmp_path, small_weights):
    state = torch.load(small_weights, map_location="cpu", weights_only=True)
    old = {f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(old, path)
    model = load_u2net(path, small=True)
    assert torch.equal(model.state_dict()["side1.weight"], state["side1.weight"])


# ---------------------------------------------------------------------------------------------------------
# post-processing and providers


def test_minmax_threshold_guards_constant_maps():
    sal = torch.rand(3, 9, 7)
    sal[1] = 0.25  # constant: upstream gives NaN (0/0)
    sal[2, :, :] = 0.0
    sal[2, 4, 3] = 1e-30  # tiny but non-zero range still normalises
    mask = minmax_threshold(sal, 0.5)
    assert mask.dtype == torch.bool and mask.shape == (3, 9, 7)
    assert not mask[1].any()
    assert mask[2].sum() == 1 and mask[2, 4, 3]
    lo, hi = sal[0].min(), sal[0].max()
    assert torch.equal(mask[0], (sal[0] - lo) / (hi - lo) > 0.5)


@pytest.fixture(scope="module")
def small_provider(small_weights) -> U2NetProvider:
    return U2NetProvider(small_weights, small=True, device="cpu")


def test_u2net_provider_masks(small_weights, small_provider):
    provider = small_provider
    images = torch.randn(2, 3, 40, 40)
    images[1] = 0.0  # a flat image
    masks = provider(images)
    assert masks.dtype == torch.bool and masks.shape == (2, 40, 40) and masks.device == images.device
    sal = provider.saliency(images)
    assert torch.isfinite(sal).all()
    assert torch.equal(masks, minmax_threshold(sal, 0.5))
    cfg = provider.config()
    assert provider.name == "u2netp" and cfg["threshold"] == 0.5 and len(cfg["weights_sha256"]) == 16
    # optional working size: resized in, map resized back
    resized = U2NetProvider(small_weights, small=True, device="cpu", working_size=24)
    assert resized.masks_for([0, 1], images).shape == (2, 40, 40)
    assert resized.config() != cfg


def test_u2net_provider_runs_without_autograd(small_provider):
    images = torch.randn(1, 3, 24, 24, requires_grad=True)
    assert not small_provider.saliency(images).requires_grad
    with pytest.raises(ValueError, match=r"images: expected a float tensor \[B, 3, S, S\]"):
        small_provider(torch.zeros(1, 24, 24))


def _normalised(rgb_uint8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(rgb_uint8).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def test_denormalize_round_trips_uint8():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    assert np.array_equal(denormalize_uint8(_normalised(rgb)), rgb)


@needs_cv
@pytest.mark.parametrize("kind", ["spectral_residual", "fine_grained"])
@pytest.mark.parametrize("threshold", ["otsu", 0.5])
def test_opencv_provider_masks(kind, threshold):
    rgb = np.full((3, 48, 48, 3), 90, np.uint8)
    rgb[:, 16:32, 20:36] = (230, 40, 40)  # a red square on grey
    rgb[1] = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    rgb[2] = 90  # flat
    provider = OpenCVStaticProvider(kind, threshold=threshold)
    masks = provider(_normalised(rgb))
    assert masks.dtype == torch.bool and masks.shape == (3, 48, 48)
    assert masks[0].any() and not masks[0].all()
    assert not masks[2].any()  # a flat image gives an empty mask, not garbage
    assert provider.config()["kind"] == kind and provider.name == f"opencv-{kind}"


@needs_cv
def test_opencv_provider_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        OpenCVStaticProvider("itti")
    with pytest.raises(ValueError, match="threshold"):
        OpenCVStaticProvider(threshold="mean")


class FakeShapes:
    """Data set with ``object_mask`` / ``image_id`` / ``(PIL image, label)`` items, like SyntheticShapes."""

    def __init__(self, n: int = 5, size: int = 20) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def object_mask(self, i: int) -> np.ndarray:
        m = np.zeros((self.size, self.size), bool)
        m[i: i + 8, 2 * i: 2 * i + 6] = True
        return m

    def image_id(self, i: int) -> str:
        return f"fake/{i}"

    def __getitem__(self, i: int):
        return Image.fromarray(self.object_mask(i).astype(np.uint8) * 255).convert("RGB"), 0


def test_ground_truth_provider():
    ds = FakeShapes()
    provider = GroundTruthProvider(ds, image_size=16)
    assert not provider.needs_images
    masks = provider.masks_for([1, 3])
    assert masks.dtype == torch.bool and masks.shape == (2, 16, 16)
    assert np.array_equal(masks[1].numpy(), center_view_mask(ds.object_mask(3), 16))
    with pytest.raises(TypeError, match="masks_for"):
        provider(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="object_mask"):
        GroundTruthProvider(object(), 16)


def test_center_view_mask_matches_the_image_geometry():
    ds = FakeShapes(n=4, size=40)
    view = center_view_transform(24)
    for i in range(4):
        img = view(ds[i][0])
        assert img.shape == (3, 24, 24)
        from_image = denormalize_uint8(img[None])[0, :, :, 0] > 127
        from_mask = center_view_mask(ds.object_mask(i), 24)
        inter, union = (from_image & from_mask).sum(), (from_image | from_mask).sum()
        assert inter / union > 0.8
    assert center_view_params(224)["resize"] == 256 and center_view_params(224)["crop"] == 224


def test_get_provider_errors():
    with pytest.raises(ValueError, match="weights"):
        get_provider("u2net")
    with pytest.raises(ValueError, match="provider"):
        get_provider("sam")


# ---------------------------------------------------------------------------------------------------------
# mask cache


class SignProvider(SaliencyProvider):
    """Cheap deterministic provider: red channel > offset. Can be told to fail on a given call."""

    name = "sign"

    def __init__(self, offset: float = 0.0, fail_on_call: int | None = None) -> None:
        self.offset, self.fail_on_call, self.calls = offset, fail_on_call, 0

    def config(self) -> dict:
        return {"offset": self.offset}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_on_call is not None and self.calls >= self.fail_on_call:
            raise RuntimeError("provider failed")
        with torch.no_grad():
            return images[:, 0] > self.offset


def _images(n: int, S: int) -> torch.Tensor:
    return torch.randn(n, 3, S, S)


def _build(path, ids, provider, images, S, batch_size=3):
    asked = []

    def load(indices):
        asked.append(list(indices))
        return images[indices]

    cache = MaskCache.build(path, ids, provider, load, key_extra={"transform": center_view_params(S)},
                            batch_size=batch_size, progress=False)
    return cache, asked


@pytest.mark.parametrize("S", [13, 16])
def test_cache_round_trip(tmp_path, S):
    n = 7
    ids = [f"img{i}" for i in range(n)]
    images = _images(n, S)
    provider = SignProvider()
    cache, asked = _build(tmp_path / "m.sgcmask", ids, provider, images, S)
    assert asked == [[0, 1, 2], [3, 4, 5], [6]]
    expected = provider(images).numpy()
    key = MaskCache.make_key(ids, provider, {"transform": center_view_params(S)})
    opened = MaskCache.open(tmp_path / "m.sgcmask", key)
    assert len(opened) == n and opened.size == S
    for i in range(n):
        m = opened[i]
        assert m.dtype == np.bool_ and m.shape == (S, S)
        assert np.array_equal(m, expected[i])
    assert np.array_equal(opened[-1], expected[-1])
    assert torch.equal(opened.masks([4, 0]), torch.from_numpy(expected[[4, 0]]))
    with pytest.raises(IndexError):
        opened[n]
    clone = pickle.loads(pickle.dumps(opened))  # DataLoader workers
    assert np.array_equal(clone[5], expected[5])
    # packed: one bit per pixel
    assert (tmp_path / "m.sgcmask").stat().st_size < 1024 + n * S * ((S + 7) // 8) + 64


@needs_cv
def test_cache_round_trip_opencv(tmp_path):
    S, n = 32, 5
    rgb = np.random.default_rng(2).integers(0, 256, (n, S, S, 3), dtype=np.uint8)
    images = _normalised(rgb)
    provider = OpenCVStaticProvider()
    cache, _ = _build(tmp_path / "cv.sgcmask", [str(i) for i in range(n)], provider, images, S, batch_size=2)
    expected = provider(images).numpy()
    assert all(np.array_equal(cache[i], expected[i]) for i in range(n))


def test_stale_cache_is_refused(tmp_path):
    S, n = 12, 4
    ids = [f"a/{i}.png" for i in range(n)]
    path = tmp_path / "m.sgcmask"
    _build(path, ids, SignProvider(), _images(n, S), S)
    extra = {"transform": center_view_params(S)}
    MaskCache.open(path, MaskCache.make_key(ids, SignProvider(), extra))
    MaskCache.open(path, MaskCache.make_key(ids, None, extra))  # provider not pinned
    MaskCache.open(path, None)
    cases = {
        "image_ids": MaskCache.make_key(ids[::-1], SignProvider(), extra),
        "provider": MaskCache.make_key(ids, SignProvider(offset=0.1), extra),
        "extra": MaskCache.make_key(ids, SignProvider(), {"transform": center_view_params(S + 1)}),
    }
    for part, key in cases.items():
        with pytest.raises(StaleMaskCacheError, match=rf"stale: {part} differ[\s\S]*rebuild"):
            MaskCache.open(path, key)
    with pytest.raises(StaleMaskCacheError, match=r"key\.extra\.transform\.image_size: expected 13"):
        MaskCache.open(path, cases["extra"])
    with pytest.raises(FileNotFoundError, match="sgc-saliency"):
        MaskCache.open(tmp_path / "missing.sgcmask", None)
    (tmp_path / "junk.sgcmask").write_bytes(b"not a cache at all")
    with pytest.raises(ValueError, match="not a mask cache"):
        MaskCache.open(tmp_path / "junk.sgcmask", None)


def test_failed_build_leaves_no_file(tmp_path):
    S, n = 10, 8
    ids = [str(i) for i in range(n)]
    path = tmp_path / "m.sgcmask"
    with pytest.raises(RuntimeError, match="provider failed"):
        _build(path, ids, SignProvider(fail_on_call=2), _images(n, S), S)
    assert list(tmp_path.iterdir()) == []
    # an existing cache survives a failed rebuild untouched
    _build(path, ids, SignProvider(), _images(n, S), S)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="provider failed"):
        _build(path, ids, SignProvider(offset=1.0, fail_on_call=3), _images(n, S), S)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.sgcmask"]


def test_cache_with_ground_truth_provider_needs_no_images(tmp_path):
    ds = FakeShapes(n=5)
    provider = GroundTruthProvider(ds, image_size=16)
    ids = [ds.image_id(i) for i in range(len(ds))]
    cache = MaskCache.build(tmp_path / "gt.sgcmask", ids, provider, None, batch_size=2, progress=False)
    assert all(np.array_equal(cache[i], center_view_mask(ds.object_mask(i), 16)) for i in range(5))
    with pytest.raises(ValueError, match="load_batch_fn"):
        MaskCache.build(tmp_path / "x.sgcmask", ids, SignProvider(), None, progress=False)


# ---------------------------------------------------------------------------------------------------------
# command line


def _write_imagefolder(root, split="train"):
    rng = np.random.default_rng(3)
    sizes = [(40, 30), (30, 40), (37, 37)]
    for c in ("cat", "dog"):
        d = root / split / c
        d.mkdir(parents=True)
        for k, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{k}.png")


@needs_cv
def test_cli_imagefolder_opencv(tmp_path, capsys):
    from sgc_fast.data.folder import ImageFolder

    _write_imagefolder(tmp_path)
    S = 24
    rc = saliency_main([str(tmp_path), "--split", "train", "--provider", "opencv", "--image-size", str(S),
                        "-b", "4", "-j", "0", "--no-progress"])
    assert rc == 0
    out = tmp_path / "masks" / f"train-opencv-{S}.sgcmask"
    assert f"wrote 6 masks of {S}x{S}" in capsys.readouterr().out
    ds = ImageFolder(tmp_path, "train")
    cache = MaskCache.open(out, cache_key(ds, S))
    view = center_view_transform(S)
    expected = OpenCVStaticProvider()(torch.stack([view(ds[i][0]) for i in range(len(ds))]))
    assert all(np.array_equal(cache[i], expected[i].numpy()) for i in range(len(ds)))
    with pytest.raises(StaleMaskCacheError, match="extra"):
        MaskCache.open(out, cache_key(ds, S + 8))


def test_cli_synthetic_ground_truth(tmp_path):
    pytest.importorskip("sgc_fast.data.synthetic")
    from sgc_fast.data.synthetic import SyntheticShapes

    out = tmp_path / "gt.sgcmask"
    rc = saliency_main(["--dataset", "synthetic", "--split", "val", "--length", "6", "--provider", "ground-truth",
                        "--image-size", "32", "--out", str(out), "--no-progress"])
    assert rc == 0
    ds = SyntheticShapes(split="val", size=32, length=6, seed=0)
    cache = MaskCache.open(out, cache_key(ds, 32))
    assert all(np.array_equal(cache[i], center_view_mask(ds.object_mask(i), 32)) for i in range(6))


def test_cli_u2net_needs_weights(tmp_path):
    _write_imagefolder(tmp_path)
    with pytest.raises(SystemExit, match="weights"):
        saliency_main([str(tmp_path), "--provider", "u2net", "--no-progress"])


def test_u2net_provider_under_autocast(small_weights, small_provider):
    images = torch.randn(2, 3, 40, 40)
    fast = U2NetProvider(small_weights, small=True, device="cpu", amp="bf16")
    sal, sal32 = fast.saliency(images), small_provider.saliency(images)
    assert sal.dtype == torch.float32 and torch.isfinite(sal).all()
    assert (sal - sal32).abs().max() < 0.05  # bf16 network, float32 map
    agree = (fast(images) == small_provider(images)).float().mean()
    assert agree > 0.95, agree
    assert fast.config()["amp"] == "bf16" and "amp" not in small_provider.config()  # part of the cache key
    with pytest.raises(ValueError, match="amp"):
        U2NetProvider(small_weights, small=True, device="cpu", amp="fp8")
    from sgc_fast.saliency import get_provider

    with pytest.raises(ValueError, match="^amp: only the U²-Net providers"):
        get_provider("opencv", amp="bf16")
