"""byol_rs.Augment and byol_rs.functional against torchvision.transforms.v2, on real photos.

1. Every functional op, with one parameter per sample, equals the torchvision v2 op applied
   image by image (scikit-image's astronaut, coffee and chelsea, 96x128 float CHW).
2. The whole pipeline equals torchvision's ops composed by hand with the parameters that
   ``sample_params`` reports, and those parameters follow the configured distributions.
3. Per-sample randomness, reproducibility and the saved RNG state.
4. Input layouts and dtypes, normalisation, clear errors that leave the RNG untouched.
5. ``BYOL(..., augment=...)``: ``step(uint8)``, checkpoint round trip, failed steps.
6. CPU vs CUDA (skipped where no GPU is visible).
"""

import functools
import itertools
import math
import os

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

import byol_rs
import byol_rs.functional as BF
from byol_rs.errors import ByolError, ByolTypeError, ByolValueError
from conftest import requires_cuda
from floors import K, eps
from learner_state import assert_same, snapshot

# Tolerances (issue 17): an op against torchvision is judged against torchvision run in float64,
# within K = 10 times the floor measured at test time, torchvision's own fp32 error, and at least
# one fp32 ulp of 1 (assert_like_torchvision). Measured on the development machine: the engine's
# error is at most 1.29x that floor (saturation; crop 1.06, blur 0.94, whole views 1.05).
# Mutations of the reference checked by hand (each fails): brightness and saturation factors
# scaled by 1 + 1e-4 (the latter through the whole pipeline), blur sigma by 1.001, the hue
# shift moved by 1e-4, a crop box one pixel off.
TOL_CUDA = 1e-4  # CPU vs CUDA, normalised output (the tracked issue's bar); not re-derived from a floor: no CUDA device in this session
Z = 5.0  # statistical checks: within 5 standard errors
KS_001 = 1.95  # Kolmogorov-Smirnov critical value for p = 0.001, times 1/sqrt(n)
N_STATS = 20000

JITTER_NAMES = ["brightness", "contrast", "saturation", "hue"]


# --------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=None)
def _photos():
    """astronaut, coffee, chelsea as float [3, 3, 96, 128] in [0, 1]: a central 3:4 crop,
    then area-averaged down with plain torch."""
    out = []
    for load in (skimage.data.astronaut, skimage.data.coffee, skimage.data.chelsea):
        x = torch.from_numpy(load()).permute(2, 0, 1).float() / 255
        _, h, w = x.shape
        if w * 3 > h * 4:
            nw = h * 4 // 3
            x = x[:, :, (w - nw) // 2:(w - nw) // 2 + nw]
        else:
            nh = w * 3 // 4
            x = x[:, (h - nh) // 2:(h - nh) // 2 + nh]
        out.append(F.interpolate(x[None], size=(96, 128), mode="area")[0].clamp(0, 1))
    return torch.stack(out)


def photos(repeat=1):
    return _photos().repeat(repeat, 1, 1, 1).clone()


def gray_photos(repeat=1):
    """Single-channel versions of the photos (ITU-R 601 luma), [3 * repeat, 1, 96, 128]."""
    x = photos(repeat)
    return (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).clamp(0, 1)


def photos_uint8(repeat=1, channels=3):
    x = photos(repeat) if channels == 3 else gray_photos(repeat)
    return (x * 255).round().to(torch.uint8)


def per_image(op, x, *params):
    """Applies torchvision's ``op(image, *params_i)`` image by image."""
    return torch.stack([op(x[i], *(p[i] for p in params)) for i in range(x.shape[0])])


def maxdiff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def assert_like_torchvision(name, got, reference, x, k=K):
    """got against reference(x) run in float64: within k times the floor, how far the same
    reference in fp32 lands from it, and at least one fp32 ulp of 1 (images lie in [0, 1])."""
    want64, want32 = reference(x.double()), reference(x)
    floor = max((want32.double() - want64).abs().max().item(), eps())
    err = (got.double() - want64).abs().max().item()
    if os.environ.get("BYOL_RS_PRINT_FLOORS"):
        print(f"FLOOR {name}: err {err:.3g} floor {floor:.3g} ratio {err / floor:.3g}")
    assert err <= k * floor, f"{name}: max |diff| {err:.3g} > {k:g} x floor {floor:.3g}"


def torchvision_view(x, p, cfg, size, kernel):
    """One view of ``x`` by torchvision v2's ops, image by image, with the sampled parameters
    ``p`` (a ``sample_params`` dict) and the view's config ``cfg``; no normalisation."""
    bicubic = cfg["interpolation"] == "bicubic"
    mode = InterpolationMode.BICUBIC if bicubic else InterpolationMode.BILINEAR
    out = []
    for i in range(x.shape[0]):
        top, left, h, w = p["crop"][i].tolist()
        y = TF.resized_crop(x[i], top, left, h, w, list(size), interpolation=mode, antialias=True)
        if bicubic:
            y = y.clamp(0, 1)  # documented: the pipeline clamps bicubic overshoot
        if p["flip"][i]:
            y = TF.horizontal_flip(y)
        if p["jitter"][i]:
            for op in p["jitter_order"][i].tolist():
                y = getattr(TF, "adjust_" + JITTER_NAMES[op])(y, p["jitter_factors"][i, op].item())
        if p["grayscale"][i] and y.shape[0] == 3:
            y = TF.rgb_to_grayscale(y, num_output_channels=3)
        sigma = p["blur_sigma"][i].item()
        if not math.isnan(sigma):
            y = TF.gaussian_blur(y, [kernel, kernel], [sigma, sigma])
        if p["solarize"][i]:
            y = TF.solarize(y, cfg["solarize_threshold"])
        out.append(y)
    return torch.stack(out)


def default_kernel(size):
    """The documented default blur kernel: about 10 % of the smaller side, odd, at least 3."""
    return max(round(0.1 * min(size)) | 1, 3)


def ks_uniform(x, lo, hi):
    """Kolmogorov-Smirnov distance between the sample ``x`` and U(lo, hi)."""
    u = ((x.double() - lo) / (hi - lo)).sort().values
    n = u.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max((i / n - u).max().item(), (u - (i - 1) / n).max().item())


def ks_two_sample(a, b):
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat([a, b])
    fa = torch.searchsorted(a, grid, right=True).double() / a.numel()
    fb = torch.searchsorted(b, grid, right=True).double() / b.numel()
    return (fa - fb).abs().max().item()


def assert_rate(flags, p, what):
    flags = flags.double()
    rate = flags.mean().item()
    if p in (0.0, 1.0):
        assert rate == p, f"{what}: rate {rate}, expected exactly {p}"
        return
    se = math.sqrt(p * (1 - p) / flags.numel())
    assert abs(rate - p) <= Z * se, f"{what}: rate {rate:.4f}, expected {p} +- {Z * se:.4f}"


# --------------------------------------------------------------------------- 1. functional ops


@pytest.mark.parametrize("method", ["aten", "cpu", "matmul"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(48, 64), (40, 40)])
def test_resized_crop_matches_torchvision_per_sample_boxes(interpolation, size, method):
    x = photos(2)  # six images
    boxes = torch.tensor([
        [10, 20, 50, 70],  # downscale
        [0, 0, 96, 128],  # the whole image
        [30, 40, size[0], size[1]],  # the output size: returned as is
        [5, 7, 20, 30],  # upscale
        [0, 100, 96, 28],  # a tall strip at the right edge
        [70, 0, 26, 128],  # a wide strip at the bottom edge
    ])
    got = BF.resized_crop(x, boxes, size, interpolation, method=method)
    mode = InterpolationMode.BICUBIC if interpolation == "bicubic" else InterpolationMode.BILINEAR
    assert got.shape == (6, 3, *size) and got.dtype == torch.float32
    assert_like_torchvision("resized_crop", got, lambda xx: per_image(
        lambda img, b: TF.resized_crop(img, *b.tolist(), size=list(size), interpolation=mode, antialias=True), xx, boxes), x)
    # the box of the output size is the crop itself, and every sample used its own box
    assert torch.equal(got[2], x[2, :, 30:30 + size[0], 40:40 + size[1]])
    same_box = BF.resized_crop(x, boxes[:1].repeat(6, 1), size, interpolation)
    assert maxdiff(got, same_box) > 0.05


@pytest.mark.parametrize("method", ["cpu", "matmul"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(224, 224), (17, 31), (40, 40)])
def test_resized_crop_methods_agree_on_random_boxes(interpolation, size, method):
    """byol-rs's CPU kernel and CUDA's batched matrix products against ATen's per-image kernel,
    over boxes from 1 px to the whole image (up- and downscaling by large factors)."""
    x = photos(2)
    g = torch.Generator().manual_seed(size[0])
    height, width = x.shape[2:]
    boxes = []
    for _ in range(x.shape[0]):
        h, w = (int(torch.randint(1, s + 1, (1,), generator=g)) for s in (height, width))
        boxes.append([int(torch.randint(0, height - h + 1, (1,), generator=g)), int(torch.randint(0, width - w + 1, (1,), generator=g)), h, w])
    boxes = torch.tensor(boxes)
    got = BF.resized_crop(x, boxes, size, interpolation, method=method)
    mode = InterpolationMode.BICUBIC if interpolation == "bicubic" else InterpolationMode.BILINEAR
    # torchvision's per-image kernel is ATen's (method="aten"), here run in fp32 and float64.
    assert_like_torchvision("resized_crop", got, lambda xx: per_image(
        lambda img, b: TF.resized_crop(img, *b.tolist(), size=list(size), interpolation=mode, antialias=True), xx, boxes), x)


def test_resized_crop_int_size_and_uint8_input():
    x = photos()
    boxes = torch.tensor([[10, 20, 50, 70], [0, 0, 96, 128], [5, 7, 20, 30]])
    square = BF.resized_crop(x, boxes, 40, "bilinear")
    assert torch.equal(square, BF.resized_crop(x, boxes, (40, 40), "bilinear"))
    u8 = photos_uint8()
    # The same taps on k / 255 either way: at most one rounding of the input apart, through
    # weights summing to 1 (measured: equal); K fp32 ulps of 1.
    assert maxdiff(BF.resized_crop(u8, boxes, 40), BF.resized_crop(u8.float() / 255, boxes, 40)) <= K * eps()


COLOUR_FACTORS = {
    "brightness": [0.6, 1.0, 1.4, 0.0, 2.0, 0.83],
    "contrast": [0.6, 1.0, 1.4, 0.0, 2.5, 1.17],
    "saturation": [0.8, 1.0, 1.2, 0.0, 3.0, 0.91],
}


@pytest.mark.parametrize("name", list(COLOUR_FACTORS))
def test_colour_adjustments_match_torchvision_per_sample_factor(name):
    x = photos(2)
    factor = torch.tensor(COLOUR_FACTORS[name])
    got = getattr(BF, "adjust_" + name)(x, factor)
    assert got.shape == x.shape
    assert_like_torchvision(name, got, lambda xx: per_image(lambda img, f: getattr(TF, "adjust_" + name)(img, f.item()), xx, factor), x)
    # each sample used its own factor: the same image with two factors differs
    assert maxdiff(got[0], got[3]) > 0.05


def test_hue_matches_torchvision_per_sample_shift():
    x = photos(3)  # nine images
    shift = torch.tensor([-0.5, -0.1, -0.03, 0.0, 0.05, 0.1, 0.25, 0.4, 0.5])
    got = BF.adjust_hue(x, shift)
    assert_like_torchvision("hue", got, lambda xx: per_image(lambda img, s: TF.adjust_hue(img, s.item()), xx, shift), x)
    # shift 0 (round trip through HSV): the identity in float64
    assert_like_torchvision("hue 0", got[3], lambda xx: TF.adjust_hue(xx, 0.0) if xx.dtype == torch.float32 else xx, x[3])
    assert maxdiff(got[1], got[4]) > 0.01


def test_grayscale_matches_torchvision_three_output_channels():
    x = photos()
    got = BF.rgb_to_grayscale(x)
    assert got.shape == x.shape
    assert_like_torchvision("grayscale", got, lambda xx: per_image(lambda img: TF.rgb_to_grayscale(img, num_output_channels=3), xx), x)
    assert torch.equal(got[:, 0], got[:, 1]) and torch.equal(got[:, 0], got[:, 2])


@pytest.mark.parametrize("kernel", [23, 9, 3])
def test_gaussian_blur_matches_torchvision_per_sample_sigma(kernel):
    x = photos(2)
    sigma = torch.tensor([0.1, 0.7, 2.0, 1.3, 0.35, 5.0])
    got = BF.gaussian_blur(x, kernel, sigma)
    assert_like_torchvision("blur", got, lambda xx: per_image(lambda img, s: TF.gaussian_blur(img, [kernel, kernel], [s.item(), s.item()]), xx, sigma), x)
    assert maxdiff(got[0], got[3]) > 0.01  # same image, sigma 0.1 vs 1.3


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.0, 1.0])
def test_solarize_matches_torchvision(threshold):
    x = photos()
    assert_like_torchvision("solarize", BF.solarize(x, threshold), lambda xx: TF.solarize(xx, threshold), x)
    g = gray_photos()
    assert_like_torchvision("solarize", BF.solarize(g, threshold), lambda xx: TF.solarize(xx, threshold), g)


def test_hflip_matches_torchvision():
    x = photos()
    assert torch.equal(BF.hflip(x), TF.horizontal_flip(x))  # a copy: bit for bit
    assert torch.equal(BF.hflip(BF.hflip(x)), x)


@pytest.mark.parametrize("name", ["brightness", "contrast"])
def test_single_channel_brightness_and_contrast_match_torchvision(name):
    g = gray_photos(2)
    factor = torch.tensor(COLOUR_FACTORS[name])
    got = getattr(BF, "adjust_" + name)(g, factor)
    assert got.shape == g.shape
    assert_like_torchvision(name, got, lambda xx: per_image(lambda img, f: getattr(TF, "adjust_" + name)(img, f.item()), xx, factor), g)
    assert maxdiff(got, g) > 0.05


def test_saturation_hue_grayscale_are_no_ops_on_one_channel():
    g = gray_photos()
    assert torch.equal(BF.adjust_saturation(g, torch.tensor([0.0, 0.5, 3.0])), g)
    assert torch.equal(BF.adjust_hue(g, torch.tensor([-0.5, 0.1, 0.3])), g)
    out = BF.rgb_to_grayscale(g)
    assert out.shape == g.shape and torch.equal(out, g)
    # torchvision agrees for saturation and hue
    assert torch.equal(TF.adjust_saturation(g[0], 0.0), g[0]) and torch.equal(TF.adjust_hue(g[0], 0.3), g[0])


@pytest.mark.parametrize("call,match", [
    (lambda x: BF.resized_crop(x, torch.tensor([[0, 0, 97, 10]] * 3), 8), "boxes"),
    (lambda x: BF.resized_crop(x, torch.tensor([[0, 0, 10, 10]] * 2), 8), "boxes"),
    (lambda x: BF.resized_crop(x, torch.tensor([[0, 0, 10, 10]] * 3), 8, "nearest"), "interpolation"),
    (lambda x: BF.adjust_brightness(x, torch.ones(2)), "factor"),
    (lambda x: BF.adjust_hue(x, torch.zeros(3, 1)), "shift"),
    (lambda x: BF.gaussian_blur(x, 4, torch.ones(3)), "kernel_size"),
    (lambda x: BF.gaussian_blur(x, 9, torch.ones(4)), "sigma"),
    (lambda x: BF.gaussian_blur(x[..., :4, :4], 9, torch.ones(3)), "blur_kernel"),
    (lambda x: BF.hflip(x[0]), "images"),
])
def test_functional_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ByolValueError, match=match):
        call(photos())


# --------------------------------------------------------------------------- 2. the pipeline = the ops


@pytest.mark.parametrize("case", ["paper_bicubic", "bilinear_solarize", "one_channel", "non_square"])
def test_pipeline_equals_torchvision_composed_with_sampled_params(case):
    if case == "paper_bicubic":
        aug, x, size = byol_rs.Augment(48, mean=None, std=None, seed=1), photos(6), (48, 48)
    elif case == "bilinear_solarize":
        aug = byol_rs.Augment(40, interpolation="bilinear", grayscale_p=0.5, view2={"solarize_p": 0.5, "solarize_threshold": 0.4},
                              mean=None, std=None, seed=2)
        x, size = photos(6), (40, 40)
    elif case == "one_channel":
        aug, x, size = byol_rs.Augment(32, blur_p=0.5, mean=None, std=None, seed=3), gray_photos(6), (32, 32)
    else:
        aug, x, size = byol_rs.Augment((36, 52), blur_kernel=7, mean=None, std=None, seed=4), photos(6), (36, 52)
    state = aug.rng_state
    p1, p2 = aug.sample_params(x.shape[0], 96, 128)
    aug.rng_state = state
    v1, v2 = aug(x)
    cfg = aug.config
    kernel = cfg["blur_kernel"] or default_kernel(size)
    assert v1.shape == (x.shape[0], x.shape[1], *size)
    for view, p, name in [(v1, p1, "view1"), (v2, p2, "view2")]:
        assert_like_torchvision(name, view, lambda xx: torchvision_view(xx, p, cfg[name], size, kernel), x)
    # the batch really exercised the branches
    assert p1["jitter"].any() and p1["flip"].any() and not p1["flip"].all()
    assert not torch.isnan(p1["blur_sigma"]).any() or case == "one_channel"


def test_pipeline_with_normalisation_equals_torchvision_then_normalise():
    aug = byol_rs.Augment(48, seed=5)  # ImageNet mean/std
    x = photos(4)
    state = aug.rng_state
    p1, p2 = aug.sample_params(x.shape[0], 96, 128)
    aug.rng_state = state
    v1, v2 = aug(x)
    mean = torch.tensor(byol_rs.augment.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(byol_rs.augment.IMAGENET_STD).view(1, 3, 1, 1)
    cfg = aug.config
    for view, p, name in [(v1, p1, "view1"), (v2, p2, "view2")]:
        assert_like_torchvision(name, view, lambda xx: (torchvision_view(xx, p, cfg[name], (48, 48), default_kernel((48, 48))) - mean.to(xx.dtype)) / std.to(xx.dtype), x)


@pytest.mark.parametrize("size,kernel,others", [(224, 23, [11]), (96, 11, [9, 13]), (40, 5, [3, 7])])
def test_default_blur_kernel_is_ten_percent_odd(size, kernel, others):
    # 23 at 224 px (the paper), as the docstring says; checked through the blur itself, with
    # sigma near 2 so that a kernel two taps shorter or longer changes the result.
    assert default_kernel((size, size)) == kernel
    aug = byol_rs.Augment(size, seed=0, mean=None, std=None, blur_sigma=(1.9, 2.0),
                          view1={"jitter_p": 0.0, "grayscale_p": 0.0, "flip_p": 0.0})
    x = photos()
    state = aug.rng_state
    p1, _ = aug.sample_params(3, 96, 128)
    aug.rng_state = state
    v1, _ = aug(x)
    assert_like_torchvision("view1", v1, lambda xx: torchvision_view(xx, p1, aug.config["view1"], (size, size), kernel), x)
    for k in others:
        assert maxdiff(v1, torchvision_view(x, p1, aug.config["view1"], (size, size), k)) > 1e-4


# --------------------------------------------------------------------------- 2b. parameter statistics


@pytest.fixture(scope="module")
def paper_params():
    return byol_rs.Augment(32, seed=123).sample_params(N_STATS, 96, 128)


@pytest.mark.parametrize("view,key,p", [
    (0, "flip", 0.5), (1, "flip", 0.5),
    (0, "jitter", 0.8), (1, "jitter", 0.8),
    (0, "grayscale", 0.2), (1, "grayscale", 0.2),
    (0, "blur", 1.0), (1, "blur", 0.1),
    (0, "solarize", 0.0), (1, "solarize", 0.2),
])
def test_paper_probabilities(paper_params, view, key, p):
    params = paper_params[view]
    flags = ~torch.isnan(params["blur_sigma"]) if key == "blur" else params[key]
    assert flags.dtype == torch.bool and flags.shape == (N_STATS,)
    assert_rate(flags, p, f"view{view + 1}.{key}")


def test_flags_are_independent(paper_params):
    # P(flip and grayscale) = 0.5 * 0.2 in view 2; the two views draw independently too.
    p1, p2 = paper_params
    assert_rate(p2["flip"] & p2["grayscale"], 0.1, "flip & grayscale")
    assert_rate(p1["flip"] & p2["flip"], 0.25, "view1.flip & view2.flip")
    assert_rate(p2["solarize"] & ~torch.isnan(p2["blur_sigma"]), 0.02, "solarize & blur")


@pytest.mark.parametrize("op,lo,hi", [(0, 0.6, 1.4), (1, 0.6, 1.4), (2, 0.8, 1.2), (3, -0.1, 0.1)])
def test_jitter_factor_ranges_are_uniform(paper_params, op, lo, hi):
    for params in paper_params:
        on = params["jitter"]
        f = params["jitter_factors"]
        assert torch.isnan(f[~on]).all() and (params["jitter_order"][~on] == -1).all()
        x = f[on, op]
        n = x.numel()
        assert x.min() >= lo and x.max() <= hi
        assert x.min() < lo + 0.01 * (hi - lo) and x.max() > hi - 0.01 * (hi - lo)  # the range is covered
        se = (hi - lo) / math.sqrt(12 * n)
        assert abs(x.mean().item() - (lo + hi) / 2) <= Z * se
        assert ks_uniform(x, lo, hi) <= KS_001 / math.sqrt(n)


def test_jitter_order_is_a_uniform_permutation(paper_params):
    orders = torch.cat([p["jitter_order"][p["jitter"]] for p in paper_params])
    assert (orders.sort(dim=1).values == torch.arange(4)).all()  # each row is a permutation
    codes = orders @ torch.tensor([64, 16, 4, 1])
    counts = torch.bincount(codes, minlength=256)
    perms = [sum(d * w for d, w in zip(p, [64, 16, 4, 1])) for p in itertools.permutations(range(4))]
    assert counts[perms].sum() == orders.shape[0]
    n, q = orders.shape[0], 1 / 24
    se = math.sqrt(q * (1 - q) / n)
    freqs = counts[perms].double() / n
    assert ((freqs - q).abs() <= Z * se).all(), freqs
    # the position of each op is uniform too (brightness first a quarter of the time)
    first = torch.bincount(orders[:, 0], minlength=4).double() / n
    assert ((first - 0.25).abs() <= Z * math.sqrt(0.25 * 0.75 / n)).all(), first


def test_blur_sigma_range(paper_params):
    p1, p2 = paper_params
    s = p1["blur_sigma"]
    assert not torch.isnan(s).any()
    assert s.min() >= 0.1 and s.max() <= 2.0
    se = 1.9 / math.sqrt(12 * N_STATS)
    assert abs(s.mean().item() - 1.05) <= Z * se
    assert ks_uniform(s, 0.1, 2.0) <= KS_001 / math.sqrt(N_STATS)
    s2 = p2["blur_sigma"][~torch.isnan(p2["blur_sigma"])]
    assert s2.min() >= 0.1 and s2.max() <= 2.0


def test_crop_boxes_inside_with_scale_and_ratio_up_to_rounding(paper_params):
    H, W = 96, 128
    for params in paper_params:
        c = params["crop"]
        assert c.dtype == torch.int64 and c.shape == (N_STATS, 4)
        top, left, h, w = c.unbind(1)
        assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
        assert (top + h <= H).all() and (left + w <= W).all()
        # torchvision's fallback for a 4:3 image is the whole image
        fallback = (c == torch.tensor([0, 0, H, W])).all(1)
        h, w = h[~fallback].double(), w[~fallback].double()
        # w = round(sqrt(T r)), h = round(sqrt(T / r)) with T / (H W) in [0.08, 1] and r in [3/4, 4/3]
        assert ((w + 0.5) * (h + 0.5) >= 0.08 * H * W).all()
        assert ((w - 0.5) * (h - 0.5) <= H * W).all()
        assert ((w - 0.5) / (h + 0.5) <= 4 / 3).all() and ((w + 0.5) / (h - 0.5) >= 3 / 4).all()
        area = h * w / (H * W)
        assert area.min() < 0.09 and area.max() > 0.9  # the whole range is used
        ratio = w / h
        assert ratio.min() < 0.78 and ratio.max() > 1.3


def test_crop_distribution_matches_torchvision_random_resized_crop(paper_params):
    torch.manual_seed(0)
    rrc = v2.RandomResizedCrop(32, antialias=True)
    img = torch.empty(3, 96, 128)
    ref = [rrc.make_params([img]) for _ in range(N_STATS)]
    ref = torch.tensor([[r["top"], r["left"], r["height"], r["width"]] for r in ref], dtype=torch.float64)
    for params in paper_params:
        got = params["crop"].double()
        for j, name in enumerate(["top", "left", "height", "width"]):
            a, b = got[:, j], ref[:, j]
            se = math.sqrt(a.var().item() / a.numel() + b.var().item() / b.numel())
            assert abs(a.mean().item() - b.mean().item()) <= Z * se, name
        area_a = got[:, 2] * got[:, 3] / (96 * 128)
        area_b = ref[:, 2] * ref[:, 3] / (96 * 128)
        # two-sample KS at p = 0.001: 1.95 * sqrt(2 / n)
        assert ks_two_sample(area_a, area_b) <= KS_001 * math.sqrt(2 / N_STATS)
        fb_a = (got == torch.tensor([0.0, 0.0, 96.0, 128.0])).all(1).double().mean().item()
        fb_b = (ref == torch.tensor([0.0, 0.0, 96.0, 128.0])).all(1).double().mean().item()
        pooled = (fb_a + fb_b) / 2
        assert abs(fb_a - fb_b) <= Z * math.sqrt(2 * pooled * (1 - pooled) / N_STATS) + 1e-12


def test_crop_area_and_log_ratio_uniform_when_nothing_is_rejected():
    # scale <= 0.5 on a 1000x1000 image: every first try fits, so area and log-ratio are
    # exactly the configured uniforms up to rounding of h and w to whole pixels.
    p1, p2 = byol_rs.Augment(32, crop_scale=(0.08, 0.5), seed=7).sample_params(N_STATS, 1000, 1000)
    for params in (p1, p2):
        top, left, h, w = params["crop"].double().unbind(1)
        area = h * w / 1e6
        log_ratio = torch.log(w / h)
        lo, hi = math.log(3 / 4), math.log(4 / 3)
        # rounding: |h - h*| <= 0.5 with h* >= 245 moves log-ratio by <= 0.0041, area by <= 0.0009
        slack_ratio, slack_area = 0.0041 / (hi - lo), 0.0009 / 0.42
        assert ks_uniform(log_ratio, lo, hi) <= KS_001 / math.sqrt(N_STATS) + slack_ratio
        assert ks_uniform(area, 0.08, 0.5) <= KS_001 / math.sqrt(N_STATS) + slack_area
        assert abs(log_ratio.mean().item()) <= Z * (hi - lo) / math.sqrt(12 * N_STATS) + 0.001
        assert abs(area.mean().item() - 0.29) <= Z * 0.42 / math.sqrt(12 * N_STATS) + 0.0005
        # position uniform over the valid offsets
        u_top = (top + 0.5) / (1000 - h + 1)
        u_left = (left + 0.5) / (1000 - w + 1)
        for u in (u_top, u_left):
            assert abs(u.mean().item() - 0.5) <= Z / math.sqrt(12 * N_STATS)


def test_overrides_show_in_config_and_sampled_probabilities():
    aug = byol_rs.Augment(32, blur_p=0.5, view2={"solarize_p": 0.7}, view1={"flip_p": 0.0, "hue": 0.5, "brightness": 1.5},
                          seed=11)
    cfg = aug.config
    assert cfg["view1"]["blur_p"] == 0.5 and cfg["view2"]["blur_p"] == 0.5
    assert cfg["view1"]["solarize_p"] == 0.0 and cfg["view2"]["solarize_p"] == 0.7
    assert cfg["view1"]["flip_p"] == 0.0 and cfg["view2"]["flip_p"] == 0.5
    assert cfg["view1"]["hue"] == 0.5 and cfg["view2"]["hue"] == 0.1
    assert cfg["size"] == [32, 32] and cfg["seed"] == 11
    p1, p2 = aug.sample_params(N_STATS, 64, 64)
    assert_rate(~torch.isnan(p1["blur_sigma"]), 0.5, "view1.blur")
    assert_rate(~torch.isnan(p2["blur_sigma"]), 0.5, "view2.blur")
    assert_rate(p1["solarize"], 0.0, "view1.solarize")
    assert_rate(p2["solarize"], 0.7, "view2.solarize")
    assert_rate(p1["flip"], 0.0, "view1.flip")
    assert_rate(p2["flip"], 0.5, "view2.flip")
    hue = p1["jitter_factors"][p1["jitter"], 3]
    assert hue.min() < -0.49 and hue.max() > 0.49
    b = p1["jitter_factors"][p1["jitter"], 0]  # uniform on [max(0, 1 - 1.5), 2.5]
    assert b.min() >= 0.0 and b.min() < 0.01 and b.max() > 2.49 and b.max() <= 2.5
    assert ks_uniform(b, 0.0, 2.5) <= KS_001 / math.sqrt(b.numel())
    assert p2["jitter_factors"][p2["jitter"], 3].abs().max() <= 0.1


def test_small_image_preset_config():
    cfg = byol_rs.Augment.small_image(28, seed=3).config
    assert cfg["view1"]["blur_p"] == 0.0 and cfg["view2"]["blur_p"] == 0.0
    assert cfg["view1"]["solarize_p"] == 0.0 and cfg["view2"]["solarize_p"] == 0.2
    assert cfg["mean"] == [] and cfg["std"] == [] and cfg["size"] == [28, 28]
    cfg = byol_rs.Augment.byol(224).config
    assert cfg["view1"]["blur_p"] == 1.0 and cfg["view2"]["blur_p"] == 0.1
    assert cfg["mean"] == pytest.approx(list(byol_rs.augment.IMAGENET_MEAN), rel=K * eps())  # held in fp32


# --------------------------------------------------------------------------- 3. per-sample randomness


def test_each_sample_gets_its_own_parameters():
    x = photos_uint8()[:1].repeat(16, 1, 1, 1)  # one photo, 16 times
    aug = byol_rs.Augment(48, seed=0)
    state = aug.rng_state
    p1, p2 = aug.sample_params(16, 96, 128)
    aug.rng_state = state
    v1, v2 = aug(x)
    for v in (v1, v2):
        flat = v.flatten(1)
        dist = torch.cdist(flat, flat)
        off_diagonal = dist[~torch.eye(16, dtype=torch.bool)]
        assert off_diagonal.min() > 1.0, "two samples got the same view"
    assert len({tuple(b) for b in p1["crop"].tolist()}) == 16
    assert len({tuple(b) for b in p2["crop"].tolist()}) == 16
    assert len(set(p1["jitter_factors"][:, 0].tolist())) > 1
    assert not torch.equal(v1, v2)


# --------------------------------------------------------------------------- 4. reproducibility


def test_same_seed_same_views_different_seed_different():
    x = photos_uint8(2)
    a1, a2 = byol_rs.Augment(48, seed=42)(x)
    b1, b2 = byol_rs.Augment(48, seed=42)(x)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    c1, c2 = byol_rs.Augment(48, seed=43)(x)
    assert not torch.equal(a1, c1) and not torch.equal(a2, c2)
    # the second call on the same object draws new parameters
    aug = byol_rs.Augment(48, seed=42)
    first, second = aug(x), aug(x)
    assert torch.equal(first[0], a1) and not torch.equal(second[0], a1)


def test_rng_state_save_and_restore_reproduces_next_call():
    x = photos_uint8(2)
    aug = byol_rs.Augment(48, seed=9)
    aug(x)
    state = aug.rng_state
    assert isinstance(state, tuple) and len(state) == 4 and all(isinstance(s, int) for s in state)
    want = aug(x)
    assert aug.rng_state != state
    aug.rng_state = state
    assert aug.rng_state == state
    got = aug(x)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # and onto another object with the same config
    other = byol_rs.Augment(48, seed=0)
    other.rng_state = list(state)
    got = other(x)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_sample_params_draws_exactly_what_a_call_draws():
    x = photos_uint8(2)
    aug = byol_rs.Augment(48, seed=9)
    s0 = aug.rng_state
    aug(x)
    after_call = aug.rng_state
    aug.rng_state = s0
    aug.sample_params(6, 96, 128)
    assert aug.rng_state == after_call


# --------------------------------------------------------------------------- 5. inputs and outputs


@pytest.mark.parametrize("channels", [3, 1])
def test_nchw_and_nhwc_uint8_give_the_same_views(channels):
    x = photos_uint8(2, channels)
    kw = dict(mean=None, std=None) if channels == 1 else {}
    ref = byol_rs.Augment(48, seed=5, **kw)(x)
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    for layout in ["auto", "NHWC"]:
        got = byol_rs.Augment(48, seed=5, layout=layout, **kw)(nhwc)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]), layout
    got = byol_rs.Augment(48, seed=5, layout="NCHW", **kw)(x)
    assert torch.equal(got[0], ref[0])
    # a non-contiguous NHWC view of an NCHW tensor
    got = byol_rs.Augment(48, seed=5, **kw)(x.permute(0, 2, 3, 1))
    assert torch.equal(got[0], ref[0])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("strided", ["nhwc_storage", "expanded", "sliced"])
def test_strided_inputs_give_the_views_of_their_contiguous_copy(strided, dtype):
    # The CPU kernel reads the batch through its strides; no layout may change a value.
    base = photos_uint8(2)
    base = base if dtype == torch.uint8 else base.float() / 255
    if strided == "nhwc_storage":
        x = base.contiguous(memory_format=torch.channels_last)  # NCHW shape, NHWC strides
    elif strided == "expanded":
        x = base[:1].expand(5, -1, -1, -1)  # batch stride 0
    else:
        x = base[:, :, 3:90:2, 1::3]  # offset and steps in both spatial axes
    got = byol_rs.Augment(40, seed=11)(x)
    want = byol_rs.Augment(40, seed=11)(x.contiguous())
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_uint8_and_float_input_agree(dtype):
    x = photos_uint8(2)
    ref = byol_rs.Augment(48, seed=6, mean=None, std=None)(x)
    got = byol_rs.Augment(48, seed=6, mean=None, std=None)(x.to(dtype) / 255)
    # The floor: the input's own rounding, measured (float16 cannot hold k/255 exactly: 2.4e-4),
    # and at least one fp32 ulp of 1; K = 10 times it covers the jitter factors' amplification
    # (up to ~3.5x). Measured: 4.3e-4 for float16 (0.18 of the tolerance), 0 otherwise.
    rounding = ((x.to(dtype) / 255).double() - x.double() / 255).abs().max().item()
    tol = K * max(rounding, eps())
    assert maxdiff(got[0], ref[0]) <= tol and maxdiff(got[1], ref[1]) <= tol


def test_one_channel_input_gives_one_channel_output():
    x = photos_uint8(2, channels=1)
    v1, v2 = byol_rs.Augment.small_image(28, seed=1)(x)
    assert v1.shape == (6, 1, 28, 28) and v2.shape == (6, 1, 28, 28)
    assert v1.min() >= 0 and v1.max() <= 1
    # with a one-value mean/std
    n1, _ = byol_rs.Augment.small_image(28, seed=1, mean=(0.5,), std=(0.25,))(x)
    assert_like_torchvision("normalised", n1, lambda vv: (vv - 0.5) / 0.25, v1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_output_dtype_is_the_rounded_float32_output(dtype):
    x = photos_uint8(2)
    ref = byol_rs.Augment(48, seed=8)(x)
    got = byol_rs.Augment(48, seed=8, dtype=dtype)(x)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    assert torch.equal(got[0], ref[0].to(dtype)) and torch.equal(got[1], ref[1].to(dtype))


def test_batch_of_one_and_non_square_output():
    x = photos_uint8()[:1]
    v1, v2 = byol_rs.Augment((40, 56), seed=2)(x)
    assert v1.shape == (1, 3, 40, 56) and v2.shape == (1, 3, 40, 56)
    assert v1.dtype == torch.float32 and v1.is_contiguous() and torch.isfinite(v1).all()


@pytest.mark.parametrize("mean,std", [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5,), (0.2,))])
def test_normalisation_matches_manual(mean, std):
    x = photos_uint8(2)
    raw = byol_rs.Augment(48, seed=12, mean=None, std=None)(x)
    norm = byol_rs.Augment(48, seed=12, mean=mean, std=std)(x)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    for r, n in zip(raw, norm):
        assert r.min() >= 0 and r.max() <= 1
        assert_like_torchvision("normalised", n, lambda rr: (rr - m.to(rr.dtype)) / s.to(rr.dtype), r)


# --------------------------------------------------------------------------- 6. errors


BAD_CONFIGS = [
    (dict(flip_p=1.5), ByolValueError, r"view1\.flip_p"),
    (dict(view2={"solarize_p": -0.1}), ByolValueError, r"view2\.solarize_p"),
    (dict(view1={"jitter_p": 2.0}), ByolValueError, "jitter_p"),
    (dict(grayscale_p=-1e-9), ByolValueError, "grayscale_p"),
    (dict(blur_p=1.01), ByolValueError, "blur_p"),
    (dict(crop_scale=(0.9, 0.1)), ByolValueError, "crop_scale"),
    (dict(crop_scale=(0.0, 1.0)), ByolValueError, "crop_scale"),
    (dict(crop_ratio=(4 / 3, 3 / 4)), ByolValueError, "crop_ratio"),
    (dict(hue=0.6), ByolValueError, "hue"),
    (dict(brightness=-0.1), ByolValueError, "brightness"),
    (dict(blur_sigma=(2.0, 0.1)), ByolValueError, "blur_sigma"),
    (dict(solarize_threshold=1.5), ByolValueError, "solarize_threshold"),
    (dict(interpolation="nearest"), ByolValueError, "interpolation"),
    (dict(blur_kernel=8), ByolValueError, "blur_kernel"),
    (dict(blur_kernel=-3), ByolValueError, "blur_kernel"),
    (dict(view1={"blurp": 1.0}), ByolTypeError, "blurp"),
    (dict(blurp=1.0), ByolTypeError, "blurp"),
    (dict(view1={"flip_p": "0.5"}), ByolTypeError, "flip_p"),
    (dict(crop_scale=[0.1, 0.5, 0.9]), ByolTypeError, "crop_scale"),
    (dict(view2={"interpolation": 3}), ByolTypeError, "interpolation"),
    (dict(brightness=True), ByolTypeError, "brightness"),
    (dict(mean=(0.5, 0.5, 0.5), std=(0.2,)), ByolValueError, "std"),
    (dict(mean=(0.5, 0.5, 0.5), std=(0.2, 0.0, 0.2)), ByolValueError, "std"),
    (dict(mean=(0.5, 0.5), std=(0.2, 0.2)), ByolValueError, "mean"),
    (dict(mean=(0.5, 0.5, 0.5), std=None), ByolTypeError, "mean"),
    (dict(dtype=torch.int8), ByolTypeError, "dtype"),
    (dict(seed=-1), ByolTypeError, "seed"),
    (dict(layout="CHW"), ByolTypeError, "layout"),
    (dict(size=0), ByolValueError, "size"),
    (dict(size="32"), ByolTypeError, "size"),
]


@pytest.mark.parametrize("kwargs,exc,match", BAD_CONFIGS, ids=[m.replace("\\", "") + f"-{i}" for i, (_, _, m) in enumerate(BAD_CONFIGS)])
def test_bad_config_raises_clear_error(kwargs, exc, match):
    kwargs = dict(kwargs)
    size = kwargs.pop("size", 32)
    with pytest.raises(exc, match=match) as info:
        byol_rs.Augment(size, **kwargs)
    assert isinstance(info.value, ByolError)
    assert isinstance(info.value, ValueError if exc is ByolValueError else TypeError)


BAD_INPUTS = [
    ("rank3", lambda: torch.rand(3, 32, 32), {}, ValueError, "images"),
    ("rank5", lambda: torch.rand(2, 1, 3, 32, 32), {}, ValueError, "images"),
    ("2_channels", lambda: torch.rand(2, 2, 32, 32), {}, ValueError, "images"),
    ("4_channels", lambda: torch.rand(2, 4, 32, 32), {}, ValueError, "images"),
    ("4_channels_nhwc", lambda: torch.randint(0, 256, (2, 32, 32, 4), dtype=torch.uint8), {}, ValueError, "images"),
    ("nhwc_layout_on_nchw", lambda: torch.rand(2, 3, 32, 32), {"layout": "NHWC"}, ValueError, "images"),
    ("above_one", lambda: torch.rand(2, 3, 32, 32) + 0.5, {}, ValueError, r"images.*\[0, 1\]"),
    ("below_zero", lambda: torch.rand(2, 3, 32, 32) - 0.5, {}, ValueError, r"images.*\[0, 1\]"),
    ("uint8_scale_float", lambda: torch.randint(0, 256, (2, 3, 32, 32)).float(), {}, ValueError, "images"),
    ("nan", lambda: torch.full((2, 3, 32, 32), float("nan")), {}, ValueError, "images"),
    ("int64", lambda: torch.randint(0, 256, (2, 3, 32, 32)), {}, ValueError, "images"),
    ("empty", lambda: torch.rand(0, 3, 32, 32), {}, ValueError, "images"),
    ("numpy", lambda: np.zeros((2, 3, 32, 32), dtype=np.uint8), {}, TypeError, "images"),
    ("list", lambda: [[0.5]], {}, TypeError, "images"),
    ("mean3_on_1_channel", lambda: torch.rand(2, 1, 32, 32), {}, ValueError, "mean"),
    # fails after the parameters were drawn: the blur kernel does not fit the 8-px views
    ("kernel_too_big", lambda: torch.rand(2, 3, 32, 32), {"size": 8, "blur_kernel": 23}, ValueError, "blur_kernel"),
]


@pytest.mark.parametrize("name,make,kwargs,exc,match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_and_leaves_rng_unchanged(name, make, kwargs, exc, match):
    kwargs = dict(kwargs)
    size = kwargs.pop("size", 32)
    try:
        aug = byol_rs.Augment(size, seed=21, **kwargs)
    except ByolValueError as e:  # kernel_too_big is rejected up front
        assert name == "kernel_too_big" and "blur_kernel" in str(e)
        return
    good = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    if kwargs.get("layout") == "NHWC":
        good = good.permute(0, 2, 3, 1)
    if name != "kernel_too_big":
        aug(good)  # not at the seed's initial state
    state = aug.rng_state
    with pytest.raises(exc, match=match) as info:
        aug(make())
    assert isinstance(info.value, ByolError)
    assert aug.rng_state == state
    if name == "kernel_too_big":
        return
    # the next good call is the one a pipeline that never saw the bad call makes
    ref = byol_rs.Augment(size, seed=21, **kwargs)
    ref(good)
    got, want = aug(good), ref(good)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# Settings rejected up front, with the argument named.
def test_wrong_length_pair_names_the_argument():
    with pytest.raises(ByolError) as info:
        byol_rs.Augment(32, crop_scale=(0.1, 0.5, 0.9))
    assert "crop_scale" in str(info.value)


@pytest.mark.parametrize("kwargs,name", [(dict(hue=float("nan")), "hue"), (dict(flip_p=float("nan")), "flip_p"),
                                         (dict(brightness=float("inf")), "brightness")])
def test_non_finite_setting_names_the_argument(kwargs, name):
    with pytest.raises(ByolValueError) as info:
        byol_rs.Augment(32, **kwargs)
    assert name in str(info.value)


def test_blur_kernel_too_large_for_output_is_rejected_at_construction():
    # Otherwise calls would fail at random, only when some sample draws the blur.
    with pytest.raises(ByolValueError, match="blur_kernel"):
        byol_rs.Augment(8, blur_kernel=23, view1={"blur_p": 0.0}, view2={"blur_p": 0.1}, seed=0)


def test_out_of_range_float_accepted_with_check_false():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 0.5
    with pytest.raises(ValueError, match="check=False"):
        byol_rs.Augment(32, seed=0)(x)
    v1, v2 = byol_rs.Augment(32, seed=0, check=False)(x)
    assert v1.shape == (2, 3, 32, 32) and torch.isfinite(v1).all() and torch.isfinite(v2).all()
    assert byol_rs.Augment(32, check=False).config["check"] is False


def test_sample_params_rejects_non_positive_sizes():
    aug = byol_rs.Augment(32)
    state = aug.rng_state
    with pytest.raises(ValueError):
        aug.sample_params(0, 32, 32)
    with pytest.raises(ValueError):
        aug.sample_params(4, 0, 32)
    assert aug.rng_state == state


# --------------------------------------------------------------------------- 7. learner integration


def make_learner(seed=3):
    return byol_rs.BYOL("convnet", in_channels=1, projector_hidden=64, predictor_hidden=64, projection_dim=32, total_steps=10,
                        augment=byol_rs.Augment.small_image(28, seed=seed))


def uint8_batches(k, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=g) for _ in range(k)]


def test_learner_steps_on_uint8_batches():
    learner = make_learner()
    assert learner.config["augment"]["seed"] == 3
    m = learner.step(uint8_batches(1)[0])
    assert m["step"] == 1 and m["updated"] and math.isfinite(m["loss"]) and 0 <= m["loss"] <= 8
    # NHWC uint8 works too (auto layout) and gives the same step
    a, b = make_learner(), make_learner()
    x = uint8_batches(1, seed=1)[0]
    ma, mb = a.step(x), b.step(x.permute(0, 2, 3, 1).contiguous())
    assert ma["loss"] == mb["loss"]
    assert_same(snapshot(a), snapshot(b))


def test_learner_augment_seed_matters():
    x = uint8_batches(1)[0]
    assert make_learner(seed=3).step(x)["loss"] != make_learner(seed=4).step(x)["loss"]


def test_save_load_restores_augment_rng(tmp_path):
    batches = uint8_batches(6)
    straight = make_learner()
    losses_straight = [straight.step(x)["loss"] for x in batches]

    first = make_learner()
    losses = [first.step(x)["loss"] for x in batches[:3]]
    path = tmp_path / "ckpt.safetensors"
    first.save(path)
    resumed = byol_rs.BYOL.load(path)
    assert resumed.step_count == 3
    losses += [resumed.step(x)["loss"] for x in batches[3:]]
    assert losses == losses_straight
    assert_same(snapshot(resumed), snapshot(straight))
    # the restored RNG matters: a pipeline restarted at its seed gives another step 4
    restart = make_learner()
    assert restart.step(batches[3])["loss"] != losses_straight[3]


@pytest.mark.parametrize("bad,match", [
    (lambda: torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), "in_channels"),  # augments, then the step rejects it
    (lambda: torch.randint(0, 256, (8, 2, 32, 32), dtype=torch.uint8), "images"),  # the pipeline rejects it
    (lambda: torch.randint(0, 256, (1, 1, 32, 32), dtype=torch.uint8), "at least 2"),  # augments, then the step rejects it
    (lambda: torch.rand(8, 1, 32, 32) * 3, r"\[0, 1\]"),
])
def test_failed_step_changes_nothing_and_rewinds_augment_rng(bad, match):
    batches = uint8_batches(3)
    learner = make_learner()
    learner.step(batches[0])
    before = snapshot(learner)
    assert any(k.startswith("optimizer_state:") for k in before)
    with pytest.raises(ValueError, match=match):
        learner.step(bad())
    assert_same(snapshot(learner), before)
    reference = make_learner()
    reference.step(batches[0])
    for x in batches[1:]:
        assert learner.step(x)["loss"] == reference.step(x)["loss"]
    assert_same(snapshot(learner), snapshot(reference))


# --------------------------------------------------------------------------- 8. CUDA


def compare_devices(case, device):
    """The same pipeline and seed on the CPU and on ``device``: views within TOL_CUDA."""
    if case == "paper":
        make, x = (lambda: byol_rs.Augment(64, seed=31)), photos_uint8(8)
    elif case == "one_channel":
        make, x = (lambda: byol_rs.Augment(32, blur_p=0.5, mean=(0.5,), std=(0.25,), seed=32)), photos_uint8(8, channels=1)
    else:
        make = lambda: byol_rs.Augment(48, interpolation="bilinear", view2={"solarize_p": 0.5}, seed=33)
        x = photos(8)
    cpu, dev = make(), make()
    for _ in range(2):  # two consecutive calls: the RNG advances identically on both devices
        c1, c2 = cpu(x)
        d1, d2 = dev(x.to(device))
        assert d1.device.type == device and d2.device.type == device
        assert maxdiff(d1.cpu(), c1) <= TOL_CUDA and maxdiff(d2.cpu(), c2) <= TOL_CUDA
        assert cpu.rng_state == dev.rng_state


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("case", ["paper", "one_channel", "bilinear_float"])
def test_cpu_and_cuda_views_agree(case):
    compare_devices(case, "cuda")
