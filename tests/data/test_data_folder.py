"""fastconv.data image folders (a sub-folder per class, as torchvision's ImageFolder) on small
trees of synthetic images written with Pillow in tmp folders: mixed sizes and modes, files
that are not images, unreadable images, empty classes, train/test layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastconv import data as D

Image = pytest.importorskip("PIL.Image")


def _save(path: Path, size=(40, 30), colour=(200, 30, 60), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, colour)
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path, format=fmt)
    return path


def _tree(root: Path, per_class: int = 4) -> Path:
    """cat: red images, dog: green, 4 each, mixed sizes, formats and modes."""
    for i in range(per_class):
        _save(root / "cat" / f"c{i}.png", size=(32 + 7 * i, 50 - 3 * i), colour=(220, 10, 10))
        _save(root / "dog" / f"d{i}.jpg", size=(64, 33 + i), colour=(10, 220, 10))
    return root


def test_reads_mixed_sizes_and_modes_as_one_array(tmp_path):
    root = _tree(tmp_path / "pets")
    _save(root / "cat" / "grey.png", mode="L")
    _save(root / "cat" / "alpha.png", mode="RGBA")
    _save(root / "dog" / "nested" / "palette.gif", mode="P")
    _save(root / "dog" / "huge.bmp", size=(300, 90))
    f = D.load_image_folder(root, image_size=16)
    assert f.class_names == ("cat", "dog")
    assert f.x.shape == (12, 3, 16, 16) and f.x.dtype == np.uint8
    np.testing.assert_array_equal(f.y, [0] * 6 + [1] * 6)
    assert [p.name for p in f.paths[:6]] == ["alpha.png", "c0.png", "c1.png", "c2.png",
                                             "c3.png", "grey.png"]
    assert f.paths[-1].name == "palette.gif"          # nested folders count for their class
    red = f.x[1:5]                                       # the RGB cat images stay red
    assert (red[:, 0] > 200).all() and (red[:, 1:] < 30).all()
    grey = f.x[5]
    assert np.ptp(grey.reshape(3, -1), axis=0).max() <= 1    # L -> RGB: equal channels
    assert f.skipped == ()


def test_resize_shorter_side_then_centre_crop(tmp_path):
    # 64 x 32 image: left half black, right half white; at size 32 nothing is resized and the
    # crop keeps columns 16..47, i.e. 16 black then 16 white columns
    im = Image.new("RGB", (64, 32), (0, 0, 0))
    im.paste((255, 255, 255), (32, 0, 64, 32))
    (tmp_path / "a").mkdir()
    im.save(tmp_path / "a" / "x.png")
    x = D.load_image_folder(tmp_path, 32).x[0]
    np.testing.assert_array_equal(x[:, :, :16], 0)
    np.testing.assert_array_equal(x[:, :, 16:], 255)
    # the same as torchvision's Resize(size) + CenterCrop(size) would give, via read_image
    np.testing.assert_array_equal(D.read_image(tmp_path / "a" / "x.png", 32), x)
    tall = D.read_image(_save(tmp_path / "t.png", size=(20, 90)), 8)
    assert tall.shape == (3, 8, 8)


def test_non_image_and_hidden_files_are_skipped_and_listed(tmp_path):
    root = _tree(tmp_path / "pets")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0")
    (root / "labels.csv").write_text("a,b\n")
    (root / ".cache").mkdir()
    _save(root / ".cache" / "thumb.png")
    f = D.load_image_folder(root)
    assert f.class_names == ("cat", "dog") and len(f.y) == 8
    reasons = {p.name: r for p, r in f.skipped}
    assert reasons == {"notes.txt": "not an image file name", ".DS_Store": "hidden file",
                       "labels.csv": "outside the class folders"}


def test_unreadable_image_is_an_error_naming_it_or_skipped(tmp_path):
    root = _tree(tmp_path / "pets")
    bad = root / "dog" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(D.DatasetError, match="cannot read .*broken.jpg as an image") as err:
        D.load_image_folder(root)
    assert "bad_images='skip'" in str(err.value) and "\n" not in str(err.value)
    truncated = root / "cat" / "cut.png"
    blob = _save(tmp_path / "full.png", size=(64, 64)).read_bytes()
    truncated.write_bytes(blob[:len(blob) // 2])
    f = D.load_image_folder(root, bad_images="skip")
    assert len(f.y) == 8
    assert {p.name for p, r in f.skipped if r.startswith("unreadable image")} == \
        {"broken.jpg", "cut.png"}
    with pytest.raises(ValueError, match="bad_images"):
        D.load_image_folder(root, bad_images="ignore")


def test_empty_class_folder_is_an_error(tmp_path):
    root = _tree(tmp_path / "pets")
    (root / "bird").mkdir()
    (root / "bird" / "readme.txt").write_text("todo")
    with pytest.raises(D.DatasetError, match="class folder .*bird holds no images"):
        D.load_image_folder(root)


@pytest.mark.parametrize("make,needle", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_text("x"), "is not a folder"),
    (lambda p: (p.mkdir(), (p / "a.png").write_bytes(b"")), "no class sub-folders"),
])
def test_bad_roots(tmp_path, make, needle):
    root = tmp_path / "root"
    make(root)
    with pytest.raises(D.DatasetError, match=needle) as err:
        D.load_image_folder(root)
    assert str(root) in str(err.value)


def test_dataset_with_train_and_test_folders(tmp_path):
    root = tmp_path / "pets"
    _tree(root / "train")
    _save(root / "test" / "dog" / "t.png", colour=(10, 220, 10))    # test may lack a class
    ds = D.load_image_folder_dataset(root)
    assert ds.class_names == ("cat", "dog")
    assert ds.x_train.shape == (8, 3, 32, 32) and ds.x_test.shape == (1, 3, 32, 32)
    np.testing.assert_array_equal(ds.y_test, [1])
    assert sorted(ds.y_train.tolist()) == [0] * 4 + [1] * 4
    _save(root / "val" / "fox" / "f.png")
    (root / "test").rename(root / "old")          # val/ is used when test/ is absent
    with pytest.raises(D.DatasetError, match="not trained on: fox"):
        D.load_image_folder_dataset(root)


def test_dataset_split_holds_out_a_fraction_of_each_class(tmp_path):
    root = _tree(tmp_path / "pets", per_class=10)
    ds = D.load_image_folder_dataset(root, test_fraction=0.2, seed=3)
    assert len(ds.y_train) == 16 and len(ds.y_test) == 4
    assert sorted(ds.y_test.tolist()) == [0, 0, 1, 1]
    again = D.load_image_folder_dataset(root, test_fraction=0.2, seed=3)
    np.testing.assert_array_equal(again.x_train, ds.x_train)     # seeded: the same split
    limited = D.load_image_folder_dataset(root, test_fraction=0.2, seed=3, limit_train=5,
                                          limit_test=1)
    assert len(limited.y_train) == 5 and len(limited.y_test) == 1
    train, test = D.split_per_class(np.array([0, 0, 0, 1]), 0.5)
    assert sorted(np.concatenate([train, test]).tolist()) == [0, 1, 2, 3]
    assert 3 in train                         # a class of one image is never held out whole


def test_load_dataset_by_name(tmp_path):
    root = _tree(tmp_path / "pets", per_class=5)
    ds = D.load_dataset(f"folder:{root}", test_fraction=0.2)
    assert ds.name == f"folder:{root}" and ds.class_names == ("cat", "dog")
    mean, std = D.compute_mean_std(ds.x_train)
    np.testing.assert_allclose(ds.mean, mean)
    np.testing.assert_allclose(ds.std, std)
    assert len(ds.y_test) == 2
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        D.load_dataset("imagenet")
    with pytest.raises(ValueError, match="unknown dataset"):
        D.parse_dataset("folder:")
    with pytest.raises(ValueError, match="data_dir does not apply"):
        D.load_dataset(f"folder:{root}", tmp_path)
    with pytest.raises(ValueError, match="32 x 32"):
        D.load_dataset("cifar10", image_size=64)


@pytest.mark.parametrize("mode,fmt", [("I;16", "png"), ("I;16", "tiff"), ("I", "tiff")])
def test_16_bit_grey_images_are_scaled_as_their_8_bit_twins(tmp_path, mode, fmt):
    # 16-bit greyscale PNG/TIFF open as "I;16" (Pillow < 10.? gives "I" for PNG); Pillow's
    # convert("RGB") clips those values at 255 instead of scaling them, so nearly every pixel
    # read as white. The same picture in 8 bits (v) and in 16 bits (257 v) must read alike.
    grey8 = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (40, 1))    # 40 x 64, 0..252
    Image.fromarray(grey8, "L").save(tmp_path / "g8.png")
    wide = grey8.astype(np.uint16) * 257
    im16 = Image.fromarray(wide) if mode == "I;16" else Image.fromarray(wide.astype(np.int32))
    assert im16.mode == mode
    im16.save(tmp_path / f"g16.{fmt}")
    with Image.open(tmp_path / f"g16.{fmt}") as check:
        assert check.mode == mode
    want = D.read_image(tmp_path / "g8.png", 32)
    got = D.read_image(tmp_path / f"g16.{fmt}", 32)
    assert got.dtype == np.uint8 and got.shape == (3, 32, 32)
    np.testing.assert_array_equal(got, want)
    assert 0 < got.mean() < 200                        # not saturated
    f = D.load_image_folder(_save_both(tmp_path / "tree", tmp_path / f"g16.{fmt}"), 32)
    np.testing.assert_array_equal(f.x[0], want)


def _save_both(root: Path, image: Path) -> Path:
    (root / "a").mkdir(parents=True)
    (root / "a" / image.name).write_bytes(image.read_bytes())
    return root


@pytest.mark.parametrize("scale", [1 / 255, 1.0], ids=["0..1", "0..255"])
def test_float_grey_images_read_as_their_8_bit_twins(tmp_path, scale):
    """A float32 TIFF (Pillow's mode "F") of values in 0..1 or 0..255 reads as the same
    picture in 8 bits (a plain convert("RGB") truncates a 0..1 image to black); values
    outside 0..255 or NaN are an ImageReadError naming the file, skipped with
    bad_images='skip'."""
    grey8 = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (40, 1))
    Image.fromarray(grey8, "L").save(tmp_path / "g8.png")
    Image.fromarray((grey8 * scale).astype(np.float32), "F").save(tmp_path / "gf.tiff")
    with Image.open(tmp_path / "gf.tiff") as check:
        assert check.mode == "F"
    np.testing.assert_array_equal(D.read_image(tmp_path / "gf.tiff", 32),
                                  D.read_image(tmp_path / "g8.png", 32))
    for bad in (grey8 * 2.0, np.where(grey8 > 100, np.nan, grey8 / 255)):
        Image.fromarray(bad.astype(np.float32), "F").save(tmp_path / "bad.tiff")
        with pytest.raises(D.ImageReadError, match=r"bad\.tiff.*floating-point image"):
            D.read_image(tmp_path / "bad.tiff", 32)


def test_a_decompression_bomb_is_an_error_naming_it_or_skipped(tmp_path, monkeypatch):
    """Pillow refuses images past its pixel limit (DecompressionBombError, not an OSError):
    an ImageReadError naming the file, which bad_images='skip' skips."""
    root = _tree(tmp_path / "pets")
    _save(root / "cat" / "huge.png", size=(300, 200))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 300 x 200 > 2x the limit
    with pytest.raises(D.ImageReadError, match="huge.png is too large"):
        D.read_image(root / "cat" / "huge.png", 32)
    with pytest.raises(D.DatasetError, match="huge.png"):
        D.load_image_folder(root)
    f = D.load_image_folder(root, bad_images="skip")
    assert len(f.y) == 8 and [p.name for p, _ in f.skipped] == ["huge.png"]
