"""Tests for fastconv.data: locating, downloading, validating, decoding and batching CIFAR-10.

A small fake CIFAR-10 (official python format, 100 images per batch, tests/fake_cifar.py) is
built in tmp_path; the real archive in ../shared/data (or $FASTCONV_DATA) is loaded when
present.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pickle
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import fake_cifar
from fake_cifar import PER_BATCH
from fastconv import data as D
from fastconv.data.archive import download


@pytest.fixture(scope="module")
def fake_batches() -> dict[str, dict]:
    return fake_cifar.fake_batches()


@pytest.fixture(scope="module")
def fake_tarball(tmp_path_factory, fake_batches) -> Path:
    root = tmp_path_factory.mktemp("tarball")
    return fake_cifar.write_tarball(root / D.TARBALL_NAME, fake_batches)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """Never touch the user's cache or $FASTCONV_DATA from these tests."""
    monkeypatch.delenv("FASTCONV_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _expected(fake_batches):
    xs = np.concatenate([fake_batches[n][b"data"] for n in D.TRAIN_BATCHES])
    ys = np.concatenate([fake_batches[n][b"labels"] for n in D.TRAIN_BATCHES])
    return (xs.reshape(-1, 3, 32, 32), ys,
            fake_batches[D.TEST_BATCH][b"data"].reshape(-1, 3, 32, 32),
            np.asarray(fake_batches[D.TEST_BATCH][b"labels"]))


def _check_full(ds: D.CIFAR10, fake_batches) -> None:
    x_tr, y_tr, x_te, y_te = _expected(fake_batches)
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape == (5 * PER_BATCH, 3, 32, 32)
    assert ds.x_train.flags.c_contiguous and ds.x_test.flags.c_contiguous
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train, x_tr)
    np.testing.assert_array_equal(ds.y_train, y_tr)
    np.testing.assert_array_equal(ds.x_test, x_te)
    np.testing.assert_array_equal(ds.y_test, y_te)
    assert ds.class_names == D.CLASS_NAMES


# --------------------------------------------------------------------------------------------
# Loading and locating
# --------------------------------------------------------------------------------------------

def test_load_from_tarball(fake_tarball, fake_batches):
    ds = D.load_cifar10(fake_tarball.parent, download=False)
    _check_full(ds, fake_batches)
    assert ds.source == fake_tarball
    # NCHW layout: channel c of image i is row[c*1024:(c+1)*1024] as 32x32
    row = fake_batches["data_batch_2"][b"data"][7]
    np.testing.assert_array_equal(ds.x_train[PER_BATCH + 7, 1], row[1024:2048].reshape(32, 32))


def test_load_from_tarball_path_directly(fake_tarball, fake_batches):
    _check_full(D.load_cifar10(fake_tarball, download=False), fake_batches)


def test_load_from_folder(tmp_path, fake_batches):
    folder = fake_cifar.write_folder(tmp_path, fake_batches)
    ds = D.load_cifar10(tmp_path, download=False)
    _check_full(ds, fake_batches)
    assert ds.source == folder
    _check_full(D.load_cifar10(folder, download=False), fake_batches)   # the folder itself


def test_folder_preferred_over_tarball(tmp_path, fake_batches):
    fake_cifar.write_tarball(tmp_path / D.TARBALL_NAME, fake_batches)
    folder = fake_cifar.write_folder(tmp_path, fake_batches)
    assert D.find_cifar10(tmp_path) == folder


def test_search_order_env_then_cache(tmp_path, monkeypatch, fake_batches):
    home = tmp_path / "home"
    assert D.default_data_dir() == home / ".cache" / "fastconv"
    assert D.find_cifar10() is None
    cache_folder = fake_cifar.write_folder(home / ".cache" / "fastconv", fake_batches)
    assert D.find_cifar10() == cache_folder
    env_dir = tmp_path / "env"
    tarball = fake_cifar.write_tarball(env_dir / D.TARBALL_NAME, fake_batches)
    monkeypatch.setenv("FASTCONV_DATA", str(env_dir))
    assert D.default_data_dir() == env_dir
    assert D.find_cifar10() == tarball                       # env beats the cache
    assert D.load_cifar10(download=False).source == tarball
    explicit = tmp_path / "explicit"
    explicit_folder = fake_cifar.write_folder(explicit, fake_batches)
    assert D.load_cifar10(explicit, download=False).source == explicit_folder   # arg beats env


@pytest.mark.parametrize("source", ["tarball", "folder"])
def test_limits(tmp_path, fake_batches, source):
    if source == "tarball":
        where = fake_cifar.write_tarball(tmp_path / D.TARBALL_NAME, fake_batches)
    else:
        where = fake_cifar.write_folder(tmp_path, fake_batches)
    x_tr, y_tr, x_te, y_te = _expected(fake_batches)
    ds = D.load_cifar10(where, download=False, limit_train=150, limit_test=30)
    np.testing.assert_array_equal(ds.x_train, x_tr[:150])    # crosses a batch boundary
    np.testing.assert_array_equal(ds.y_train, y_tr[:150])
    np.testing.assert_array_equal(ds.x_test, x_te[:30])
    np.testing.assert_array_equal(ds.y_test, y_te[:30])
    ds = D.load_cifar10(where, download=False, limit_train=0, limit_test=0)
    assert ds.x_train.shape == (0, 3, 32, 32) and ds.x_test.shape == (0, 3, 32, 32)
    ds = D.load_cifar10(where, download=False, limit_train=10 ** 9)
    assert ds.x_train.shape[0] == 5 * PER_BATCH
    with pytest.raises(ValueError, match="limit_train"):
        D.load_cifar10(where, download=False, limit_train=-1)


def test_str_keys_and_list_labels_accepted(tmp_path, fake_batches):
    """Files re-pickled by Python 3 tools (str keys) are well formed too."""
    batches = {n: {k.decode(): v for k, v in obj.items()} for n, obj in fake_batches.items()}
    fake_cifar.write_folder(tmp_path, batches)
    _check_full(D.load_cifar10(tmp_path, download=False), fake_batches)


# --------------------------------------------------------------------------------------------
# Corrupt, truncated and incomplete data
# --------------------------------------------------------------------------------------------

def _assert_helpful(err: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert "FASTCONV_DATA" in msg


def test_truncated_tarball(tmp_path, fake_tarball):
    bad = tmp_path / D.TARBALL_NAME
    raw = fake_tarball.read_bytes()
    bad.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(D.DatasetError, match="corrupt or truncated") as err:
        D.load_cifar10(tmp_path, download=False)
    _assert_helpful(err, bad)
    assert "delete" in str(err.value)


def test_corrupted_bytes_in_tarball(tmp_path, fake_tarball):
    raw = bytearray(fake_tarball.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(64)                    # zero a stretch of compressed data
    bad = tmp_path / D.TARBALL_NAME
    bad.write_bytes(bytes(raw))
    with pytest.raises(D.DatasetError) as err:
        D.load_cifar10(tmp_path, download=False)
    _assert_helpful(err, bad)


def _flip_bit_in_stored_copy(raw: bytearray, plain: bytes) -> None:
    """Flip the low bit of one ASCII byte of ``plain`` where it appears verbatim in ``raw``.

    With compresslevel=0 deflate stores the archive bytes as they are, so the flip changes
    exactly one byte of the tar and deflate itself cannot notice: only the gzip CRC can.
    ASCII stays ASCII, so a pickled latin-1 string remains valid UTF-8.
    """
    width = min(32, len(plain))
    for start in range((len(plain) - width) // 2, len(plain) - width + 1):
        needle = plain[start:start + width]
        if needle[width // 2] < 0x80 and raw.count(needle) == 1:
            raw[raw.find(needle) + width // 2] ^= 0x01
            return
    raise AssertionError("no unique stored copy of the member data found")


@pytest.mark.parametrize("member, limit_train", [
    ("data_batch_2", None),            # unpickled: one pixel would change silently
    ("data_batch_5", PER_BATCH),       # skipped by limit_train but still decompressed
    ("readme.html", None),             # not a CIFAR-10 file at all
])
def test_flipped_bit_in_compressed_member_data(tmp_path, fake_batches, member, limit_train):
    path = fake_cifar.write_tarball(tmp_path / D.TARBALL_NAME, fake_batches, compresslevel=0)
    if member == "readme.html":
        plain = b"<html>fake</html>"
    else:
        # protocol 2 pickles the array's bytes as a latin-1 str, stored as UTF-8
        plain = fake_batches[member][b"data"].tobytes().decode("latin1").encode("utf-8")
    raw = bytearray(path.read_bytes())
    _flip_bit_in_stored_copy(raw, plain)
    path.write_bytes(bytes(raw))
    with pytest.raises(D.DatasetError, match="corrupt or truncated.*CRC check failed") as err:
        D.load_cifar10(tmp_path, download=False, limit_train=limit_train)
    _assert_helpful(err, path)
    assert "delete" in str(err.value)


@pytest.mark.parametrize("field, offset", [("crc", -8), ("crc", -5), ("isize", -4)])
def test_corrupted_gzip_trailer(tmp_path, fake_tarball, field, offset):
    raw = bytearray(fake_tarball.read_bytes())
    raw[offset] ^= 0x01                              # trailer: CRC-32 (4 bytes), ISIZE (4 bytes)
    bad = tmp_path / D.TARBALL_NAME
    bad.write_bytes(bytes(raw))
    with pytest.raises(D.DatasetError, match="corrupt or truncated") as err:
        D.load_cifar10(tmp_path, download=False)
    _assert_helpful(err, bad)
    assert ("CRC check failed" if field == "crc" else "Incorrect length") in str(err.value)


@pytest.mark.parametrize("cut", [1, 4, 8])
def test_truncated_gzip_trailer(tmp_path, fake_tarball, cut):
    bad = tmp_path / D.TARBALL_NAME
    bad.write_bytes(fake_tarball.read_bytes()[:-cut])
    with pytest.raises(D.DatasetError, match="corrupt or truncated") as err:
        D.load_cifar10(tmp_path, download=False)
    _assert_helpful(err, bad)


@pytest.mark.parametrize("compresslevel, zero_padding", [(0, 0), (9, 0), (1, 512)])
def test_valid_archive_loads_identically(tmp_path, fake_batches, compresslevel, zero_padding):
    path = fake_cifar.write_tarball(tmp_path / "t" / D.TARBALL_NAME, fake_batches,
                          compresslevel=compresslevel)
    if zero_padding:                                 # gzip allows zeros after the trailer
        with open(path, "ab") as f:
            f.write(bytes(zero_padding))
    _check_full(D.load_cifar10(path, download=False), fake_batches)
    folder = fake_cifar.write_folder(tmp_path / "f", fake_batches)
    a = D.load_cifar10(path, download=False, limit_train=150, limit_test=30)
    b = D.load_cifar10(folder, download=False, limit_train=150, limit_test=30)
    for x, y in zip(a[:5], b[:5]):
        np.testing.assert_array_equal(x, y)


def test_not_an_archive(tmp_path):
    bad = tmp_path / D.TARBALL_NAME
    bad.write_bytes(b"<html>404 not found</html>" * 10)
    with pytest.raises(D.DatasetError) as err:
        D.load_cifar10(tmp_path, download=False)
    _assert_helpful(err, bad)


def test_missing_batch_in_tarball(tmp_path, fake_batches):
    bad = fake_cifar.write_tarball(tmp_path / D.TARBALL_NAME, fake_batches, skip=("data_batch_3",))
    with pytest.raises(D.DatasetError, match="missing data_batch_3") as err:
        D.load_cifar10(tmp_path, download=False)
    _assert_helpful(err, bad)


def test_missing_batch_in_folder(tmp_path, fake_batches):
    folder = fake_cifar.write_folder(tmp_path, fake_batches, skip=("test_batch",))
    with pytest.raises(D.DatasetError, match="missing test_batch") as err:
        D.load_cifar10(tmp_path, download=False, limit_train=10)
    _assert_helpful(err, folder)


@pytest.mark.parametrize("defect", ["short_rows", "wrong_width", "float_data", "bad_label",
                                    "label_count", "no_labels", "truncated_pickle"])
def test_malformed_batch(tmp_path, fake_batches, defect):
    batches = {n: dict(obj) for n, obj in fake_batches.items()}
    b = batches["data_batch_4"]
    raw = None
    if defect == "short_rows":
        b[b"data"] = b[b"data"][:-1]
        b[b"labels"] = b[b"labels"][:-1]
    elif defect == "wrong_width":
        b[b"data"] = b[b"data"][:, :3071]
    elif defect == "float_data":
        b[b"data"] = b[b"data"].astype(np.float32)
    elif defect == "bad_label":
        b[b"labels"] = list(b[b"labels"][:-1]) + [10]
    elif defect == "label_count":
        b[b"labels"] = b[b"labels"][:-5]
    elif defect == "no_labels":
        del b[b"labels"]
    elif defect == "truncated_pickle":
        full = pickle.dumps(b, protocol=2)
        raw = {"data_batch_4": full[: len(full) // 2]}
        batches.pop("data_batch_4")
    bad = fake_cifar.write_tarball(tmp_path / D.TARBALL_NAME, batches, raw=raw)
    with pytest.raises(D.DatasetError, match="data_batch_4|corrupt") as err:
        D.load_cifar10(tmp_path, download=False)
    _assert_helpful(err, bad)


def test_malicious_pickle_is_not_executed(tmp_path, fake_batches):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    batches = {n: dict(obj) for n, obj in fake_batches.items()}
    batches["data_batch_1"][b"filenames"] = Evil()
    fake_cifar.write_folder(tmp_path, batches)
    with pytest.raises(D.DatasetError, match="refusing to load posix.mkdir|refusing to load"):
        D.load_cifar10(tmp_path, download=False)
    assert not marker.exists()


def test_not_found_without_download(tmp_path):
    with pytest.raises(D.DatasetNotFoundError, match="not found") as err:
        D.load_cifar10(tmp_path / "nothing", download=False)
    assert str(tmp_path / "nothing") in str(err.value)
    assert isinstance(err.value, ValueError)


# --------------------------------------------------------------------------------------------
# Download (offline: file:// URLs and a loopback HTTP server)
# --------------------------------------------------------------------------------------------

def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_file_url(tmp_path, fake_tarball, fake_batches):
    dest = tmp_path / "cache"
    got = D.download_cifar10(dest, url=fake_tarball.as_uri(), md5=_md5(fake_tarball))
    assert got == dest / D.TARBALL_NAME
    assert got.read_bytes() == fake_tarball.read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == [D.TARBALL_NAME]   # no temp file left
    assert D.md5sum(got) == _md5(fake_tarball)
    if hasattr(os, "fchmod"):
        umask = os.umask(0)
        os.umask(umask)
        assert got.stat().st_mode & 0o777 == 0o666 & ~umask          # not mkstemp's 0o600


def test_download_md5_mismatch_leaves_nothing(tmp_path, fake_tarball):
    dest = tmp_path / "cache"
    with pytest.raises(D.DatasetError, match="MD5") as err:
        D.download_cifar10(dest, url=fake_tarball.as_uri())      # official MD5: must differ
    assert D.CIFAR10_MD5 in str(err.value)
    assert list(dest.iterdir()) == []


def test_download_failure_is_not_found(tmp_path):
    dest = tmp_path / "cache"
    with pytest.raises(D.DatasetNotFoundError, match="could not download"):
        D.download_cifar10(dest, url=(tmp_path / "missing.tar.gz").as_uri())
    assert list(dest.iterdir()) == []

    def opener(url, timeout):
        raise OSError("network is unreachable")
    with pytest.raises(D.DatasetNotFoundError, match="unreachable"):
        D.load_cifar10(tmp_path / "other", opener=opener)
    assert not (tmp_path / "other" / D.TARBALL_NAME).exists()


def test_interrupted_download_leaves_nothing(tmp_path):
    class Response(io.BytesIO):
        headers = {"Content-Length": "100000"}

        def read(self, n=-1):
            data = super().read(min(n, 1000))
            if self.tell() > 5000:
                raise ConnectionResetError("connection reset by peer")
            return data

        read1 = read  # (what download reads with: what has arrived)

    dest = tmp_path / "cache"
    with pytest.raises(D.DatasetNotFoundError, match="failed midway"):
        D.download_cifar10(dest, opener=lambda url, timeout: Response(bytes(100000)))
    assert list(dest.iterdir()) == []


def _serving(handler_class):
    """A loopback HTTP server running `handler_class` in a thread: (base url, server)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


class _Trickle(http.server.BaseHTTPRequestHandler):
    """/short: a Content-Length of 100000 and half of it; /trickle: a byte every 0.3 s."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        if self.path == "/short":
            self.wfile.write(bytes(50000))
            return
        try:
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.3)
        except OSError:
            pass


def test_a_short_or_trickling_download_fails_and_leaves_nothing(tmp_path):
    """A body shorter than its Content-Length (the connection closed early) is refused even
    without an MD5 to check, and a server sending a byte now and then is given up as stalled
    after `timeout` (each read took what arrived within the socket timeout, for ever)."""
    url, server = _serving(_Trickle)
    try:
        dest = tmp_path / "cache"
        with pytest.raises(D.DatasetNotFoundError, match=r"failed midway \(got 50,000 of "
                                                         r"100,000 bytes\)"):
            download(dest, url=f"{url}/short", md5=None, filename="a.bin", what="A")
        start = time.monotonic()
        with pytest.raises(D.DatasetNotFoundError, match=r"stalled \(\d bytes in the last 1 s\)"):
            download(dest, url=f"{url}/trickle", md5=None, filename="a.bin", what="A",
                       timeout=1.0)
        assert time.monotonic() - start < 20
        assert list(dest.iterdir()) == []
    finally:
        server.shutdown()
        server.server_close()


def test_stale_parts_of_killed_downloads_are_removed(tmp_path, fake_tarball):
    """A download's temporary file left by a killed process goes at the next download of
    that file once a day old; a fresh one (another process's download) stays."""
    import os as _os

    dest = tmp_path / "cache"
    dest.mkdir()
    old, fresh = dest / ".a.bin.x1.part", dest / ".a.bin.x2.part"
    old.write_bytes(b"1")
    fresh.write_bytes(b"2")
    _os.utime(old, (time.time() - 2 * 86400,) * 2)
    download(dest, url=fake_tarball.as_uri(), md5=None, filename="a.bin", what="A")
    assert sorted(p.name for p in dest.iterdir()) == [".a.bin.x2.part", "a.bin"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


def test_load_downloads_via_loopback_http(tmp_path, fake_tarball, fake_batches):
    handler = functools.partial(_QuietHandler, directory=str(fake_tarball.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{D.TARBALL_NAME}"
        dest = tmp_path / "cache"
        ds = D.load_cifar10(dest, url=url, md5=_md5(fake_tarball), progress=False)
        _check_full(ds, fake_batches)
        assert ds.source == dest / D.TARBALL_NAME
        assert sorted(p.name for p in dest.iterdir()) == [D.TARBALL_NAME]
        # a second load uses the cached copy (the server is not needed any more)
        server.shutdown()
        _check_full(D.load_cifar10(dest, url=url + ".gone"), fake_batches)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_download_progress_plain(tmp_path, fake_tarball, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)          # as if tqdm were not installed
    D.download_cifar10(tmp_path, url=fake_tarball.as_uri(), md5=None, progress=True)
    assert "downloading" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Decoding and normalisation
# --------------------------------------------------------------------------------------------

def test_compute_mean_std_matches_float64(fake_batches):
    x = fake_batches["data_batch_1"][b"data"].reshape(-1, 3, 32, 32)
    mean, std = D.compute_mean_std(x, chunk=7)                   # several chunks
    ref = x.astype(np.float64) / 255
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-10)
    mean_f, std_f = D.compute_mean_std(ref)
    np.testing.assert_allclose(mean_f, mean, rtol=1e-12)
    np.testing.assert_allclose(std_f, std, rtol=1e-10)


def test_to_float32_normalisation(fake_batches):
    x = fake_batches["test_batch"][b"data"].reshape(-1, 3, 32, 32)
    y = D.to_float32(x)
    assert y.dtype == np.float32 and y.shape == x.shape and y.flags.c_contiguous
    m = np.asarray(D.CIFAR10_MEAN).reshape(1, 3, 1, 1)
    s = np.asarray(D.CIFAR10_STD).reshape(1, 3, 1, 1)
    ref = (x / 255.0 - m) / s
    # float32 rounding of scale/offset and of the result: |error| <= a few ulps of ~4
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-6)
    np.testing.assert_allclose(D.to_float32(x, None, None), x / 255.0, rtol=1e-6)
    mean, std = D.compute_mean_std(x)
    z = D.to_float32(x, mean, std).astype(np.float64)
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-5)
    with pytest.raises(ValueError, match="std must be positive"):
        D.to_float32(x, (0, 0, 0), (1, 0, 1))


def test_channels_last_images_are_refused_with_the_transpose():
    # (N, H, W, C) images (PIL / TensorFlow layout) gave "mean and std need 32 values each,
    # got (3,) and (3,)", naming neither the function nor the layout
    x = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"to_float32: .*\(2, 32, 32, 3\).*channels last\? "
                                         r".*transpose\(0, 3, 1, 2\)"):
        D.to_float32(x)
    with pytest.raises(ValueError, match=r"DataLoader: .*channels last\?"):
        D.DataLoader(x, np.zeros(2, np.int64), 2)
    with pytest.raises(ValueError, match=r"to_float32: mean and std need 5 values") as e:
        D.to_float32(np.zeros((2, 5, 8, 8), np.uint8))                # 5 channels: no hint
    assert "channels last" not in str(e.value)


def test_float_images_of_pixel_values_warn_that_they_are_taken_as_scaled():
    # np.asarray(pil_image, np.float32) gives floats 0..255, which to_float32 and DataLoader
    # took as [0, 1] without a word: inputs of ~1000 after normalisation
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 8, 8)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"to_float32: float images with values up to 255 are "
                                         r"taken as already scaled to \[0, 1\]; .*dividing by 255"):
        D.to_float32(x)
    with pytest.warns(UserWarning, match=r"DataLoader: float images with values up to 255"):
        D.DataLoader(x, np.zeros(4, np.int64), 2)
    # scaled floats, and floats not normalised (mean=None, std=None), are left alone
    D.to_float32(x / 255)
    D.to_float32(x, None, None)
    D.DataLoader(x, np.zeros(4, np.int64), 2, mean=None, std=None)
    D.DataLoader(x / 255, np.zeros(4, np.int64), 2)


def test_the_scale_warning_reads_a_bounded_sample_of_a_large_array(tmp_path):
    """A DataLoader over a large float memmap judges the scale on at most 4096 images spread
    over it (it read every byte, and with a NaN allocated a mask of the whole array)."""
    n = 20000
    images = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float32, (n, 3, 4, 4))
    images[:] = 0.5
    images[1] = np.nan          # not among the images sampled: no word of NaN
    images[n - 1, 0, 0, 0] = 200.0  # the last image is sampled: the scale warning
    with pytest.warns(UserWarning, match=r"^DataLoader: float images with values up to 200 "):
        D.DataLoader(images, np.zeros(n, np.int64), 64)


@pytest.mark.parametrize("bad,values", [(np.inf, r"finite values up to 255 \(and inf or NaN\)"),
                                        (np.nan, r"finite values up to 255 \(and inf or NaN\)"),
                                        (-np.inf, r"values up to 255")])
def test_the_scale_warning_reports_the_largest_finite_value(bad, values):
    # an image holding inf was reported as "values up to inf", whatever the other values
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 8, 8)).astype(np.float32)
    assert np.nanmax(x) == 255
    x[1, 2, 3, 4] = bad
    with pytest.warns(UserWarning, match=rf"^to_float32: float images with {values} are taken "
                                         rf"as already scaled to \[0, 1\]"):
        D.to_float32(x)
    with pytest.warns(UserWarning, match=rf"^DataLoader: float images with {values} are"):
        D.DataLoader(x, np.zeros(4, np.int64), 2)
    # scaled images holding inf or NaN: their scale is right, so no word about it
    scaled = x / 255
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D.to_float32(scaled)
        D.to_float32(np.full((1, 3, 2, 2), bad, np.float32))


@pytest.mark.parametrize("dtype,full", [(np.uint16, 65535), (np.int16, 32767)])
def test_16_bit_images_are_scaled_by_their_full_range_as_uint8_by_255(fake_batches, dtype,
                                                                      full):
    # uint16 / int16 images (16-bit PNG/TIFF, scientific images) went through to_float32,
    # compute_mean_std and DataLoader as values 0..65535, taken for floats in [0, 1]: inputs
    # of ~1e5 after normalisation. As torchvision's ToDtype(float32, scale=True), they are
    # divided by the dtype's full value, so a picture gives the same floats in 8 and 16 bits.
    x8 = fake_batches["test_batch"][b"data"].reshape(-1, 3, 32, 32)[:40]
    x16 = np.rint(x8 * (full / 255)).astype(dtype)           # 0 -> 0, 255 -> full
    # (exact for 65535 = 257 * 255; rounded to 1/2 unit of 1/32767 for int16)
    tol = 1e-6 if full % 255 == 0 else 0.51 / full
    want = x8 / 255.0
    np.testing.assert_allclose(D.to_float32(x16, None, None), want, rtol=0, atol=tol)
    np.testing.assert_allclose(D.to_float32(x16), D.to_float32(x8), rtol=0, atol=tol / 0.2)
    for got, expected in zip(D.compute_mean_std(x16), D.compute_mean_std(x8)):
        np.testing.assert_allclose(got, expected, rtol=0, atol=tol)
    for mean, std in [(None, None), (D.CIFAR10_MEAN, D.CIFAR10_STD)]:
        batch16 = next(iter(D.DataLoader(x16, np.zeros(40, int), 40, mean=mean, std=std)))
        batch8 = next(iter(D.DataLoader(x8, np.zeros(40, int), 40, mean=mean, std=std)))
        assert batch16[0].dtype == np.float32
        np.testing.assert_allclose(batch16[0], batch8[0], rtol=0, atol=tol / 0.2)
    # other integer arrays are values, as before (e.g. counts as features)
    counts = np.arange(12, dtype=np.int64).reshape(4, 3)
    np.testing.assert_array_equal(
        next(iter(D.DataLoader(counts, np.zeros(4, int), 4, mean=None, std=None)))[0], counts)


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------

def _augment_reference(x, rng, pad):
    """Per-image loop with the same random draws as augment_batch (test oracle)."""
    n, c, h, w = x.shape
    oy = rng.integers(0, 2 * pad + 1, size=n)
    ox = rng.integers(0, 2 * pad + 1, size=n)
    flips = rng.random(n) < 0.5
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.empty_like(x)
    for i in range(n):
        crop = padded[i, :, oy[i]:oy[i] + h, ox[i]:ox[i] + w]
        out[i] = crop[:, :, ::-1] if flips[i] else crop
    return out, oy, ox, flips


def test_augment_matches_per_image_reference(fake_batches):
    x = fake_batches["data_batch_1"][b"data"].reshape(-1, 3, 32, 32)[:64]
    got = D.augment_batch(x, np.random.default_rng(5))
    ref, oy, ox, flips = _augment_reference(x, np.random.default_rng(5), 4)
    assert got.dtype == np.uint8 and got.shape == x.shape
    np.testing.assert_array_equal(got, ref)
    assert 0 < flips.sum() < 64 and len(set(oy.tolist())) > 3
    # float input and a different padding take the same path
    xf = x.astype(np.float32)
    np.testing.assert_array_equal(D.augment_batch(xf, np.random.default_rng(1), pad=2),
                                  _augment_reference(xf, np.random.default_rng(1), 2)[0])


def test_augment_statistics():
    x = np.full((4000, 3, 8, 8), 200, np.uint8)
    x[:, :, :, :4] = 100                            # left half darker: flips are visible
    out = D.augment_batch(x, np.random.default_rng(0), pad=2)
    # zero padding appears exactly where the crop leaves the image
    zero_frac = (out == 0).mean()
    # E[zero fraction] = 1 - E[(8 - |dy|)/8] * E[(8 - |dx|)/8] with d uniform on -2..2
    e_keep = np.mean([(8 - abs(d)) / 8 for d in range(-2, 3)])
    assert abs(zero_frac - (1 - e_keep ** 2)) < 0.01
    # without padding each image is either unchanged or mirrored, about half of each
    flip_only = D.augment_batch(x, np.random.default_rng(0), pad=0)
    flipped = flip_only[:, 0, 0, 0] == 200
    assert 0.45 < flipped.mean() < 0.55
    np.testing.assert_array_equal(flip_only[flipped], x[flipped][..., ::-1])
    np.testing.assert_array_equal(flip_only[~flipped], x[~flipped])
    assert np.array_equal(D.augment_batch(x[:0], np.random.default_rng(0)).shape, (0, 3, 8, 8))
    no_flip = D.augment_batch(x, np.random.default_rng(0), pad=0, flip=False)
    np.testing.assert_array_equal(no_flip, x)


# --------------------------------------------------------------------------------------------
# DataLoader
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(fake_batches):
    x = fake_batches["data_batch_1"][b"data"].reshape(-1, 3, 32, 32)
    y = np.asarray(fake_batches["data_batch_1"][b"labels"])
    return x, y


def _epoch(loader):
    return [(xb.copy(), yb.copy()) for xb, yb in loader]


def test_loader_sizes_and_last_batch(small):
    x, y = small                                             # 100 images
    loader = D.DataLoader(x, y, batch_size=32)
    assert len(loader) == 4 and loader.num_samples == 100
    batches = _epoch(loader)
    assert [len(b[1]) for b in batches] == [32, 32, 32, 4]
    xb, yb = batches[0]
    assert xb.dtype == np.float32 and xb.shape == (32, 3, 32, 32) and xb.flags.c_contiguous
    assert yb.dtype == np.int64
    # no shuffle: original order, normalised exactly like to_float32
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), D.to_float32(x))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    dropped = D.DataLoader(x, y, batch_size=32, drop_last=True)
    assert len(dropped) == 3 and [len(b[1]) for b in _epoch(dropped)] == [32, 32, 32]
    exact = D.DataLoader(x, y, batch_size=25, drop_last=True)
    assert len(exact) == 4
    with pytest.raises(ValueError, match="batch_size"):
        D.DataLoader(x, y, batch_size=0)
    with pytest.raises(ValueError, match="labels"):
        D.DataLoader(x, y[:-1])


def test_loader_shuffle_deterministic(small):
    x, y = small
    a = D.DataLoader(x, y, batch_size=16, shuffle=True, seed=3)
    b = D.DataLoader(x, y, batch_size=16, shuffle=True, seed=3)
    c = D.DataLoader(x, y, batch_size=16, shuffle=True, seed=4)
    ea0, ea1 = _epoch(a), _epoch(a)
    eb0, eb1 = _epoch(b), _epoch(b)
    for p, q in zip(ea0 + ea1, eb0 + eb1):
        np.testing.assert_array_equal(p[0], q[0])
        np.testing.assert_array_equal(p[1], q[1])
    labels0 = np.concatenate([t[1] for t in ea0])
    labels1 = np.concatenate([t[1] for t in ea1])
    assert not np.array_equal(labels0, labels1)              # new order each epoch
    assert not np.array_equal(labels0, np.concatenate([t[1] for t in _epoch(c)]))
    # each epoch is a permutation: every image exactly once
    np.testing.assert_array_equal(np.sort(a.permutation(1)), np.arange(100))
    images0 = np.concatenate([t[0] for t in ea0])
    np.testing.assert_array_equal(images0, D.to_float32(x)[a.permutation(0)])
    np.testing.assert_array_equal(labels0, y[a.permutation(0)])
    assert a.epoch == 2 and a.batch == 0


def test_loader_resume_mid_epoch_is_identical(small):
    x, y = small
    kw = dict(batch_size=16, shuffle=True, augment=True, seed=11)
    straight = D.DataLoader(x, y, **kw)
    ref = _epoch(straight) + _epoch(straight)
    first = D.DataLoader(x, y, **kw)
    got = []
    for i, (xb, yb) in enumerate(first):
        got.append((xb.copy(), yb.copy()))
        if i == 2:
            break
    state = first.state_dict()
    assert state == {"seed": 11, "epoch": 0, "batch": 3}
    resumed = D.DataLoader(x, y, **dict(kw, seed=0))
    resumed.load_state_dict(state)
    got += _epoch(resumed) + _epoch(resumed)
    assert len(got) == len(ref)
    for p, q in zip(got, ref):
        np.testing.assert_array_equal(p[0], q[0])
        np.testing.assert_array_equal(p[1], q[1])


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_loader_prefetch_same_result(small, prefetch):
    x, y = small
    ref = _epoch(D.DataLoader(x, y, batch_size=8, shuffle=True, augment=True, seed=2, prefetch=0))
    got = _epoch(D.DataLoader(x, y, batch_size=8, shuffle=True, augment=True, seed=2,
                              prefetch=prefetch))
    for p, q in zip(got, ref, strict=True):
        np.testing.assert_array_equal(p[0], q[0])
        np.testing.assert_array_equal(p[1], q[1])


def test_loader_early_break_stops_worker(small):
    x, y = small
    before = {t.ident for t in threading.enumerate()}
    loader = D.DataLoader(x, y, batch_size=4, prefetch=2)
    it = iter(loader)
    next(it)
    next(it)
    it.close()
    leftovers = [t for t in threading.enumerate()
                 if t.ident not in before and t.name == "fastconv-prefetch"]
    assert leftovers == []
    assert loader.state_dict()["batch"] == 2


def test_loader_worker_error_propagates(small, monkeypatch):
    x, y = small
    loader = D.DataLoader(x, y, batch_size=10, prefetch=1)

    def boom(epoch, index, order=None):
        if index == 3:
            raise RuntimeError("boom in worker")
        return x[:1], y[:1]
    monkeypatch.setattr(loader, "make_batch", boom)
    with pytest.raises(RuntimeError, match="boom in worker"):
        for _ in loader:
            pass


def test_loader_augment_changes_images_but_not_labels(small):
    x, y = small
    plain = _epoch(D.DataLoader(x, y, batch_size=50))
    aug = _epoch(D.DataLoader(x, y, batch_size=50, augment=True, seed=1))
    assert not np.array_equal(plain[0][0], aug[0][0])
    np.testing.assert_array_equal(plain[0][1], aug[0][1])
    # padding is black before normalisation: (0 - mean) / std per channel
    pad_value = (-np.asarray(D.CIFAR10_MEAN) / np.asarray(D.CIFAR10_STD)).astype(np.float32)
    xb = aug[0][0]
    for c in range(3):
        assert np.isclose(xb[:, c], pad_value[c], atol=1e-6).any()



def test_loader_float_images_keep_their_dtype_and_pass_through_unnormalised():
    rng = np.random.default_rng(0)
    x = rng.random((10, 3, 4, 4))                                # float64 in [0, 1]
    y = np.arange(10)
    plain = D.DataLoader(x, y, batch_size=4, mean=None, std=None)
    batches = _epoch(plain)
    assert all(xb.dtype == np.float64 for xb, _ in batches)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)   # untouched
    normed = _epoch(D.DataLoader(x, y, batch_size=4, mean=(0.5,) * 3, std=(0.25,) * 3))
    assert normed[0][0].dtype == np.float64
    np.testing.assert_allclose(np.concatenate([b[0] for b in normed]), (x - 0.5) / 0.25,
                               rtol=1e-12)
    f32 = _epoch(D.DataLoader(x.astype(np.float32), y, batch_size=4))
    assert f32[0][0].dtype == np.float32


def test_loader_takes_any_inputs_and_real_targets():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(9, 5)).astype(np.float32)        # an MLP's (N, features)
    targets = rng.normal(size=(9, 2))
    batches = _epoch(D.DataLoader(features, targets, batch_size=4, shuffle=True, seed=2,
                                  mean=None, std=None))
    order = D.DataLoader(features, targets, 4, shuffle=True, seed=2, mean=None,
                         std=None).permutation(0)
    with pytest.raises(ValueError, match=r"one per channel.*images of shape \(9, 5\).*"
                                         r"mean=None, std=None"):
        D.DataLoader(features, targets)                           # CIFAR-10's 3 channels
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), features[order])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), targets[order])
    assert batches[0][1].dtype == np.float64                      # targets unchanged
    pixels = rng.integers(0, 256, (6, 3), dtype=np.uint8)         # uint8: scaled to [0, 1]
    xb, _ = _epoch(D.DataLoader(pixels, np.zeros(6, int), 6, mean=None, std=None))[0]
    np.testing.assert_allclose(xb, pixels / 255.0, rtol=1e-6)
    with pytest.raises(ValueError, match="augment needs"):
        D.DataLoader(features, targets, augment=True)
    for bad in (np.zeros(9, bool), np.array(["a"] * 9)):
        with pytest.raises(ValueError, match="labels must be 9 integers"):
            D.DataLoader(features, bad)
    with pytest.raises(ValueError, match="images must be a real"):
        D.DataLoader(np.zeros(9), np.zeros(9, int))
    huge = np.full(9, 2 ** 63 + 5, np.uint64)  # would wrap to negative labels as int64
    with pytest.raises(ValueError, match="class indices, got 9223372036854775813"):
        D.DataLoader(features, huge)


# --------------------------------------------------------------------------------------------
# The real archive (../shared/data or $FASTCONV_DATA)
# --------------------------------------------------------------------------------------------

def _real_data_dir() -> Path | None:
    env = os.environ.get("FASTCONV_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "data")
    for c in candidates:
        if D.find_cifar10(c) is not None:
            return c
    return None


_REAL = _real_data_dir()


@pytest.mark.skipif(_REAL is None, reason="real CIFAR-10 not found ($FASTCONV_DATA or ../shared/data)")
def test_real_cifar10():
    ds = D.load_cifar10(_REAL, download=False)
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_test.shape == (10000, 3, 32, 32)
    assert ds.class_names == D.CLASS_NAMES
    np.testing.assert_array_equal(np.bincount(ds.y_train), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
    # known counts of the official data_batch_1 and published pixel values
    np.testing.assert_array_equal(np.bincount(ds.y_train[:10000]),
                                  [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981])
    row0 = ds.x_train[0].reshape(-1)
    np.testing.assert_array_equal(row0[:3], [59, 43, 50])
    np.testing.assert_array_equal(row0[-3:], [140, 84, 72])
    np.testing.assert_array_equal(ds.x_test[0].reshape(-1)[:9],
                                  [158, 159, 165, 166, 160, 156, 162, 159, 158])
    mean, std = D.compute_mean_std(ds.x_train)
    np.testing.assert_allclose(mean, D.CIFAR10_MEAN, atol=1e-6)
    np.testing.assert_allclose(std, D.CIFAR10_STD, atol=1e-6)
