"""Data-parallel pieces, in one process: the containers' post-backward hooks, BatchNorm over a
process group, DataLoader shares, DistributedDataParallel's buckets and fit(distributed=...),
with ranks as threads (thread_comm.py) instead of MPI processes. The same code on MPI ranks
started by mpiexec is tested in test_distributed_mpi.py."""

from __future__ import annotations

import copy
import pickle
import sys

import numpy as np
import pytest

from fastconv import data as D, losses, nn, optim
from fastconv.data.transforms import augment_batch
from fastconv.training import Callback, ModelCheckpoint, fit
from fastconv.training import distributed as dist
from fastconv.training.distributed import DistributedDataParallel, Distributed
from thread_comm import RankFailed, run_ranks


# --------------------------------------------------------------------------------------------
# Post-backward hooks
# --------------------------------------------------------------------------------------------

def _recorder(model):
    seen = []
    for name, m in model.named_modules():
        if name:
            m.register_post_backward_hook(lambda mod, name=name: seen.append(name))
    return seen


def test_hooks_fire_after_each_layer_in_backward_order(rng):
    # conv -> relu -> pool runs as one fused step: its three layers are reported after it
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    seen = _recorder(model)
    model(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    model.backward(np.ones((2, 5), np.float32))
    assert seen == ["4", "3", "0", "1", "2"]


def test_hooks_fire_in_residual_and_concat(rng):
    model = nn.Sequential(
        nn.Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
                    shortcut=nn.Conv2d(4, 4, 1)),
        nn.Concat(nn.Conv2d(4, 2, 1), nn.Sequential(nn.Conv2d(4, 3, 1), nn.ReLU())))
    seen = _recorder(model)
    model(rng.standard_normal((2, 4, 6, 6)).astype(np.float32))
    model.backward(np.ones((2, 5, 6, 6), np.float32))
    assert seen == ["1.0", "1.1.1", "1.1.0", "1.1", "1",
                    "0.body.1", "0.body.2", "0.body.0", "0.body", "0.shortcut", "0"]


def test_hook_sees_complete_gradients_and_handle_removes(rng):
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x = rng.standard_normal((4, 6)).astype(np.float32)
    copies = {}
    handles = [m.register_post_backward_hook(lambda mod, i=i: copies.setdefault(
        i, mod.weight.grad.copy())) for i, m in ((0, model[0]), (2, model[2]))]
    model(x)
    model.backward(np.ones((4, 3), np.float32))
    for i in (0, 2):
        np.testing.assert_array_equal(copies[i], model[i].weight.grad)
    for h in handles:
        h.remove()
        h.remove()  # (twice: nothing)
    copies.clear()
    model(x)
    model.backward(np.ones((4, 3), np.float32))
    assert copies == {}


def test_hooks_are_not_copied_or_pickled():
    layer = nn.Linear(3, 2)
    layer.register_post_backward_hook(lambda m: None)
    for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer)), copy.copy(layer)):
        assert not twin.__dict__.get("_post_backward_hooks")
    with pytest.raises(TypeError, match="hook must be callable"):
        layer.register_post_backward_hook(3)


# --------------------------------------------------------------------------------------------
# BatchNorm statistics over a process group
# --------------------------------------------------------------------------------------------

def _bn_stack(cls, dtype, relu, affine=True, track=True, seed=1):
    r = np.random.default_rng(seed)
    bn = cls(5, affine=affine, track_running_stats=track, dtype=dtype)
    if affine:
        bn.weight.data[:] = r.random(5) + 0.5
        bn.bias.data[:] = r.standard_normal(5)
    return nn.Sequential(bn, nn.ReLU()) if relu else nn.Sequential(bn)


def _shares(a, n):
    k = len(a)
    return [a[r * k // n:(r + 1) * k // n] for r in range(n)]


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 2e-6)])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape,cls", [((10, 5, 4, 3), nn.BatchNorm2d), ((9, 5), nn.BatchNorm1d),
                                       ((9, 5, 7), nn.BatchNorm1d)])
@pytest.mark.parametrize("ranks", [2, 3])
def test_group_batchnorm_is_batchnorm_of_the_whole_batch(rng, dtype, tol, relu, shape, cls,
                                                         ranks):
    """Forward, input and parameter gradients and running statistics of the shares equal
    those of one BatchNorm over the concatenated batch (uneven shares with 3 ranks)."""
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    whole = _bn_stack(cls, dtype, relu)
    y, gx = whole(x), whole.backward(gy)

    def rank(comm):
        model = nn.convert_sync_batchnorm(_bn_stack(cls, dtype, relu), comm)
        out = model(_shares(x, ranks)[comm.rank])
        g = model.backward(_shares(gy, ranks)[comm.rank])
        bn = model[0]
        return out, g, bn.weight.grad.copy(), bn.bias.grad.copy(), bn.running_mean.copy(), \
            bn.running_var.copy()

    results = run_ranks(ranks, rank)
    scale = max(1.0, float(np.abs(y).max()))
    np.testing.assert_allclose(np.concatenate([r[0] for r in results]), y, rtol=tol,
                               atol=tol * scale)
    np.testing.assert_allclose(np.concatenate([r[1] for r in results]), gx, rtol=tol,
                               atol=tol * float(np.abs(gx).max()))
    bn = whole[0]
    for i, ref in ((2, bn.weight.grad), (3, bn.bias.grad)):  # (the ranks' grads sum up)
        np.testing.assert_allclose(sum(r[i] for r in results), ref, rtol=tol,
                                   atol=tol * float(np.abs(ref).max()))
    for i, ref in ((4, bn.running_mean), (5, bn.running_var)):
        for r in results:  # (the same bits on every rank)
            np.testing.assert_array_equal(r[i], results[0][i])
        np.testing.assert_allclose(results[0][i], ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("affine,track", [(False, True), (True, False)])
def test_group_batchnorm_without_affine_or_running_stats(rng, affine, track):
    x = rng.standard_normal((8, 5, 3, 3))
    gy = rng.standard_normal((8, 5, 3, 3))
    whole = _bn_stack(nn.BatchNorm2d, np.float64, False, affine, track)
    whole.eval()  # (without running statistics, eval mode uses the batch's too)
    y, gx = whole(x), whole.backward(gy)

    def rank(comm):
        model = nn.convert_sync_batchnorm(
            _bn_stack(nn.BatchNorm2d, np.float64, False, affine, track), comm)
        model.eval()
        return model(_shares(x, 2)[comm.rank]), model.backward(_shares(gy, 2)[comm.rank])

    results = run_ranks(2, rank)
    np.testing.assert_allclose(np.concatenate([r[0] for r in results]), y, atol=1e-13)
    np.testing.assert_allclose(np.concatenate([r[1] for r in results]), gx, atol=1e-13)


def test_group_batchnorm_in_eval_mode_does_not_communicate(rng):
    x = rng.standard_normal((4, 5, 3, 3)).astype(np.float32)

    def rank(comm):
        model = nn.convert_sync_batchnorm(_bn_stack(nn.BatchNorm2d, np.float32, True), comm)
        model.eval()
        model.backward(np.ones_like(model(x)))
        return comm.reductions

    assert run_ranks(2, rank) == [0, 0]


def test_group_batchnorm_of_one_process_is_batchnorm_bit_for_bit(rng):
    x = rng.standard_normal((6, 5, 4, 4)).astype(np.float32)
    gy = rng.standard_normal((6, 5, 4, 4)).astype(np.float32)
    plain = _bn_stack(nn.BatchNorm2d, np.float32, True)

    def rank(comm):
        model = nn.convert_sync_batchnorm(_bn_stack(nn.BatchNorm2d, np.float32, True), comm)
        return model(x), model.backward(gy), model[0].running_var.copy()

    (y, gx, rv), = run_ranks(1, rank)
    np.testing.assert_array_equal(y, plain(x))
    np.testing.assert_array_equal(gx, plain.backward(gy))
    np.testing.assert_array_equal(rv, plain[0].running_var)


def test_group_batchnorm_without_input_grad_skips_the_backward_sums(rng):
    x = rng.standard_normal((4, 5, 3, 3))

    def rank(comm):
        model = nn.convert_sync_batchnorm(_bn_stack(nn.BatchNorm2d, np.float64, False), comm)
        model(x[2 * comm.rank:2 * comm.rank + 2])
        before = comm.reductions
        assert model.backward(np.ones((2, 5, 3, 3)), input_grad=False) is None
        return comm.reductions - before

    assert run_ranks(2, rank) == [0, 0]


def test_group_batchnorm_one_value_per_channel_is_refused_on_every_rank():
    def rank(comm):
        model = nn.convert_sync_batchnorm(nn.BatchNorm1d(3, dtype=np.float64), comm)
        try:
            model(np.ones((1, 3)) if comm.rank == 0 else np.ones((0, 3)))
        except ValueError as e:
            return str(e)

    messages = run_ranks(2, rank)
    assert all("expected more than 1 value per channel" in m and "over the process group" in m
               for m in messages)


def test_convert_sync_batchnorm_sets_and_clears_the_group():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4),
                          nn.Residual(nn.Sequential(nn.BatchNorm2d(4))))
    group = type("G", (), {"size": 2, "allreduce": lambda self, a: a})()
    assert nn.convert_sync_batchnorm(model, group) is model
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 2 and all(bn.process_group is group for bn in bns)
    assert copy.deepcopy(model)[1].process_group is None  # (a copy computes locally)
    nn.convert_sync_batchnorm(model, None)
    assert all(bn.process_group is None for bn in bns)
    with pytest.raises(TypeError, match="process_group must have size and allreduce"):
        nn.convert_sync_batchnorm(model, object())


# --------------------------------------------------------------------------------------------
# DataLoader shares
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
@pytest.mark.parametrize("augment", [False, True])
def test_shares_of_a_batch_make_the_batch(rng, ranks, augment):
    x = rng.integers(0, 256, (50, 3, 8, 8), dtype=np.uint8)
    y = np.arange(50)
    whole = D.DataLoader(x, y, 16, shuffle=True, augment=augment, seed=3)
    shares = [whole.shard(r, ranks) for r in range(ranks)]
    for s in shares:
        assert len(s) == len(whole) and s.batch_size == 16 and s.state_dict() == \
            whole.state_dict()
    for epoch in (0, 2):
        for i in range(len(whole)):
            xb, yb = whole.make_batch(epoch, i)
            parts = [s.make_batch(epoch, i) for s in shares]
            np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), xb)
            np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), yb)
            assert [len(p[1]) for p in parts] == [b - a for a, b in (s.shard_rows(i)
                                                                     for s in shares)]
    assert whole.batch_length(3) == 2 and shares[-1].shard_rows(0)[1] == 16
    # iterating a share resumes where its state says
    s = shares[-1]
    s.set_epoch(1, 2)
    got = [yb for _, yb in s]
    assert len(got) == len(whole) - 2 and s.state_dict()["epoch"] == 2
    assert "shard" in repr(s) if ranks > 1 else "shard" not in repr(s)


def test_shard_refuses_bad_ranks():
    loader = D.DataLoader(np.zeros((4, 3, 2, 2), np.uint8), np.zeros(4, int), 2)
    for rank, n, match in ((0, 0, "num_replicas must be an int >= 1"),
                           (2, 2, "rank must be an int in 0..1"),
                           (-1, 2, "rank must be"), (True, 2, "rank must be")):
        with pytest.raises(ValueError, match=match):
            loader.shard(rank, n)


def test_augment_rows_are_the_rows_of_the_whole_augmentation(rng):
    images = rng.integers(0, 256, (10, 3, 6, 6), dtype=np.uint8)
    whole = augment_batch(images, np.random.default_rng(7), pad=2)
    for start, stop in ((0, 4), (4, 10), (3, 3)):
        part = augment_batch(images[start:stop], np.random.default_rng(7), pad=2,
                             rows=(start, 10))
        np.testing.assert_array_equal(part, whole[start:stop])
    with pytest.raises(ValueError, match="rows"):
        augment_batch(images[:4], np.random.default_rng(7), rows=(8, 10))


# --------------------------------------------------------------------------------------------
# DistributedDataParallel on thread ranks
# --------------------------------------------------------------------------------------------

def _net(seed=0, dtype=np.float64, bn=False, dropout=0.0):
    r = np.random.default_rng(seed)
    layers = [nn.Conv2d(3, 6, 3, padding=1, dtype=dtype)]
    if bn:
        layers.append(nn.BatchNorm2d(6, dtype=dtype))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, 12, dtype=dtype),
               nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout, rng=11))
    layers.append(nn.Linear(12, 4, dtype=dtype))
    model = nn.Sequential(*layers)
    for p in model.parameters():
        p.data[...] = r.standard_normal(p.shape) * 0.3
    return model


def _one_step(model, x, y, net=None):
    net = net or model
    crit = losses.CrossEntropyLoss()
    net.zero_grad()
    crit.forward(net.forward(x), y)
    net.backward(crit.backward(), input_grad=False)
    return {n: p.grad.copy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("bucket_mb", [1e-4, 4.0])
def test_gradients_are_the_mean_over_ranks(rng, bucket_mb):
    x = rng.standard_normal((8, 3, 8, 8))
    y = rng.integers(0, 4, 8)
    want = _one_step(_net(), x, y)

    def rank(comm):
        model = _net(seed=comm.rank)  # (rank 0's weights are sent to the others)
        ddp = DistributedDataParallel(model, comm, bucket_mb=bucket_mb)
        grads = [_one_step(model, x[4 * comm.rank:4 * comm.rank + 4],
                           y[4 * comm.rank:4 * comm.rank + 4], ddp) for _ in range(2)]
        return grads, ddp.buckets, comm.started

    results = run_ranks(2, rank)
    for grads, buckets, started in results:
        for g in grads:
            for k in want:
                np.testing.assert_allclose(g[k], want[k], rtol=1e-12, atol=1e-15)
        assert started == 2 * len(buckets)  # one allreduce per bucket and step
    for k in want:  # the same bits on both ranks
        np.testing.assert_array_equal(results[0][0][0][k], results[1][0][0][k])
    buckets = results[0][1]
    if bucket_mb == 4.0:
        assert buckets == [(6, sum(-(-n // 8) * 8 * 8 for n in (4, 48, 12, 1152, 6, 162)))]
    else:  # (a bucket per parameter, each 64-byte aligned)
        assert [b[0] for b in buckets] == [1] * 6


def test_bucket_plan_fills_buckets_in_reverse_order_up_to_the_size():
    sizes = [40, 1200, 80, 120, 20]
    assert dist.bucket_plan(sizes, 200) == [[4, 3], [2], [1], [0]]
    assert dist.bucket_plan(sizes, 1 << 20) == [[4, 3, 2, 1, 0]]
    assert dist.bucket_plan(sizes, 1) == [[4], [3], [2], [1], [0]]
    dtypes = [np.float32, np.float64, np.float64]
    assert dist.bucket_plan([16, 32, 32], 1 << 20, dtypes) == [[2, 1], [0]]  # (one dtype each)
    assert dist.bucket_plan([], 100) == []


def test_buckets_start_during_backward_in_reverse_parameter_order(rng):
    """The last layer's bucket is started as soon as its backward has run, before the
    earlier layers' backward."""
    x = rng.standard_normal((4, 3, 8, 8))
    y = rng.integers(0, 4, 4)

    def rank(comm):
        model = _net()
        ddp = DistributedDataParallel(model, comm, bucket_mb=1e-4)
        started = []
        for name, m in model.named_modules():
            if name:
                m.register_post_backward_hook(lambda mod, name=name: started.append(
                    (name, comm.started)))
        _one_step(model, x[2 * comm.rank:2 * comm.rank + 2], y[2 * comm.rank:2 * comm.rank + 2],
                  ddp)
        return started

    started = dict(run_ranks(2, rank)[0])
    # (hooks run in registration order: the reducer's first, so a layer's count includes it)
    assert started["6"] == 2 and started["4"] == 4 and started["0"] == 6


def test_shared_parameter_is_reduced_once_both_layers_ran(rng):
    def build():
        r = np.random.default_rng(3)
        a, b = nn.Linear(5, 5, dtype=np.float64), nn.Linear(5, 5, dtype=np.float64)
        b.weight = a.weight
        model = nn.Sequential(a, nn.ReLU(), b, nn.ReLU(), nn.Linear(5, 3, dtype=np.float64))
        for p in model.parameters():
            p.data[...] = r.standard_normal(p.shape)
        return model

    x = rng.standard_normal((4, 5))
    y = rng.integers(0, 3, 4)
    want = _one_step(build(), x, y)

    def rank(comm):
        model = build()
        ddp = DistributedDataParallel(model, comm, bucket_mb=1e-5)
        return _one_step(model, x[2 * comm.rank:2 * comm.rank + 2],
                         y[2 * comm.rank:2 * comm.rank + 2], ddp), len(ddp.buckets)

    for g, n in run_ranks(2, rank):
        assert n == 5  # (the shared weight once)
        for k in want:
            np.testing.assert_allclose(g[k], want[k], rtol=1e-12, atol=1e-15)


def test_frozen_parameters_are_not_reduced_until_unfrozen(rng):
    x = rng.standard_normal((4, 3, 8, 8))
    y = rng.integers(0, 4, 4)

    def build():
        model = _net()
        model[0].bias.requires_grad = False
        return model

    want = _one_step(build(), x, y)

    def rank(comm):
        model = build()
        ddp = DistributedDataParallel(model, comm, bucket_mb=1e-4)
        sl = slice(2 * comm.rank, 2 * comm.rank + 2)
        first = _one_step(model, x[sl], y[sl], ddp)
        n_buckets = len(ddp.buckets)
        model[0].bias.requires_grad = True  # (the buckets are made again)
        second = _one_step(model, x[sl], y[sl], ddp)
        return first, second, n_buckets, len(ddp.buckets)

    first, second, n1, n2 = run_ranks(2, rank)[0]
    assert (n1, n2) == (5, 6)
    np.testing.assert_array_equal(first["0.bias"], 0)
    np.testing.assert_allclose(first["0.weight"], want["0.weight"], rtol=1e-12)
    assert np.abs(second["0.bias"]).max() > 0


def _steps(ranks, make_opt, sharded, bucket_mb, x, y, steps=3, unfreeze_at=None):
    """Per rank: the weights and the optimiser state (gathered) after ``steps`` steps of
    DistributedDataParallel on thread ranks, the update shared or not."""

    def rank(comm):
        model = _net()
        if unfreeze_at is not None:
            model[0].bias.requires_grad = False
        opt = make_opt(model.parameters())
        ddp = DistributedDataParallel(model, comm, bucket_mb=bucket_mb,
                                      optimizer=opt if sharded else None)
        share = len(x) // comm.size
        rows = slice(share * comm.rank, share * (comm.rank + 1))
        for step in range(steps):
            if step == unfreeze_at:
                model[0].bias.requires_grad = True  # (the buckets are made again)
            _one_step(model, x[rows], y[rows], ddp)
            ddp.step() if sharded else opt.step()
        ddp.gather_optimizer_state()
        state = opt.state_dict()["state"]
        return {k: v.copy() for k, v in model.state_dict().items()}, state

    return run_ranks(ranks, rank)


SHARED_OPTIMIZERS = {
    "sgd": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda p: optim.Adam(p, lr=1e-2, weight_decay=1e-3),
}


@pytest.mark.parametrize("bucket_mb", [1e-4, 4.0])
@pytest.mark.parametrize("opt", list(SHARED_OPTIMIZERS))
@pytest.mark.parametrize("ranks", [2, 3])
def test_shared_update_gives_the_bits_of_every_rank_updating_all(rng, ranks, opt, bucket_mb):
    """The sharded update (reduce-scatter, 1/N of the update per rank, gather the weights)
    against every rank making the whole step after an allreduce: the same sums of the same
    values, the same elementwise update, so the same weights and optimiser state, bit for
    bit, on every rank."""
    x = rng.standard_normal((12, 3, 8, 8))
    y = rng.integers(0, 4, 12)
    make = SHARED_OPTIMIZERS[opt]
    want = _steps(ranks, make, False, bucket_mb, x, y)
    got = _steps(ranks, make, True, bucket_mb, x, y)
    for (w_want, s_want), (w_got, s_got) in zip(want, got):
        for k in w_want:
            np.testing.assert_array_equal(w_got[k], w_want[k], err_msg=k)
            np.testing.assert_array_equal(w_got[k], got[0][0][k], err_msg=k)
        assert s_got.keys() == s_want.keys()
        for i in s_want:
            for k, v in s_want[i].items():
                np.testing.assert_array_equal(s_got[i][k], v, err_msg=f"{i}.{k}")


@pytest.mark.parametrize("ranks", [2, 3, 4, 7])
@pytest.mark.parametrize("sizes", [[307946], [1], [5, 40], [2304 * 1024, 1024], [17, 300, 9]])
def test_shared_update_blocks_cover_the_bucket_on_cache_lines(ranks, sizes):
    """The ranks' blocks of a bucket cover it, start on cache lines, and none is longer than
    the blocks before it (an in-place reduce-scatter moves block r to the front of rank r's
    buffer; MPICH copies it with memcpy, which must not overlap), and each rank's pieces are
    its block's elements of the parameters."""
    params = [nn.Parameter(np.zeros(n, np.float32)) for n in sizes]
    buckets = [dist._Bucket(params, np.dtype(np.float32), ranks, r) for r in range(ranks)]
    counts = buckets[0].counts
    n = buckets[0].buffer.size if len(sizes) > 1 else sizes[0]
    assert sum(counts) == n and all(b.counts == counts for b in buckets)
    starts = np.cumsum([0] + counts[:-1])
    assert all(s % 16 == 0 or s == n for s in starts)  # (empty blocks at the end)
    assert all(counts[r] <= starts[r] for r in range(1, ranks))
    covered = [0] * len(sizes)
    for r, b in enumerate(buckets):
        for p, start, stop, at, k in b.pieces:
            i = next(j for j, q in enumerate(params) if q is p)
            assert at == b.offsets[i] + start and k == at - starts[r]
            assert starts[r] <= at and at + stop - start <= starts[r] + counts[r]
            covered[i] += stop - start
    assert covered == sizes


def test_shared_update_with_a_parameter_unfrozen_midway(rng):
    x = rng.standard_normal((4, 3, 8, 8))
    y = rng.integers(0, 4, 4)
    make = SHARED_OPTIMIZERS["adam"]
    want = _steps(2, make, False, 1e-4, x, y, steps=4, unfreeze_at=2)
    got = _steps(2, make, True, 1e-4, x, y, steps=4, unfreeze_at=2)
    for (w_want, s_want), (w_got, s_got) in zip(want, got):
        for k in w_want:
            np.testing.assert_array_equal(w_got[k], w_want[k], err_msg=k)
        assert s_got[1]["step"] == s_want[1]["step"] == 2  # (the bias: 2 steps since)


def test_shared_update_needs_an_elementwise_optimizer():
    class Normed(optim.SGD):
        elementwise = False

    def rank(comm):
        model = nn.Linear(3, 2)
        with pytest.raises(TypeError, match="elementwise"):
            DistributedDataParallel(model, comm, optimizer=Normed(model.parameters(), lr=0.1))
        with pytest.raises(ValueError, match="no optimizer was given"):
            DistributedDataParallel(model, comm).step()
        return True

    assert run_ranks(2, rank) == [True, True]


def test_dropout_masks_are_the_whole_batch_masks(rng):
    x = rng.standard_normal((6, 3, 8, 8))
    y = rng.integers(0, 4, 6)
    whole = _net(dropout=0.5)
    want = _one_step(whole, x, y)

    def rank(comm):
        model = _net(dropout=0.5)
        ddp = DistributedDataParallel(model, comm)
        g = _one_step(model, x[3 * comm.rank:3 * comm.rank + 3], y[3 * comm.rank:3 * comm.rank + 3],
                      ddp)
        state = model[6].rng.bit_generator.state
        ddp.close()
        return g, state, type(model[6].rng)

    for g, state, kind in run_ranks(2, rank):
        for k in want:
            np.testing.assert_allclose(g[k], want[k], rtol=1e-12, atol=1e-15)
        assert state == whole[6].rng.bit_generator.state and kind is np.random.Generator


def test_model_of_another_shape_is_refused_on_every_rank():
    def rank(comm):
        model = nn.Linear(3, 2 + comm.rank)
        with pytest.raises(ValueError, match=r"rank 1's model differs from rank 0's") as e:
            DistributedDataParallel(model, comm)
        return dist.raised_on_every_rank(e.value)

    assert run_ranks(2, rank) == [True, True]


def test_close_gives_the_module_back(rng):
    def rank(comm):
        model = _net(bn=True, dropout=0.2)
        gen = model[7].rng
        ddp = DistributedDataParallel(model, comm, sync_bn=True)
        assert model[1].process_group is not None and model[7].rng is not gen
        ddp.close()
        assert model[1].process_group is None and model[7].rng is gen
        model(rng.standard_normal((2, 3, 8, 8)))
        model.backward(np.ones((2, 4)))  # (no hooks left: nothing waits for the other rank)
        return list(ddp.state_dict())[:2]

    assert run_ranks(2, rank)[0] == ["module.0.weight", "module.0.bias"]


def test_bucket_mb_must_be_positive():
    def rank(comm):
        with pytest.raises(ValueError, match="bucket_mb must be a number > 0"):
            DistributedDataParallel(nn.Linear(2, 2), comm, bucket_mb=0)

    run_ranks(1, rank)


# --------------------------------------------------------------------------------------------
# fit(..., distributed=...) on thread ranks
# --------------------------------------------------------------------------------------------

def _fit_data(n=48, seed=0):
    r = np.random.default_rng(seed)
    return r.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8), r.integers(0, 4, n)


def _fit(comm=None, *, bn=True, dropout=0.3, sync_bn=True, batch=12, epochs=2, n=48, seed=0,
         callbacks=(), resume=None, scheduler=True, shard_update=None):
    x, y = _fit_data(n)
    model = _net(seed=seed, bn=bn, dropout=dropout)
    train = D.DataLoader(x.astype(np.float64) / 255, y, batch, shuffle=True, augment=True,
                         seed=2, mean=None, std=None)
    val = D.DataLoader(x[:20].astype(np.float64) / 255, y[:20], 8, mean=None, std=None)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    sched = optim.OneCycleLR(opt, max_lr=0.05, total_steps=epochs * len(train)) \
        if scheduler else None
    options = False if comm is None else Distributed(sync_bn=sync_bn, bucket_mb=1e-3, comm=comm,
                                                     shard_update=shard_update)
    history = fit(model, train, epochs, optimizer=opt, scheduler=sched, val=val,
                  callbacks=list(callbacks), progress=False, distributed=options, resume=resume)
    return model.state_dict(), history


def _assert_same_run(a, b, rtol):
    (wa, ha), (wb, hb) = a, b
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=rtol, atol=rtol * float(np.abs(wa[k]).max()),
                                   err_msg=k)
    for ra, rb in zip(ha.rows, hb.rows):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-9), key
        assert ra["step"] == rb["step"]


@pytest.mark.parametrize("ranks", [2, 3])
def test_fit_on_ranks_is_fit_on_the_whole_batch(ranks):
    """float64, BatchNorm over the group, dropout, augmentation, Nesterov momentum, weight
    decay, a one-cycle schedule, validation (uneven shares of its batches): the same weights
    and metrics as one process, to the rounding of sums taken in another order."""
    single = _fit()
    for result in run_ranks(ranks, _fit):
        _assert_same_run(single, result, 1e-11)


class _Shared(Callback):
    """Records whether the fit shares the optimiser's update between the ranks."""

    def on_train_begin(self, logs):
        self.shared = self.trainer.parallel.net.optimizer is not None


class _ReadsGradients(_Shared):
    def on_before_optimizer_step(self, batch, logs):
        self.norm = sum(float(np.sum(p.grad ** 2)) for p in self.trainer.model.parameters())


@pytest.mark.parametrize("cls,option,on_one_machine,shared", [
    (_Shared, None, True, True), (_ReadsGradients, None, True, False),
    (_Shared, None, False, False), (_Shared, False, True, False), (_Shared, True, False, True),
    (_ReadsGradients, True, True, False)])
def test_fit_shares_the_update_on_one_machine_unless_a_callback_reads_gradients(
        cls, option, on_one_machine, shared):
    """fit shares the update (by default when every rank is on one machine) unless a
    callback is promised whole gradients before the step; the weights are those of one
    process either way."""
    single = _fit(epochs=1)

    def rank(comm):
        comm.local_size = comm.size if on_one_machine else 1
        cb = cls()
        return _fit(comm, epochs=1, callbacks=[cb], shard_update=option), cb.shared

    for result, used in run_ranks(2, rank):
        assert used is shared
        _assert_same_run(single, result, 1e-11)


@pytest.mark.parametrize("ranks,n", [(2, 45), (3, 44)])
def test_fit_with_an_uneven_last_batch_weights_the_shares(ranks, n):
    # the last batch of 45 (44) samples in batches of 12 holds 9 (8) samples, shared 4 + 5
    # (2 + 3 + 3): the loss gradient of each share is scaled by its size
    single = _fit(n=n)
    for result in run_ranks(ranks, lambda c: _fit(c, n=n)):
        _assert_same_run(single, result, 1e-11)


def test_fit_with_a_summed_loss():
    def run(comm=None):
        x, y = _fit_data()
        model = _net(bn=False)
        opt = optim.SGD(model.parameters(), lr=0.002)
        options = False if comm is None else Distributed(comm=comm)
        fit(model, (x.astype(np.float64) / 255, y), 1, optimizer=opt, batch_size=12,
            loss=losses.CrossEntropyLoss(reduction="sum"), progress=False,
            distributed=options)
        return model.state_dict()

    single = run()
    for state in run_ranks(2, run):
        for k in single:
            np.testing.assert_allclose(state[k], single[k], rtol=1e-11, atol=1e-14)


def test_fit_with_local_batchnorm_differs_from_the_whole_batch():
    single = _fit(dropout=0.0)
    local = run_ranks(2, lambda c: _fit(c, dropout=0.0, sync_bn=False))
    for k in single[0]:
        np.testing.assert_array_equal(local[0][0][k], local[1][0][k])  # (ranks agree)
    assert max(float(np.abs(single[0][k] - local[0][0][k]).max()) for k in single[0]) > 1e-6


def _fit_seeded(comm=None, *, dropout_seed=None, data=None, loss=None, epochs=1):
    """A short fit of _net with dropout whose generator is seeded `dropout_seed` (None: from
    the OS), on `data` (default _fit_data) with `loss`."""
    x, y = _fit_data() if data is None else data
    model = _net(bn=False, dropout=0.3)
    model[-2].rng = np.random.default_rng(dropout_seed)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    fit(model, (x.astype(np.float64) / 255, y), epochs, optimizer=opt, batch_size=12,
        loss=loss, progress=False,
        distributed=False if comm is None else Distributed(comm=comm))
    return model.state_dict()


def test_fit_starts_the_ranks_generators_from_rank_0s():
    """Dropout generators seeded per rank (or from the OS) draw rank 0's masks on every rank:
    the weights are those of one process whose generator has rank 0's seed."""
    single = _fit_seeded(dropout_seed=5)
    for ranks_seed in (lambda r: 5 + r, lambda r: None):
        for state in run_ranks(2, lambda c: _fit_seeded(c, dropout_seed=5 if c.rank == 0
                                                        else ranks_seed(c.rank))):
            for k in single:
                np.testing.assert_allclose(state[k], single[k], rtol=1e-11, atol=1e-14)


def test_fit_refuses_ranks_given_other_data_anywhere():
    """Every byte of the ranks' data is compared: one changed image, or one label, is
    refused on every rank."""
    x, y = _fit_data(2100)  # (past 1024 rows: a sample of every other row would skip 37)

    def rank(comm, what):
        xr, yr = x.copy(), y.copy()
        if comm.rank == 1:
            if what == "image":
                xr[37, 2, 5, 6] ^= 1  # (a row a sample of every 1024th would skip)
            else:
                yr[41] = (yr[41] + 1) % 4
        with pytest.raises(ValueError, match=r"different settings: train data is") as e:
            _fit_seeded(comm, dropout_seed=1, data=(xr, yr))
        return dist.raised_on_every_rank(e.value)

    for what in ("image", "label"):
        assert run_ranks(2, lambda c: rank(c, what)) == [True, True]


@pytest.mark.parametrize("case", ["weight", "ignore_index"])
def test_fit_refuses_a_mean_loss_that_divides_shares_by_their_weights(case):
    """A class-weighted cross-entropy, or targets holding ignore_index, with a mean: each
    share would divide by its own targets' weights (another step than one process's):
    refused on every rank, naming the fix; reduction='sum' takes the whole batch's step."""
    x, y = _fit_data()
    if case == "ignore_index":
        y = y.copy()
        y[::5] = -100
    weight = np.array([1.0, 2.0, 0.5, 1.0]) if case == "weight" else None

    def rank(comm):
        with pytest.raises(ValueError, match=r"distributed training needs a mean loss.*"
                                             r"reduction='sum'") as e:
            _fit_seeded(comm, dropout_seed=1, data=(x, y),
                        loss=losses.CrossEntropyLoss(weight))
        summed = _fit_seeded(comm, dropout_seed=1, data=(x, y),
                             loss=losses.CrossEntropyLoss(weight, reduction="sum"))
        return dist.raised_on_every_rank(e.value), summed

    single = _fit_seeded(dropout_seed=1, data=(x, y),
                         loss=losses.CrossEntropyLoss(weight, reduction="sum"))
    for raised, state in run_ranks(2, rank):
        assert raised
        for k in single:
            np.testing.assert_allclose(state[k], single[k], rtol=1e-10, atol=1e-13)


def test_fit_refuses_a_batch_not_divisible_by_the_ranks():
    def rank(comm):
        with pytest.raises(ValueError, match="batch size 12 .* not divisible by the 5 ranks") as e:
            _fit(comm)
        return dist.raised_on_every_rank(e.value)

    assert run_ranks(5, rank) == [True] * 5


def test_fit_refuses_a_last_batch_smaller_than_the_ranks():
    def rank(comm):
        with pytest.raises(ValueError, match="last batch of an epoch holds 2 samples, fewer "
                                             "than the 4 ranks"):
            _fit(comm, n=26, batch=12)

    run_ranks(4, rank)


def test_fit_refuses_ranks_with_other_settings_on_every_rank():
    def rank(comm):
        with pytest.raises(ValueError, match=r"the ranks were started with different settings: "
                                             r"epochs is 3 on rank 1 but 2 on rank 0"):
            _fit(comm, epochs=2 + comm.rank)

    run_ranks(2, rank)


def test_fit_refuses_on_every_rank_what_one_rank_refuses():
    def rank(comm):
        if comm.rank == 1:
            with pytest.raises(ValueError, match="epochs must be an int"):
                _fit(comm, epochs=0, scheduler=False)
        else:
            with pytest.raises(ValueError, match=r"rank 1 refused the set-up: ValueError: "
                                                 r"fit: epochs must be an int"):
                _fit(comm, scheduler=False)

    run_ranks(2, rank)


def test_fit_failure_on_one_rank_aborts_the_job(capfd):
    from fastconv.training import Callback

    class FailOnRank1(Callback):
        def on_batch_end(self, batch, logs):
            if self.trainer.rank == 1 and self.trainer.step == 3:
                raise KeyError("injected")

    aborted = {}

    def rank(comm):
        try:
            _fit(comm, callbacks=[FailOnRank1()])
        finally:
            aborted[comm.rank] = comm.aborted

    with pytest.raises(RankFailed, match="rank 1 aborted with code 1"):
        run_ranks(2, rank)
    assert aborted[1] == 1  # rank 1 called MPI_Abort
    err = capfd.readouterr().err
    assert "fastconv.training.fit: rank 1 of 2 failed" in err and "KeyError: 'injected'" in err
    assert "ending all 2 ranks (MPI_Abort)" in err


def test_fit_writes_on_rank_zero_and_resumes_on_other_rank_counts(tmp_path):
    """A stop after 5 steps (a callback on rank 1 only: agreed by the ranks), the checkpoint
    of rank 0, resumed on 1, 2 and 3 ranks: the run of 2 ranks continues bit for bit."""
    from fastconv.training import Callback

    class StopOnRank1(Callback):
        def on_batch_end(self, batch, logs):
            if self.trainer.rank == 1 and self.trainer.step == 5:
                self.trainer.stop_training = True

    def stopped(comm):
        ckpt = ModelCheckpoint(tmp_path / f"run{comm.rank}.npz")
        return _fit(comm, callbacks=[ckpt, StopOnRank1()])

    whole = run_ranks(2, _fit)[0]
    run_ranks(2, stopped)
    assert (tmp_path / "run0.npz").is_file() and not (tmp_path / "run1.npz").exists()
    from fastconv.checkpoint import load_checkpoint
    state = load_checkpoint(tmp_path / "run0.npz")
    assert state["position"]["step"] == 5
    again = run_ranks(2, lambda c: _fit(c, resume=tmp_path / "run0.npz"))
    for k in whole[0]:
        np.testing.assert_array_equal(again[0][0][k], whole[0][k])
    assert len(again[0][1].rows) == 2
    _assert_same_run(whole, _fit(resume=str(tmp_path / "run0.npz")), 1e-11)
    _assert_same_run(whole, run_ranks(3, lambda c: _fit(c, resume=state))[2], 1e-11)


def test_fit_resume_error_is_raised_on_every_rank(tmp_path):
    def rank(comm):
        with pytest.raises(FileNotFoundError, match="fit: resume: no such checkpoint file") \
                as e:
            _fit(comm, resume=tmp_path / "missing.npz")
        assert e.value.filename == str(tmp_path / "missing.npz")
        return dist.raised_on_every_rank(e.value)

    assert run_ranks(2, rank) == [True, True]


# --------------------------------------------------------------------------------------------
# Without mpi4py
# --------------------------------------------------------------------------------------------

def test_without_mpi4py_distributed_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setattr(dist, "_WORLD", None)
    with pytest.raises(ImportError, match=r"pip install 'fastconv\[mpi\]'"):
        fit(nn.Linear(2, 2), (np.zeros((4, 2)), np.zeros(4, int)), 1, progress=False,
            distributed=True)
    from fastconv.cli import train as T
    assert T.main(["--distributed", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'fastconv[mpi]'" in err[0] and "mpiexec" in err[0]


def test_fit_distributed_must_be_true_or_options():
    with pytest.raises(TypeError, match="distributed must be True, False or a"):
        fit(nn.Linear(2, 2), (np.zeros((4, 2)), np.zeros(4, int)), 1, progress=False,
            distributed="yes")


# --------------------------------------------------------------------------------------------
# Threads per rank
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cores,bound,local,expected", [
    (8, 8, 1, 8), (8, 8, 2, 4), (8, 8, 3, 2), (2, 2, 2, 1), (2, 2, 4, 1),
    (16, 4, 4, 4),  # (a launcher bound the rank to 4 cores: those)
    (16, 1, 1, 1),
])
def test_default_threads_share_the_cores_among_the_ranks(monkeypatch, cores, bound, local,
                                                         expected):
    monkeypatch.setattr(dist.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(dist.os, "sched_getaffinity", lambda pid: set(range(bound)),
                        raising=False)
    assert dist.default_threads(local) == expected
