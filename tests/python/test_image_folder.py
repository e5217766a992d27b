"""byol_rs.data.ImageFolder and collate_images against independent references: PIL's own
decode of each file, torchvision.datasets.ImageFolder's labels, PIL's resize, and the raw
arrays the 16-bit files were written from. The fixtures are cut from scikit-image's bundled
photos at test time and never committed.

Each test's docstring names the mutations of byol_rs/folder.py it was checked, by hand, to
fail under (mutate, rerun this file, restore)."""

import os
import re
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torchvision")
pytest.importorskip("skimage")
import skimage.data  # noqa: E402
import torchvision  # noqa: E402

from byol_rs import ByolTypeError, ByolValueError  # noqa: E402
from byol_rs.data import DatasetError, ImageFolder, ImageSkippedWarning, collate_images  # noqa: E402
from byol_rs.folder import ImageDecodeError, NoReadableImageError  # noqa: E402

EXTS = (".jpg", ".jpeg", ".png", ".webp")

# torchvision's libjpeg-turbo against PIL's (Pillow 13.0, built on libjpeg-turbo 3.2.0): the
# max abs difference, measured over 144 JPEGs (4 photos x RGB/L/CMYK x 4:4:4/4:2:2/4:2:0 x
# baseline/progressive x quality 75/95), is 0. Both libraries' wheels use libjpeg-turbo.
JPEG_TOL = 0
# With max_side, against PIL's bilinear (antialiased) resize of PIL's full decode, measured:
# PNG/WebP (decoded in full, then torchvision's antialiased resize): max 1 level.
RESIZE_TOL = 1
# JPEG reduced by DCT scaling (PIL's draft mode) and then resized, on these fixtures: max 29,
# mean <= 2.89 levels (astronaut_L.jpg at 1/4 scale, which is then the exact size: DCT scaling
# alone, about a box filter; PIL's BOX resize differs from its BILINEAR by 2.90 there). Over
# 4 full photos x RGB/L/CMYK x max_side 64..300: max 67, mean <= 3.4 (BOX: 77, 3.3).
DRAFT_MAX, DRAFT_MEAN = 32, 3.0
# JPEG DCT-scaled by 1/k alone (draft_side), against PIL's BOX reduction by k of the full
# decode over whole blocks, measured on these fixtures at k = 2, 4, 8: max 50 (rocket.jpeg's
# 4:2:2 chroma at edges), mean <= 1.24 levels.
DCT_BOX_MAX, DCT_BOX_MEAN = 64, 2.0


def _crop(a, h, w, y=0, x=0):
    return np.ascontiguousarray(a[y:y + h, x:x + w])


def _write_png16_rgb(path, a):
    """A 16-bit RGB PNG written by hand (PIL cannot write one): a is uint16 [H, W, 3]."""
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


def _round16(v):
    """16-bit to 8-bit as round(v / 257): the reference for 16-bit files. PIL's own
    convert("RGB") of an I;16 image clips at 255 instead of scaling, so it is no reference."""
    return np.floor(v.astype(np.float64) / 257 + 0.5).astype(np.uint8)


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """Three class folders of JPEG, PNG and WebP files in every mode, several sizes, an
    upper-case extension and a nested subfolder; returns (root, {path: reference RGB array})."""
    root = tmp_path_factory.mktemp("photos")
    astro, cat, cof, rkt = skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()
    ref = {}

    def save(rel, arr, mode, **kw):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).convert(mode).save(p, **kw)
        return str(p)

    save("cat/chelsea.jpg", cat, "RGB", quality=90)                              # 300x451, 4:2:0
    save("cat/crop_L.png", _crop(cat, 123, 217, 40, 60), "L")
    alpha = np.arange(150 * 190, dtype=np.uint8).reshape(150, 190)  # every alpha value, 0 included
    save("cat/crop_RGBA.webp", np.dstack([_crop(cat, 150, 190), alpha]), "RGBA", lossless=True)
    save("cat/UPPER.JPG", _crop(cat, 200, 160, 10, 100), "RGB", quality=80, subsampling=0, progressive=True)
    save("cat/nested/deeper/coffee_CMYK.jpeg", _crop(cof, 300, 333), "CMYK", quality=92)
    save("cat/nested/coffee_lossy.webp", _crop(cof, 211, 277, 50, 50), "RGB", quality=70)
    (root / "rocket").mkdir()
    Image.fromarray(_crop(rkt, 180, 140, 100, 200)).convert("P").save(root / "rocket/rocket_P.png", transparency=0)
    save("rocket/rocket.jpeg", rkt, "RGB", quality=85, subsampling=1)             # 427x640, 4:2:2
    save("rocket/rocket_L.jpg", _crop(rkt, 240, 300), "L", quality=90)
    save("rocket/rocket_LA.png", np.dstack([_crop(rkt, 64, 97)[..., 0], np.full((64, 97), 128, np.uint8)]), "LA")
    g16 = (_crop(rkt, 130, 170, 200, 200)[..., 1].astype(np.uint16) * 257
           + np.arange(130 * 170, dtype=np.uint16).reshape(130, 170) % 257)
    Image.fromarray(g16).save(root / "rocket/rocket_I16.png")                  # mode I;16
    ref[str(root / "rocket/rocket_I16.png")] = np.repeat(_round16(g16)[..., None], 3, 2)
    c16 = (_crop(astro, 90, 120).astype(np.uint16) * 257 + np.uint16(200))
    _write_png16_rgb(root / "rocket/astro_RGB16.png", c16)
    ref[str(root / "rocket/astro_RGB16.png")] = _round16(c16)
    save("space/astronaut.png", _crop(astro, 512, 384, 0, 64), "RGB")
    save("space/astronaut_RGBA.png", np.dstack([_crop(astro, 77, 301), np.full((77, 301), 7, np.uint8)]), "RGBA")
    save("space/astronaut_L.jpg", _crop(astro, 256, 200, 100, 100), "L", quality=95)
    save("space/astronaut.WebP", _crop(astro, 160, 224, 300, 200), "RGB", lossless=True)
    (root / "space/notes.txt").write_text("not an image: its extension is not listed\n")
    for p in sorted(str(q) for q in root.rglob("*") if q.suffix.lower() in EXTS):
        if p not in ref:
            with Image.open(p) as im:
                ref[p] = np.asarray(im.convert("RGB"))
    return root, ref


@pytest.fixture(scope="session")
def bad_folder(tmp_path_factory):
    """An unlabelled (flat) folder: three good files and every bad case; returns
    (root, good paths, bad paths). Sorted, the last file is bad, so substitution wraps."""
    root = tmp_path_factory.mktemp("bad")
    a = skimage.data.chelsea()
    good = []
    for name, (h, w) in (("a_good.png", (40, 50)), ("d_good.jpg", (64, 48)), ("h_good.webp", (33, 70))):
        Image.fromarray(_crop(a, h, w)).save(root / name, **({"lossless": True} if name.endswith("webp") else {}))
        good.append(str(root / name))
    jpg = (root / "d_good.jpg").read_bytes()
    png = (root / "a_good.png").read_bytes()
    bad = {
        "b_truncated.jpg": jpg[: len(jpg) // 2],
        "c_zero.png": b"",
        "e_text.png": b"this is a text file with an image extension\n",
        "f_truncated.png": png[: len(png) // 2],
        "g_corrupt.webp": b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(range(256)) * 4,
        "z_garbage.JPEG": b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(500),
    }
    for name, data in bad.items():
        (root / name).write_bytes(data)
    os.symlink(root / "no-such-file.jpg", root / "e_dangling.jpg")  # unreadable: a dangling link
    (root / "x_dir.jpg").mkdir()  # a folder with an image's name: not a sample (as in torchvision)
    bad_paths = sorted([str(root / n) for n in bad] + [str(root / "e_dangling.jpg")])
    return root, good, bad_paths


def _rgb(t):
    return t.permute(1, 2, 0).numpy()


def test_labels_and_order_match_torchvision(photos, bad_folder):
    """classes, class_to_idx, samples (order included) and targets are torchvision's. Fails
    with the sort dropped from the recursive walk, with case-sensitive extension matching
    (UPPER.JPG and astronaut.WebP vanish), or with a non-recursive scan (nested/ vanishes)."""
    root, ref = photos
    ds = ImageFolder(root)
    tv = torchvision.datasets.ImageFolder(str(root), is_valid_file=lambda p: p.lower().endswith(EXTS))
    assert ds.classes == tv.classes == ["cat", "rocket", "space"]
    assert ds.class_to_idx == tv.class_to_idx
    assert ds.samples == tv.samples
    assert ds.targets == tv.targets
    assert sorted(p for p, _ in ds.samples) == sorted(ref)  # notes.txt is not a sample
    assert any("nested/deeper" in p for p, _ in ds.samples) and any(p.endswith("UPPER.JPG") for p, _ in ds.samples)
    flat, _, _ = bad_folder  # unlabelled: torchvision has no flat mode, but the same file list
    fl = ImageFolder(flat)
    assert fl.classes == [] and fl.class_to_idx == {} and set(fl.targets) == {-1}
    names = sorted(n for n in os.listdir(flat) if n.lower().endswith(EXTS) and not os.path.isdir(flat / n))
    assert [p for p, _ in fl.samples] == [str(flat / n) for n in names]


def test_every_mode_decodes_as_pil(photos):
    """Each item is uint8 [3, H, W] (planar memory or the decoder's interleaved HWC memory, or a
    grey plane expanded), at the file's size, and equals PIL's
    convert("RGB") exactly (JPEG within JPEG_TOL = 0, measured), and round(v / 257) for the
    16-bit files. Fails with mode=ImageReadMode.UNCHANGED (CMYK keeps 4 channels and loses
    its colours, palette gives indices, grey stays 1 channel), with the 16-bit rounding
    replaced by a shift (>> 8: off by one), or with alpha kept as a 4th channel."""
    root, ref = photos
    ds = ImageFolder(root)
    for i, (path, label) in enumerate(ds.samples):
        img, lab = ds[i]
        want = ref[path]
        assert lab == label
        dense = img.is_contiguous() or img.permute(1, 2, 0).is_contiguous() or img.stride(0) == 0
        assert img.dtype == torch.uint8 and dense and img.shape == (3, *want.shape[:2]), path
        diff = np.abs(_rgb(img).astype(int) - want.astype(int)).max()
        assert diff <= (JPEG_TOL if path.lower().endswith((".jpg", ".jpeg")) else 0), (path, diff)


def test_one_channel_is_pil_luma(photos):
    """channels=1 gives [1, H, W] equal to PIL's convert("RGB").convert("L") (ITU-R 601 luma
    in fixed point), grey files unchanged. Fails with the luma weights changed (e.g. a plain
    channel mean) or with the rounding constant dropped."""
    root, ref = photos
    ds = ImageFolder(root, channels=1)
    for i, (path, _) in enumerate(ds.samples):
        img, _ = ds[i]
        want = np.asarray(Image.fromarray(ref[path]).convert("L"))
        assert img.shape == (1, *want.shape) and img.is_contiguous(), path  # one channel: CHW = HWC
        assert np.array_equal(img[0].numpy(), want), path


def _closed_form(h, w, m):
    longer = max(h, w)
    if longer <= m:
        return h, w
    s = lambda v: max(1, int(np.floor(v * m / longer + 0.5)))  # noqa: E731
    return (m, s(w)) if h >= w else (s(h), m)


@pytest.mark.parametrize("max_side", [64, 200])
def test_max_side(photos, max_side):
    """The longer side is capped at max_side and the shorter is round(s * max_side / longer)
    (half up); pixels are close to PIL's bilinear resize of the full decode: PNG/WebP within
    RESIZE_TOL = 1, JPEG (DCT-scaled by PIL's draft mode, then resized) within DRAFT_MAX
    and DRAFT_MEAN (all measured). Fails with the shorter side floored (451x300 at 64 gives
    42 instead of 43), with the target size taken from the DCT-reduced image instead of the
    file's, with the DCT-reduced image's partial last block stretched over a whole pixel
    (coffee_CMYK.jpeg, 333 px wide, at 1/4: max 88), with a drafted CMYK JPEG not converted
    to RGB, or without antialiasing in the resize (JPEG mean and PNG max exceed the bounds)."""
    root, ref = photos
    ds = ImageFolder(root, max_side=max_side)
    for i, (path, _) in enumerate(ds.samples):
        img, _ = ds[i]
        h0, w0 = ref[path].shape[:2]
        h, w = _closed_form(h0, w0, max_side)
        dense = img.is_contiguous() or img.permute(1, 2, 0).is_contiguous() or img.stride(0) == 0
        assert img.shape == (3, h, w) and dense, (path, tuple(img.shape), (h, w))
        want = np.asarray(Image.fromarray(ref[path]).resize((w, h), Image.BILINEAR)).astype(int)
        d = np.abs(_rgb(img).astype(int) - want)
        jpeg = path.lower().endswith((".jpg", ".jpeg"))
        if (h, w) == (h0, w0):
            assert d.max() <= (JPEG_TOL if jpeg else 0), path
        elif jpeg and min(w0 // w, h0 // h) >= 2:  # DCT scaling applies
            assert d.max() <= DRAFT_MAX and d.mean() <= DRAFT_MEAN, (path, d.max(), d.mean())
        else:
            assert d.max() <= RESIZE_TOL, (path, d.max())
    gray = ImageFolder(root, max_side=max_side, channels=1)
    for i in range(len(gray)):
        img, _ = gray[i]
        h0, w0 = ref[gray.samples[i][0]].shape[:2]
        assert img.shape == (1, *_closed_form(h0, w0, max_side))


@pytest.mark.parametrize("draft_side", [30, 64, 1000])
def test_draft_side(photos, draft_side):
    """A JPEG whose shorter side holds draft_side at least twice decodes at the smallest DCT
    scale 1/k (k in 8, 4, 2) that keeps its shorter side >= draft_side, with libjpeg's scaled
    size (ceil(side / k)) and no resize: equal to PIL's own draft decode, and close to PIL's
    BOX reduction of the full decode by k (within DCT_BOX_MAX and DCT_BOX_MEAN). Every other file decodes whole, exactly. Fails with k one step too small or too
    large (>= against >), with k from the longer side, or with a resize after the draft."""
    root, ref = photos
    ds = ImageFolder(root, draft_side=draft_side)
    drafted = 0
    for i, (path, _) in enumerate(ds.samples):
        img, _ = ds[i]
        h0, w0 = ref[path].shape[:2]
        k = next((k for k in (8, 4, 2) if min(h0, w0) // k >= draft_side), 1)
        if not path.lower().endswith((".jpg", ".jpeg")) or k == 1:
            assert np.array_equal(_rgb(img), ref[path]), path
            continue
        drafted += 1
        h, w = -(-h0 // k), -(-w0 // k)
        assert img.shape == (3, h, w) and min(h, w) >= draft_side, (path, tuple(img.shape), k)
        with Image.open(path) as im:
            im.draft("RGB", (w0 // k, h0 // k))
            assert np.array_equal(_rgb(img), np.asarray(im.convert("RGB"))), path
        # over the whole k x k blocks (a partial last block spans less than a pixel of the file)
        hb, wb = h0 // k, w0 // k
        box = np.asarray(Image.fromarray(_crop(ref[path], hb * k, wb * k)).resize((wb, hb), Image.BOX)).astype(int)
        d = np.abs(_rgb(img)[:hb, :wb].astype(int) - box)
        assert d.max() <= DCT_BOX_MAX and d.mean() <= DCT_BOX_MEAN, (path, d.max(), d.mean())
    assert drafted == {30: 6, 64: 6, 1000: 0}[draft_side]


@pytest.fixture(scope="module")
def oriented(tmp_path_factory):
    """JPEG, PNG and WebP files (and one larger JPEG per orientation, for the DCT-scaled
    route) with each EXIF orientation 1-8; returns the folder."""
    root = tmp_path_factory.mktemp("exif")
    a = _crop(skimage.data.chelsea(), 100, 160, 20, 30)
    big = _crop(skimage.data.chelsea(), 200, 320)
    for o in range(1, 9):
        for name, arr, kw in ((f"o{o}.jpg", a, {"quality": 95}), (f"o{o}.png", a, {}),
                              (f"o{o}.webp", a, {"lossless": True}), (f"o{o}_big.jpg", big, {"quality": 95})):
            im = Image.fromarray(arr)
            exif = im.getexif()
            exif[0x0112] = o
            im.save(root / name, exif=exif.tobytes(), **kw)
    return root


def _upright(path, draft=None):
    """PIL's decode of ``path`` (DCT-scaled to ``draft`` if given), turned by ImageOps.exif_transpose."""
    from PIL import ImageOps

    with Image.open(path) as im:
        if draft:
            im.draft("RGB", draft)
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def test_exif_orientation_is_applied_on_every_route(oriented):
    """Each EXIF orientation 1-8 turns the image as PIL's ImageOps.exif_transpose does: JPEG
    and PNG through torchvision, WebP (whose EXIF torchvision ignores), the DCT-scaled JPEG route
    (draft_side) and the resized one (max_side, whose size comes from the upright image);
    exif_orientation=False leaves the pixels as stored. Fails with any two orientations'
    transforms swapped (6 and 8: rotations the wrong way; 5 and 7), with WebP's orientation not
    read, or with the orientation skipped on the PIL route."""
    whole = ImageFolder(oriented)
    drafted = ImageFolder(oriented, draft_side=100)
    capped = ImageFolder(oriented, max_side=80)
    stored = ImageFolder(oriented, exif_orientation=False)
    for i, (path, _) in enumerate(whole.samples):
        want = _upright(path)
        assert np.array_equal(_rgb(whole[i][0]), want), path
        if path.endswith("_big.jpg"):  # 200x320 at 1/2: PIL's draft route
            assert np.array_equal(_rgb(drafted[i][0]), _upright(path, (160, 100))), path
        assert capped[i][0].shape == (3, *_closed_form(*want.shape[:2], 80)), path
        with Image.open(path) as im:
            assert np.array_equal(_rgb(stored[i][0]), np.asarray(im.convert("RGB"))), path
    assert whole[whole.samples.index((str(oriented / "o6.jpg"), -1))][0].shape == (3, 160, 100)


def test_pil_fallback_for_formats_torchvision_cannot_read(tmp_path):
    """A BMP (extensions=(".bmp",)) is not torchvision's to decode: PIL's decode is used and
    matches PIL. Fails if the fallback is removed (the file would be skipped)."""
    a = _crop(skimage.data.coffee(), 70, 90)
    (tmp_path / "c").mkdir()
    Image.fromarray(a).save(tmp_path / "c/coffee.bmp")
    Image.fromarray(a).convert("P").save(tmp_path / "c/coffee_P.bmp")
    ds = ImageFolder(tmp_path, extensions=("BMP",), strict=True)
    for i, (path, _) in enumerate(ds.samples):
        assert np.array_equal(_rgb(ds[i][0]), np.asarray(Image.open(path).convert("RGB")))


def _good_decodes(root, good):
    ds = ImageFolder(root, strict=True)
    return {p: ds.load(i) for i, (p, _) in enumerate(ds.samples) if p in good}


def test_bad_files_are_skipped_with_a_warning_and_counted(bad_folder):
    """Truncated JPEG and PNG, a zero-byte file, a text file named .png, a corrupt WebP, JPEG
    magic followed by garbage and a dangling link are each skipped with one
    ImageSkippedWarning naming it; the next readable sample (wrapping past the end) comes in
    its place; skipped / num_skipped list them; a second pass does not retry or warn again.
    Fails if a bad file raises instead of being skipped, if the substitute is not the next
    readable one (e.g. the previous), if skips are not recorded, or if a file found bad is
    tried (and warned about) again."""
    root, good, bad = bad_folder
    ds = ImageFolder(root)
    decoded = _good_decodes(root, good)
    paths = [p for p, _ in ds.samples]
    assert str(root / "x_dir.jpg") not in paths and len(paths) == len(good) + len(bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
    named = sorted(next(p for p in bad if p in str(w.message)) for w in caught
                   if issubclass(w.category, ImageSkippedWarning))
    assert named == bad and len(caught) == len(bad)
    assert sorted(ds.skipped) == bad and ds.num_skipped == len(bad)
    for i, (img, label) in enumerate(items):
        j = i
        while paths[j] in bad:  # the next readable one, wrapping
            j = (j + 1) % len(paths)
        assert label == -1 and torch.equal(img, decoded[paths[j]]), (paths[i], paths[j])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a remembered bad file is passed over silently
        assert all(torch.equal(ds[i][0], items[i][0]) for i in range(len(ds)))


def test_strict_raises_naming_the_file(bad_folder):
    """strict=True raises ImageDecodeError (a ByolValueError and ValueError) naming each bad
    file, and still reads the good ones. Fails if strict is ignored."""
    root, good, bad = bad_folder
    ds = ImageFolder(root, strict=True)
    for i, (path, _) in enumerate(ds.samples):
        if path in bad:
            with pytest.raises(ImageDecodeError, match=re.escape(path)) as e:
                ds[i]
            assert isinstance(e.value, ByolValueError) and "\n" not in str(e.value)
        else:
            assert ds[i][0].shape[0] == 3
    assert ds.num_skipped == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod-000 file anyway; the dangling link covers unreadable")
def test_unreadable_file(tmp_path):
    """A file without read permission is skipped, and raises with strict=True."""
    Image.fromarray(_crop(skimage.data.coffee(), 20, 20)).save(tmp_path / "a.png")
    Image.fromarray(_crop(skimage.data.coffee(), 20, 20)).save(tmp_path / "b.png")
    os.chmod(tmp_path / "b.png", 0)
    with pytest.warns(ImageSkippedWarning, match="b.png"):
        ImageFolder(tmp_path)[1]
    with pytest.raises(ImageDecodeError, match="b.png"):
        ImageFolder(tmp_path, strict=True)[1]


def test_no_readable_file_raises(tmp_path):
    """A folder of only bad files: NoReadableImageError, a ValueError, once every file has
    been tried (each warned about once). Fails if the final raise is dropped."""
    for n in ("a.jpg", "b.png"):
        (tmp_path / n).write_bytes(b"nope")
    ds = ImageFolder(tmp_path)
    with pytest.warns(ImageSkippedWarning), pytest.raises(NoReadableImageError, match="none of its 2"):
        ds[0]
    assert isinstance(NoReadableImageError("x"), ValueError) and ds.num_skipped == 2


@pytest.mark.parametrize("context,workers", [("fork", 2), ("spawn", 1)])  # spawn: 1 to save its start-up
def test_dataloader_workers_survive_bad_files(bad_folder, context, workers):
    """DataLoader(num_workers=2, collate_fn=collate_images) over the bad folder yields one
    epoch of len(ds) images containing every good image, and the main process's skipped /
    num_skipped count the files the workers skipped (the record lives in shared memory).
    A worker's batch arrives as views of one buffer (one file descriptor per batch, not one
    per image). Fails if a bad file raises in a worker, if the record is not put in shared
    memory (under fork the main process then sees 0 skips; under spawn, pickling the dataset
    to the workers shares the tensor anyway), or if collate_images stops packing in workers."""
    root, good, bad = bad_folder
    ds = ImageFolder(root)
    decoded = _good_decodes(root, good)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=workers, collate_fn=collate_images,
                                         multiprocessing_context=context)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the workers' warnings go to their own stderr
        batches = list(loader)
    for imgs, _ in batches:
        assert len({img.untyped_storage().data_ptr() for img in imgs}) == 1
        # each image packed in its own memory order: planar, or the decoder's interleaved HWC
        assert all(img.is_contiguous() or img.permute(1, 2, 0).is_contiguous() for img in imgs)
    images = [img for imgs, _ in batches for img in imgs]
    labels = torch.cat([lab for _, lab in batches])
    assert len(images) == len(ds) and labels.dtype == torch.int64 and set(labels.tolist()) == {-1}
    for p, want in decoded.items():
        assert any(img.shape == want.shape and torch.equal(img, want) for img in images), p
    assert sorted(ds.skipped) == bad and ds.num_skipped == len(bad)


def test_collate_images_keeps_a_ragged_list():
    """In the main process collate_images returns the images themselves, sizes untouched,
    and int64 labels; bad items are a ByolTypeError."""
    a, b = torch.zeros(3, 5, 7, dtype=torch.uint8), torch.ones(3, 9, 2, dtype=torch.uint8)
    images, labels = collate_images([(a, 2), (b, -1)])
    assert isinstance(images, list) and images[0] is a and images[1] is b
    assert labels.dtype == torch.int64 and labels.tolist() == [2, -1]
    with pytest.raises(ByolTypeError, match=r"batch\[1\]"):
        collate_images([(a, 0), a])
    with pytest.raises(ByolTypeError, match=r"\[C, H, W\]"):
        collate_images([(torch.zeros(5, 7), 0)])


def test_construction_errors(tmp_path):
    """One-line DatasetError (a ByolValueError) naming the path for: a missing root, a file
    as root, an empty folder, a folder with no images, an empty class folder, and images both
    in the root and in class folders; ByolValueError for bad arguments. A flat folder with an
    imageless subfolder is unlabelled. Fails with the mixed-layout or the empty-class check
    removed, or with a non-recursive scan (cls/b/deep/y.png is not found)."""
    img = Image.fromarray(_crop(skimage.data.coffee(), 10, 10))

    def fails(root, pattern, **kw):
        with pytest.raises(DatasetError, match=pattern) as e:
            ImageFolder(root, **kw)
        assert "\n" not in str(e.value) and isinstance(e.value, ByolValueError)

    fails(tmp_path / "missing", re.escape(str(tmp_path / "missing")) + " does not exist")
    (tmp_path / "file.png").write_bytes(b"x")
    fails(tmp_path / "file.png", "is not a folder")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", re.escape(str(tmp_path / "empty")) + " holds no image files")
    (tmp_path / "noimg/sub").mkdir(parents=True)
    (tmp_path / "noimg/readme.txt").write_text("x")
    (tmp_path / "noimg/sub/a.gif").write_bytes(b"x")
    for i in range(3):
        (tmp_path / f"noimg/sub/IMG_{i}.HEIC").write_bytes(b"x")
    # says what it found instead: an iPhone's .heic photos, here
    fails(tmp_path / "noimg", r"holds no image files .* \(it holds 3 \.heic, 1 \.gif, 1 \.txt files instead; convert them")
    (tmp_path / "cls/a").mkdir(parents=True)
    (tmp_path / "cls/b/deep").mkdir(parents=True)
    img.save(tmp_path / "cls/a/x.png")
    fails(tmp_path / "cls", re.escape(str(tmp_path / "cls/b")) + " holds no image files .*"
          + re.escape(f"(every subfolder of {tmp_path / 'cls'} is a class)"))
    img.save(tmp_path / "cls/b/deep/y.png")
    assert ImageFolder(tmp_path / "cls").classes == ["a", "b"]
    img.save(tmp_path / "cls/loose.png")
    fails(tmp_path / "cls", "holds images both directly .*loose.png.* and in subfolders \\(a, b\\)")
    (tmp_path / "flat/empty_sub").mkdir(parents=True)
    img.save(tmp_path / "flat/one.png")
    assert ImageFolder(tmp_path / "flat").classes == []
    for kw in ({"channels": 2}, {"channels": True}, {"max_side": 0}, {"max_side": 2.5}, {"extensions": ()}):
        with pytest.raises(ByolValueError):
            ImageFolder(tmp_path / "flat", **kw)
