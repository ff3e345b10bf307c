"""fastconv.data.load_cifar100 on a small synthetic CIFAR-100 in the official format
(tests/fake_cifar.py: 300 training and 100 test images), never downloading from the network:
downloads go through file:// URLs and injected openers."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest

import fake_cifar
from fastconv import data as D


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTCONV_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def members():
    return fake_cifar.fake_cifar100()


def _tarball(path, members, **kw):
    return fake_cifar.write_tarball(path / D.CIFAR100_TARBALL, members,
                                    folder_name=D.CIFAR100_FOLDER, **kw)


def _check(ds, members, n_train=300, n_test=100):
    for x, y, yc, name in ((ds.x_train, ds.y_train, ds.y_train_coarse, "train"),
                           (ds.x_test, ds.y_test, ds.y_test_coarse, "test")):
        raw = members[name]
        n = len(y)
        assert x.dtype == np.uint8 and x.shape == (n, 3, 32, 32) and x.flags.c_contiguous
        assert y.dtype == np.int64 and yc.dtype == np.int64
        np.testing.assert_array_equal(x.reshape(n, 3072), raw[b"data"][:n])
        np.testing.assert_array_equal(y, raw[b"fine_labels"][:n])
        np.testing.assert_array_equal(yc, raw[b"coarse_labels"][:n])
        np.testing.assert_array_equal(x[:, 0, 0, 1], y)        # fine label in pixel (0, 1)
    assert (len(ds.y_train), len(ds.y_test)) == (n_train, n_test)
    assert ds.class_names == ds.fine_class_names == tuple(f"fine{i:02d}" for i in range(100))
    assert ds.coarse_class_names == tuple(f"coarse{i:02d}" for i in range(20))


@pytest.mark.parametrize("layout", ["tarball", "folder", "folder itself", "tarball itself"])
def test_loads_every_layout(tmp_path, members, layout):
    if layout.startswith("tarball"):
        where = _tarball(tmp_path, members)
    else:
        where = fake_cifar.write_folder(tmp_path, members, folder_name=D.CIFAR100_FOLDER)
    arg = where if layout.endswith("itself") else tmp_path
    ds = D.load_cifar100(arg, download=False)
    _check(ds, members)
    assert ds.source == where
    assert isinstance(ds, D.CIFAR100)


def test_coarse_label_mode_and_limits(tmp_path, members):
    _tarball(tmp_path, members)
    ds = D.load_cifar100(tmp_path, label_mode="coarse", limit_train=50, limit_test=0,
                         download=False)
    np.testing.assert_array_equal(ds.y_train, np.asarray(members["train"][b"coarse_labels"][:50]))
    np.testing.assert_array_equal(ds.y_train, ds.y_train_coarse)
    assert ds.class_names == ds.coarse_class_names and len(ds.class_names) == 20
    assert ds.x_train.shape == (50, 3, 32, 32) and ds.x_test.shape == (0, 3, 32, 32)
    with pytest.raises(ValueError, match="label_mode"):
        D.load_cifar100(tmp_path, label_mode="medium")
    with pytest.raises(ValueError, match="limit_train"):
        D.load_cifar100(tmp_path, limit_train=-1)


@pytest.mark.parametrize("damage,needle", [
    ("missing test", "incomplete \\(missing test\\)"),
    ("fine label 100", "fine_labels outside 0..99"),
    ("coarse label 20", "coarse_labels outside 0..19"),
    ("99 fine names", "lists 99 fine_label_names, expected 100"),
    ("no coarse labels", "has no 'coarse_labels' entry"),
    ("short rows", "expected uint8 \\(n, 3072\\)"),
])
def test_bad_archives_say_what_is_wrong(tmp_path, members, damage, needle):
    bad = {k: dict(v) for k, v in members.items()}
    skip: tuple[str, ...] = ()
    if damage == "missing test":
        skip = ("test",)
    elif damage == "fine label 100":
        bad["train"][b"fine_labels"] = [100] + bad["train"][b"fine_labels"][1:]
    elif damage == "coarse label 20":
        bad["test"][b"coarse_labels"] = [20] * 100
    elif damage == "99 fine names":
        bad["meta"][b"fine_label_names"] = bad["meta"][b"fine_label_names"][:99]
    elif damage == "no coarse labels":
        del bad["train"][b"coarse_labels"]
    else:
        bad["train"][b"data"] = bad["train"][b"data"][:, :3000]
    _tarball(tmp_path, bad, skip=skip)
    with pytest.raises(D.DatasetError, match=needle) as err:
        D.load_cifar100(tmp_path, download=False)
    assert "CIFAR-100" in str(err.value) and D.CIFAR100_URL in str(err.value)
    assert "\n" not in str(err.value)


def test_truncated_tarball_is_reported(tmp_path, members):
    path = _tarball(tmp_path, members, compresslevel=0)
    blob = path.read_bytes()
    path.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(D.DatasetError, match="corrupt or truncated"):
        D.load_cifar100(tmp_path, download=False)


def test_pickles_cannot_run_code(tmp_path, members):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.mkdir, (str(marker),))

    bad = {k: dict(v) for k, v in members.items()}
    bad["train"][b"filenames"] = Evil()
    folder = tmp_path / D.CIFAR100_FOLDER
    folder.mkdir()
    for name, obj in bad.items():
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(D.DatasetError, match="refusing to load"):
        D.load_cifar100(tmp_path, download=False)
    assert not marker.exists()


def test_not_found_without_download(tmp_path):
    with pytest.raises(D.DatasetNotFoundError, match="CIFAR-100 not found") as err:
        D.load_cifar100(tmp_path / "nothing", download=False)
    assert str(tmp_path / "nothing") in str(err.value)


def test_download_is_md5_checked_and_announced(tmp_path, members, capsys):
    src = _tarball(tmp_path / "src", members)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    dest = tmp_path / "cache"
    ds = D.load_cifar100(dest, url=src.as_uri(), md5=md5)
    _check(ds, members)
    assert sorted(p.name for p in dest.iterdir()) == [D.CIFAR100_TARBALL]
    err = capsys.readouterr().err
    assert "downloading CIFAR-100 (" in err and src.as_uri() in err and str(dest) in err
    # the official digest is checked by default: a different file is refused and deleted
    with pytest.raises(D.DatasetError, match="MD5") as e:
        D.download_cifar100(tmp_path / "other", url=src.as_uri())
    assert D.CIFAR100_MD5 in str(e.value)
    assert list((tmp_path / "other").iterdir()) == []


def test_download_announces_the_published_size_without_content_length(tmp_path, members,
                                                                       capsys):
    import io
    blob = _tarball(tmp_path / "src", members).read_bytes()

    def opener(url, timeout):
        return io.BytesIO(blob)           # no headers: the published size is announced
    D.download_cifar100(tmp_path / "cache", opener=opener, md5=None)
    assert "downloading CIFAR-100 (169.0 MB)" in capsys.readouterr().err
    assert D.CIFAR100_URL.startswith("https://") and len(D.CIFAR100_MD5) == 32


def test_published_statistics_are_sane():
    assert len(D.CIFAR100_MEAN) == len(D.CIFAR100_STD) == 3
    assert all(0.4 < m < 0.55 for m in D.CIFAR100_MEAN)
    assert all(0.25 < s < 0.28 for s in D.CIFAR100_STD)
