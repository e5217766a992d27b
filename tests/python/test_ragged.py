"""Ragged batches: ``Augment(list)`` and ``BYOL.step(list)`` on images of different sizes.

1. A list of equal-size images gives the same bits as their stacked batch, with the same RNG
   draws, in every layout and dtype; a learner stepped on the list ends bit-identical.
2. Each sample of a ragged list equals torchvision's ops applied to that image alone with the
   parameters ``sample_params(sizes=...)`` reports (the crop box drawn inside its own size,
   resampled from its full-resolution pixels), within the measured floor of
   ``test_augment.assert_like_torchvision``.
3. No sample depends on another: replacing one image by another of its size changes that
   sample only, bit for bit; strided and offset images read as their contiguous copies.
4. Bad lists raise a clear error that names the entry, and leave the RNG and learner as they were.
5. On CUDA the views of a CPU list end up on the device, close to the CPU's.

Mutations checked by hand (each fails tests here): every sample's crop drawn inside images[0]'s
size (5 tests); every image read from images[0]'s pixels (5 tests); images[i]'s strides taken
from images[0] (a crash).
"""

import functools

import pytest
import skimage.data
import torch

import byol_rs
from conftest import requires_cuda
from learner_state import assert_same, snapshot
from test_augment import TOL_CUDA, assert_like_torchvision, default_kernel, maxdiff, torchvision_view

SIZES = [(171, 256), (96, 128), (240, 161), (64, 64), (130, 97)]


@functools.lru_cache(maxsize=None)
def _ragged_uint8():
    """Real photos of different sizes and aspect ratios, uint8 CHW: each a crop of a
    scikit-image photo (astronaut, coffee, chelsea, rocket, astronaut) at one of SIZES."""
    loads = [skimage.data.astronaut, skimage.data.coffee, skimage.data.chelsea, skimage.data.rocket, skimage.data.astronaut]
    out = []
    for (h, w), load, k in zip(SIZES, loads, range(len(SIZES))):
        x = torch.from_numpy(load()).permute(2, 0, 1)
        top, left = (x.shape[1] - h) * k // 5, (x.shape[2] - w) * (4 - k) // 5
        out.append(x[:, top:top + h, left:left + w].contiguous())
    return out


def ragged(dtype=torch.uint8):
    images = [x.clone() for x in _ragged_uint8()]
    return images if dtype == torch.uint8 else [x.to(dtype) / 255 for x in images]


def equal_size_photos(n=4):
    """n crops of one photo, all 96 x 128, uint8 CHW."""
    x = torch.from_numpy(skimage.data.coffee()).permute(2, 0, 1)
    return torch.stack([x[:, 20 * i:20 * i + 96, 30 * i:30 * i + 128] for i in range(n)]).contiguous()


# --------------------------------------------------------------------------- 1. equal sizes


@pytest.mark.parametrize("form", ["uint8", "float", "nhwc", "one_channel"])
def test_equal_size_list_gives_the_bits_of_the_batch(form):
    x = equal_size_photos()
    kw = {}
    if form == "float":
        x = x.float() / 255
    elif form == "nhwc":
        x = x.permute(0, 2, 3, 1).contiguous()
    elif form == "one_channel":
        x, kw = x[:, :1].contiguous(), dict(mean=None, std=None)
    batch, listed = byol_rs.Augment(48, seed=3, **kw), byol_rs.Augment(48, seed=3, **kw)
    for _ in range(2):  # and the RNG ends where the batch's does
        want, got = batch(x), listed(list(x))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert listed.rng_state == batch.rng_state


def test_learner_stepped_on_an_equal_size_list_ends_bit_identical():
    x = equal_size_photos(6)
    make = lambda: byol_rs.BYOL("convnet", small_image=True, total_steps=10, warmup_steps=1, seed=0,  # noqa: E731
                                projector_hidden=64, predictor_hidden=64, projection_dim=32,
                                augment=byol_rs.Augment.small_image(32, seed=1))
    a, b = make(), make()
    for _ in range(2):
        ma, mb = a.step(x), b.step(list(x))
        assert ma["loss"] == mb["loss"]
    assert_same(snapshot(a), snapshot(b))
    a.step(x), b.step(x)  # the augmentation RNGs ended alike too
    assert_same(snapshot(a), snapshot(b))


# --------------------------------------------------------------------------- 2. each sample = torchvision alone


@pytest.mark.parametrize("case", ["paper_bicubic", "bilinear_solarize"])
def test_each_ragged_sample_equals_torchvision_on_its_own_image(case):
    if case == "paper_bicubic":
        aug = byol_rs.Augment(48, mean=None, std=None, seed=1)
    else:
        aug = byol_rs.Augment(40, interpolation="bilinear", grayscale_p=0.5,
                              view2={"solarize_p": 0.5, "solarize_threshold": 0.4}, mean=None, std=None, seed=2)
    images = ragged(torch.float32)
    state = aug.rng_state
    p1, p2 = aug.sample_params(sizes=[tuple(x.shape[1:]) for x in images])
    aug.rng_state = state
    v1, v2 = aug(images)
    cfg = aug.config
    size = tuple(cfg["size"])
    kernel = cfg["blur_kernel"] or default_kernel(size)
    for i, x in enumerate(images):
        h, w = x.shape[1:]
        for view, p, name in [(v1, p1, "view1"), (v2, p2, "view2")]:
            top, left, ch, cw = p["crop"][i].tolist()
            assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w, (i, p["crop"][i])
            one = {k: v[i:i + 1] for k, v in p.items()}
            assert_like_torchvision(f"{name}[{i}]", view[i:i + 1], lambda xx: torchvision_view(xx, one, cfg[name], size, kernel), x[None])
    # the crops use each image's own extent: some box reaches beyond the smallest image
    assert (p1["crop"][:, 0] + p1["crop"][:, 2]).max() > min(h for h, _ in SIZES)


def test_sample_params_for_sizes_draws_what_a_list_call_draws():
    aug = byol_rs.Augment(48, seed=4)
    images = ragged()
    s0 = aug.rng_state
    aug(images)
    after = aug.rng_state
    aug.rng_state = s0
    aug.sample_params(sizes=[tuple(x.shape[1:]) for x in images])
    assert aug.rng_state == after


# --------------------------------------------------------------------------- 3. independence and strides


def test_replacing_one_image_changes_only_its_sample():
    images = ragged()
    other = [x.clone() for x in images]
    other[2] = torch.flip(other[2], dims=[1, 2]).contiguous()  # another image of the same size
    a, b = byol_rs.Augment(48, seed=5)(images), byol_rs.Augment(48, seed=5)(other)
    for va, vb in zip(a, b):
        for i in range(len(images)):
            same = torch.equal(va[i], vb[i])
            assert same == (i != 2), i


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_strided_images_read_as_their_contiguous_copies(dtype):
    big = ragged(dtype)
    strided = [big[0][:, 5:150:2, 3::3], big[1].permute(1, 2, 0).contiguous().permute(2, 0, 1),
               big[2][:, 10:200, 7:150], big[3], big[4][:, 1:]]
    got = byol_rs.Augment(40, seed=6)(strided)
    want = byol_rs.Augment(40, seed=6)([x.contiguous() for x in strided])
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_learner_steps_on_a_ragged_list():
    learner = byol_rs.BYOL("convnet", small_image=True, total_steps=10, warmup_steps=1, seed=0,
                           projector_hidden=64, predictor_hidden=64, projection_dim=32,
                           augment=byol_rs.Augment.small_image(32, seed=1))
    images = ragged()
    losses = [learner.step(images)["loss"] for _ in range(3)]
    assert learner.step_count == 3 and all(0 <= v <= 4 for v in losses)


# --------------------------------------------------------------------------- 4. bad lists


@pytest.mark.parametrize("images,exc,match", [
    ([], ValueError, r"images: expected at least one image"),
    ([torch.zeros(3, 8)], ValueError, r"images\[0\]: expected a 3-D image"),
    ([torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(1, 8, 8, dtype=torch.uint8)], ValueError, r"images\[1\]: has 1 channel\(s\) but images\[0\] has 3"),
    ([torch.zeros(3, 8, 8), torch.full((3, 8, 8), 2.0)], ValueError, r"images\[1\]: float images must lie in \[0, 1\]"),
    ([torch.zeros(3, 8, 8, dtype=torch.int32)], ValueError, r"images\[0\]: expected uint8"),
    ([torch.zeros(3, 8, 8), "photo.jpg"], TypeError, r"images\[1\]: expected a torch.Tensor, got str"),
    ("photo.jpg", TypeError, r"images: expected a torch.Tensor or a list"),
])
def test_bad_lists_raise_and_leave_the_rng(images, exc, match):
    aug = byol_rs.Augment(32, seed=0)
    state = aug.rng_state
    with pytest.raises(exc, match=match):
        aug(images)
    assert aug.rng_state == state


def test_failed_ragged_step_changes_nothing():
    make = lambda: byol_rs.BYOL("convnet", small_image=True, total_steps=10, warmup_steps=1, seed=0,  # noqa: E731
                                projector_hidden=64, predictor_hidden=64, projection_dim=32,
                                augment=byol_rs.Augment.small_image(32, seed=1))
    learner, twin = make(), make()
    learner.step(ragged()), twin.step(ragged())
    before = snapshot(learner)
    for bad, match in (([ragged()[0]], "at least 2 images"),
                       (ragged()[:2] + [torch.zeros(1, 40, 40, dtype=torch.uint8)], r"images\[2\]: has 1 channel")):
        with pytest.raises(ValueError, match=match):
            learner.step(bad)
        assert_same(snapshot(learner), before)
    learner.step(ragged()), twin.step(ragged())  # and the augmentation RNG was rewound
    assert_same(snapshot(learner), snapshot(twin))


# --------------------------------------------------------------------------- 5. CUDA


@pytest.mark.cuda
@requires_cuda
def test_cuda_views_of_a_cpu_list_are_on_the_device_and_match_the_cpu():
    images = ragged()
    c1, c2 = byol_rs.Augment(48, seed=7)(images)
    for views in (byol_rs.Augment(48, seed=7)(images, device="cuda"),  # cropped on the host
                  byol_rs.Augment(48, seed=7)([x.cuda() for x in images])):  # cropped on the device
        assert all(v.device.type == "cuda" for v in views)
        assert maxdiff(views[0].cpu(), c1) <= TOL_CUDA and maxdiff(views[1].cpu(), c2) <= TOL_CUDA
    learner = byol_rs.BYOL("convnet", small_image=True, total_steps=10, warmup_steps=1, seed=0, device="cuda",
                           projector_hidden=64, predictor_hidden=64, projection_dim=32,
                           augment=byol_rs.Augment(48, seed=7))
    learner.step(images)  # CPU list, CUDA learner: cropped on the host, the rest on the device
    assert learner.step_count == 1
