"""fastconv.memory: the block cache behind kernel scratch and NumPy arrays made inside
recycling(): reuse, alignment, zero sizes, the bound, release, thread safety, context-locality,
and training results bit-identical with and without it."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest

from fastconv import _core, memory, models
from fastconv import functional as F
from fastconv.losses import CrossEntropyLoss
from fastconv.training import Callback, fit
from fastconv.training.recipes import Airbench94, airbench94_optimizer, airbench94_schedule

from numpy._core.multiarray import get_handler_name

MIB = 1 << 20
HANDLER = "fastconv_block_cache"
# Sizes on both sides of each of the cache's thresholds: below 1 MiB (plain allocations),
# 1-4 MiB (cached, 64 KiB granules), 4 MiB and up (cached, 2 MiB huge-page blocks).
SIZES = [0, 1, 63, 64, 4096, MIB - 1, MIB, MIB + 1, 3 * MIB + 5, 4 * MIB, 4 * MIB + 5,
         9 * MIB + 3]


@pytest.fixture(autouse=True)
def empty_cache():
    memory.release()
    yield
    memory.release()


def address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("nbytes", SIZES)
def test_arrays_inside_recycling_come_from_the_cache_64_byte_aligned(nbytes):
    with memory.recycling():
        a = np.empty(nbytes, np.uint8)
        assert get_handler_name(a) == HANDLER
        assert address(a) % 64 == 0
        a[:] = 7  # the whole block is writable
        assert (a == 7).all()
        z = np.zeros(nbytes, np.uint8)
        assert not z.any()
    assert get_handler_name(np.empty(8)) != HANDLER


def test_a_freed_block_is_reused_and_counted_as_a_hit():
    with memory.recycling():
        a = np.empty(8 * MIB, np.uint8)
        where, before = address(a), memory.stats()
        del a
        assert memory.stats()["cached_bytes"] >= 8 * MIB
        b = np.empty(8 * MIB - 1000, np.uint8)  # a little smaller: same block
        after = memory.stats()
        assert address(b) == where
        assert after["hits"] == before["hits"] + 1
        assert after["misses"] == before["misses"]


def test_a_much_smaller_request_does_not_take_a_big_block():
    with memory.recycling():
        a = np.empty(40 * MIB, np.uint8)
        where = address(a)
        del a
        b = np.empty(8 * MIB, np.uint8)
        assert address(b) != where


def test_zeros_from_a_reused_block_are_zero():
    with memory.recycling():
        a = np.full(6 * MIB, 0xAB, np.uint8)
        where = address(a)
        del a
        z = np.zeros(6 * MIB, np.uint8)
        assert address(z) == where
        assert not z.any()


@pytest.mark.parametrize("old,new", [(100, 3 * MIB), (3 * MIB, 9 * MIB), (9 * MIB, 100),
                                     (9 * MIB, 8 * MIB)])
def test_resize_keeps_the_data(old, new):
    with memory.recycling():
        a = np.arange(old, dtype=np.uint8)
        a.resize(new, refcheck=False)
        kept = min(old, new)
        np.testing.assert_array_equal(a[:kept], np.arange(kept, dtype=np.uint8))


def test_release_frees_every_cached_block_and_leaving_recycling_does_too():
    with memory.recycling():
        arrays = [np.empty(s, np.uint8) for s in (2 * MIB, 5 * MIB, 11 * MIB)]
        in_use = memory.stats()["in_use_bytes"]
        del arrays
        s = memory.stats()
        assert s["cached_blocks"] == 3 and s["cached_bytes"] >= 18 * MIB
        assert s["in_use_bytes"] == in_use - s["cached_bytes"]
        assert memory.release() == s["cached_bytes"]
        assert memory.stats()["cached_bytes"] == memory.stats()["cached_blocks"] == 0
        kept = np.empty(5 * MIB, np.uint8)
    assert memory.stats()["cached_bytes"] == 0
    in_use = memory.stats()["in_use_bytes"]
    del kept  # made inside, freed outside: back through the cache, within its bound
    assert memory.stats()["in_use_bytes"] < in_use


def test_the_cache_stays_within_its_bound_and_shrinks_after_smaller_work():
    with memory.recycling():
        # a "step" holding 12 blocks at once, of assorted sizes, three times over
        for _ in range(3):
            held = [np.empty((k % 4 + 1) * 3 * MIB + k, np.uint8) for k in range(12)]
            s = memory.stats()
            assert s["in_use_bytes"] + s["cached_bytes"] <= s["bound_bytes"]
            del held
        s = memory.stats()
        assert s["in_use_bytes"] + s["cached_bytes"] <= s["bound_bytes"]
        big = s["cached_bytes"]
        assert big >= 12 * 3 * MIB
        # then many steps of one 2 MiB array: after two windows of allocations the cache
        # keeps little more than that
        for _ in range(2000):
            a = np.empty(2 * MIB, np.uint8)
            del a
            s = memory.stats()
            assert s["in_use_bytes"] + s["cached_bytes"] <= s["bound_bytes"]
        assert memory.stats()["cached_bytes"] <= 4 * MIB < big


def test_the_cache_is_thread_safe():
    # 4 threads at once without the GIL, each allocating, stamping, checking and releasing
    # blocks of every size class
    assert _core.block_cache_exercise(4, 3000, SIZES, seed=1) == 0
    s = memory.stats()
    assert s["in_use_bytes"] + s["cached_bytes"] <= s["bound_bytes"]


def test_kernels_in_several_threads_give_the_serial_results():
    # each conv call takes its scratch from the cache while the others run (GIL released)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 32, 40, 40), dtype=np.float32)
    ws = [rng.standard_normal((48, 32, k, k), dtype=np.float32) for k in (1, 3, 5)]
    serial = [F.conv2d(x, w, padding=w.shape[-1] // 2) for w in ws]
    results: dict[int, list] = {}

    def work(i: int) -> None:
        results[i] = [F.conv2d(x, w, padding=w.shape[-1] // 2) for w in ws for _ in range(3)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in results.values():
        for k, y in enumerate(got):
            np.testing.assert_array_equal(y, serial[k // 3])


def test_recycling_is_local_to_its_thread_and_nests():
    seen = []
    with memory.recycling():
        t = threading.Thread(target=lambda: seen.append(get_handler_name(np.empty(4 * MIB))))
        t.start()
        t.join()
        with memory.recycling():
            assert get_handler_name(np.empty(4 * MIB)) == HANDLER
        assert get_handler_name(np.empty(4 * MIB)) == HANDLER
    assert seen == ["default_allocator"]
    assert get_handler_name(np.empty(4 * MIB)) == "default_allocator"


def airbench_steps(recycle: bool, steps: int = 3) -> tuple[list[float], list[np.ndarray]]:
    """Losses and final parameters of airbench94 steps at batch 64, with or without
    recycling (the handler's blocks come back dirty from the previous step)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    model = models.airbench94(seed=0)
    models.init_whitening_conv(model[0], x)
    hyp = Airbench94(batch_size=64)
    opt = airbench94_optimizer(model, hyp)
    sched = airbench94_schedule(opt, 10, hyp)
    crit = CrossEntropyLoss(label_smoothing=hyp.label_smoothing, reduction="sum")
    losses = []
    with memory.recycling() if recycle else contextlib.nullcontext():
        for _ in range(steps):
            model.zero_grad()
            losses.append(float(crit.forward(model.forward(x), y)))
            model.backward(crit.backward(), input_grad=False)
            opt.step()
            sched.step()
    return losses, [p.data.copy() for p in model.parameters()]


def test_airbench94_steps_are_bit_identical_with_and_without_recycling():
    # the cache's blocks (kernel scratch and, with recycling, arrays) hold the previous step's
    # data: any read of memory not written first would show here
    plain_losses, plain_params = airbench_steps(False)
    losses, params = airbench_steps(True)
    assert losses == plain_losses
    for p, q in zip(params, plain_params):
        np.testing.assert_array_equal(p, q)


def test_fit_trains_inside_recycling():
    handlers = []

    class Record(Callback):
        def on_epoch_end(self, epoch, logs):
            handlers.append(get_handler_name(np.empty(4 * MIB)))

    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    fit(models.simple_cnn(seed=0), (x, y), 1, batch_size=8, progress=False,
        callbacks=[Record()])
    assert handlers == [HANDLER]
    assert get_handler_name(np.empty(4 * MIB)) == "default_allocator"
