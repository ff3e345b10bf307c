"""Data-parallel training over MPI: one process (rank) per share of every batch, on one machine
or many, with the gradients summed across ranks before each optimiser step.

::

    mpiexec -n 4 fastconv-train --distributed --batch-size 256      # the command
    mpiexec -n 4 python train.py            # a script calling fit(..., distributed=True)

``pip install 'fastconv[mpi]'`` installs mpi4py and the MPICH library (its ``mpiexec``).

A step on N ranks, for a loader of (global) batch size B:

* every rank draws the same permutation and augmentation of the batch (they are functions of
  seed, epoch and batch index) and takes its own contiguous B/N rows of it
  (:meth:`fastconv.data.DataLoader.shard`); modules' random generators (dropout) draw the
  whole batch's values and keep their rows, so every rank's generators stay equal;
* each rank runs forward and backward on its rows. As soon as backward has completed the
  gradients of a bucket of parameters (~:data:`DEFAULT_BUCKET_MB` MB, filled in reverse order
  of ``model.parameters()``, which is about the order backward completes them), a
  non-blocking ``MPI_Iallreduce`` starts summing that bucket across ranks while backward
  goes on with the earlier layers (the containers report finished layers through
  :meth:`fastconv.nn.Module.register_post_backward_hook`). Buckets start in a fixed order,
  the same on every rank, one call each;
* after backward, the last buckets are reduced; every ``Parameter.grad`` then holds the mean
  of the ranks' gradients, which is the gradient of the loss over the whole batch, and every
  rank makes the same optimiser step. Parameters, optimiser state and generators stay equal
  on all ranks without ever being sent again;
* or, with a shared (sharded) update (``DistributedDataParallel(..., optimizer=opt)``, what
  :func:`fastconv.training.fit` uses when it can), each bucket is reduce-scattered instead:
  rank r receives the sum of its 1/N block of the bucket's elements only, updates those
  elements (the optimisers' rules are elementwise, so they get the bits a whole step gives
  them) and the ranks gather the updated weights. The same bytes cross as with an
  allreduce; each rank does 1/N of the update, and keeps the optimiser state of its own
  elements (gathered whole before checkpoints).

BatchNorm layers use each rank's own rows for their batch statistics (as PyTorch's DDP), or,
with ``sync_bn``, the statistics of the whole batch (as SyncBatchNorm:
:func:`fastconv.nn.convert_sync_batchnorm`); their running statistics are taken from rank 0
before every evaluation and checkpoint (DDP's ``broadcast_buffers`` sends them at every
forward; these are the points where they are read). Rank 0 alone writes checkpoints, logs
and plots; a checkpoint holds the state of the whole run and resumes on any number of ranks
that divides the global batch.

A rank that fails ends the job: its error is printed and ``MPI_Abort`` stops every rank (the
others would otherwise wait for it forever, mpi4py#290), unless the error is one that every
rank raises at the same point (a refused set-up, a diverged loss). MPI calls are made only by
the thread that runs the training; the compiled kernels' OpenMP threads never call MPI.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import sys
import time
import traceback
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..nn import Module, convert_sync_batchnorm
from ..nn.utils import _scale_gradients, clip_grad_norm_

__all__ = ["MPI_INSTALL_HINT", "DEFAULT_BUCKET_MB", "Communicator", "world", "find_mpiexec",
           "mpi_missing", "launcher_size", "bucket_plan",
           "default_threads", "DistributedDataParallel", "Distributed", "FitRun", "start_fit",
           "every_rank", "raised_on_every_rank", "abort_job"]

MPI_INSTALL_HINT = ("distributed training needs mpi4py and an MPI library: pip install "
                    "'fastconv[mpi]' (in a fastconv checkout: pip install '.[mpi]'), then start "
                    "the ranks with mpiexec -n N")

DEFAULT_BUCKET_MB = 4.0
"""Gradient bucket size: large enough that a bucket's allreduce is bandwidth- rather than
latency-bound (a few MB against ~10 us of latency per call), small enough that the first
buckets start while most of backward is still to run (see docs/distributed.md)."""

_BUCKET_ALIGN = 64  # bytes: each parameter's gradient starts on a cache line of its bucket


def _mpi():
    """mpi4py's MPI module (importing it initialises MPI), or ImportError with the hint."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(MPI_INSTALL_HINT) from e
    return MPI


def find_mpiexec() -> str | None:
    """The ``mpiexec`` of this Python's environment (the mpich wheel installs it beside the
    interpreter), else the first on PATH, else None."""
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.isfile(local) else shutil.which("mpiexec")


def mpi_missing() -> str | None:
    """Why ranks cannot be started here (no mpi4py, no mpiexec), in one line, or None.
    Looks for mpi4py without importing it (importing it initialises MPI)."""
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install 'fastconv[mpi]')"
    if find_mpiexec() is None:
        return "no mpiexec found (pip install 'fastconv[mpi]' installs MPICH's)"
    return None


def launcher_size() -> int | None:
    """The number of processes an MPI launcher (mpiexec/mpirun/srun with PMI) started this one
    with, read from its environment, or None when it was not started by one."""
    for key in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE"):
        value = os.environ.get(key)
        if value and value.isdigit():
            return int(value)
    return None


# --------------------------------------------------------------------------------------------
# Communicator
# --------------------------------------------------------------------------------------------

class _Pending:
    """A non-blocking operation in flight: ``wait()`` blocks until done, ``test()`` drives
    MPI's progress and says whether it is done."""

    __slots__ = ("request", "done")

    def __init__(self, request) -> None:
        self.request = request
        self.done = False

    def test(self) -> bool:
        if not self.done:
            self.done = bool(self.request.Test())
        return self.done

    def wait(self) -> None:
        if not self.done:
            self.request.Wait()
            self.done = True


class Communicator:
    """The ranks of a data-parallel run: an mpi4py intracommunicator with the few collective
    operations training needs, on NumPy arrays and small Python objects.

    ``rank`` and ``size``; ``local_rank`` and ``local_size``: this rank among the ranks on the
    same machine (MPI's shared-memory split). Every collective method must be called by all
    ranks, in the same order. Sums over ranks give the same bits on every rank (MPI reduces
    each element once and distributes the result), which keeps the ranks' models identical.
    """

    def __init__(self, comm) -> None:
        MPI = _mpi()
        self._MPI = MPI
        self.comm = comm
        self.rank = int(comm.Get_rank())
        self.size = int(comm.Get_size())
        node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = int(node.Get_rank())
        self.local_size = int(node.Get_size())
        node.Free()

    def allreduce(self, array: np.ndarray) -> np.ndarray:
        """A new array: the elementwise sum of ``array`` over the ranks."""
        out = np.array(array, copy=True, order="C")
        self.comm.Allreduce(self._MPI.IN_PLACE, out, op=self._MPI.SUM)
        return out

    def start_allreduce(self, buffer: np.ndarray) -> _Pending:
        """Start summing the C-contiguous ``buffer`` over the ranks, in place; the sum is
        there once ``wait()`` of the returned object returns. ``buffer`` must not be touched
        until then."""
        return _Pending(self.comm.Iallreduce(self._MPI.IN_PLACE, buffer, op=self._MPI.SUM))

    def start_reduce_scatter(self, buffer: np.ndarray, counts: list[int]) -> _Pending:
        """Start summing the C-contiguous 1-d ``buffer`` over the ranks, in place, rank r
        receiving block r of the sum (``counts[r]`` elements; the blocks in rank order) in
        ``buffer[:counts[r]]`` once ``wait()`` of the returned object returns (the rest of
        ``buffer`` is left undefined). ``buffer`` must not be touched until then."""
        return _Pending(self.comm.Ireduce_scatter(self._MPI.IN_PLACE, buffer, list(counts),
                                                  op=self._MPI.SUM))

    def start_allgather_blocks(self, buffer: np.ndarray, counts: list[int]) -> _Pending:
        """Start gathering, in place: block r of the C-contiguous 1-d ``buffer``
        (``counts[r]`` elements, the blocks in rank order) becomes rank r's on every rank
        once ``wait()`` of the returned object returns. (MPICH's non-blocking allgatherv
        was measured 8x faster than its blocking one for large buffers here.)"""
        displs = [0]
        for c in counts[:-1]:
            displs.append(displs[-1] + int(c))
        return _Pending(self.comm.Iallgatherv(self._MPI.IN_PLACE,
                                              [buffer, (list(counts), displs)]))

    def broadcast(self, obj: Any, root: int = 0) -> Any:
        """``obj`` of rank ``root`` on every rank (pickled; for small objects and states)."""
        return self.comm.bcast(obj, root=root)

    def broadcast_array(self, array: np.ndarray, root: int = 0) -> None:
        """Overwrite the C-contiguous ``array`` with rank ``root``'s, in place."""
        self.comm.Bcast(array.reshape(-1), root=root)

    def allgather(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order (pickled)."""
        return self.comm.allgather(obj)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one."""
        return bool(self.comm.allreduce(bool(flag), op=self._MPI.LOR))

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (MPI_Abort)."""
        self.comm.Abort(code)

    def dup(self) -> "Communicator":
        """A communicator over the same ranks whose operations never mix with this one's."""
        return Communicator(self.comm.Dup())

    def free(self) -> None:
        """Release a communicator made by :meth:`dup`."""
        if self.comm != self._MPI.COMM_WORLD:
            self.comm.Free()

    def __repr__(self) -> str:
        return (f"Communicator(rank {self.rank} of {self.size}, {self.local_size} on this "
                f"machine)")


_WORLD: Communicator | None = None


def default_threads(local_size: int) -> int:
    """Kernel threads per rank with ``local_size`` ranks on this machine: the cores this rank
    may run on when the launcher bound it to some of them, else the machine's cores shared
    equally (at least 1), so the ranks never ask for more threads than there are cores."""
    total = os.cpu_count() or 1
    try:
        mine = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        mine = total
    if mine < total:
        return max(1, mine)
    return max(1, mine // max(1, local_size))


def world() -> Communicator:
    """All ranks of the job (``MPI_COMM_WORLD``), initialising MPI on the first call.

    The first call also sets the kernels' threads of this rank to :func:`default_threads`
    unless ``OMP_NUM_THREADS`` is set (``fastconv.set_num_threads`` afterwards overrides
    it). Started without a launcher, the job is this process alone (size 1).
    ImportError (one line, with how to install) without mpi4py.
    """
    global _WORLD
    if _WORLD is None:
        MPI = _mpi()
        if MPI.Query_thread() < MPI.THREAD_FUNNELED:
            print("fastconv.training.distributed: MPI was initialised with "
                  "MPI_THREAD_SINGLE; the kernels' threads make no MPI calls, but the MPI "
                  "library may assume a single-threaded process (initialise it with at least "
                  "MPI_THREAD_FUNNELED, mpi4py's default is MULTIPLE)", file=sys.stderr)
        _WORLD = Communicator(MPI.COMM_WORLD)
        if "OMP_NUM_THREADS" not in os.environ:
            import fastconv
            fastconv.set_num_threads(default_threads(_WORLD.local_size))
    return _WORLD


# --------------------------------------------------------------------------------------------
# Errors that end the job
# --------------------------------------------------------------------------------------------

def every_rank(exc: BaseException) -> BaseException:
    """Mark ``exc`` as raised by every rank at the same point (a refused set-up, a diverged
    loss computed from the ranks' sum): such an error ends each rank on its own, without
    MPI_Abort. Returns ``exc``."""
    exc._fastconv_every_rank = True  # type: ignore[attr-defined]
    return exc


def raised_on_every_rank(exc: BaseException) -> bool:
    """Whether ``exc`` was marked by :func:`every_rank`."""
    return bool(getattr(exc, "_fastconv_every_rank", False))


def abort_job(comm: Communicator, exc: BaseException, where: str) -> None:
    """Print ``exc`` (with its traceback) as this rank's failure and end every rank of the job
    with MPI_Abort; does nothing when ``exc`` was raised on every rank (:func:`every_rank`)
    or the job has one rank."""
    if comm.size == 1 or raised_on_every_rank(exc):
        return
    if isinstance(exc, KeyboardInterrupt):
        detail, code = "interrupted", 130
    else:
        detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        code = 1
    # (one write: the ranks share the launcher's stderr)
    sys.stderr.write(f"{where}: rank {comm.rank} of {comm.size} failed: {detail.rstrip()}\n"
                     f"{where}: rank {comm.rank} is ending all {comm.size} ranks (MPI_Abort): "
                     f"the others would wait for it forever\n")
    sys.stderr.flush()
    _wait_until_stderr_is_read()
    comm.abort(code)


def _wait_until_stderr_is_read(timeout: float = 2.0) -> None:
    """Wait (at most ``timeout`` seconds) until the launcher has read what this rank wrote to
    stderr, when stderr is a pipe (mpiexec's): MPI_Abort tears the job down at once, and
    output still in the pipe was seen lost (a job ending with no message at all)."""
    try:
        import fcntl
        import stat
        import struct
        import termios
        fd = sys.stderr.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            unread = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
            if unread <= 0:
                return
            time.sleep(0.005)
    except (OSError, ValueError, AttributeError, ImportError):
        pass  # (not a pipe, no fileno, or not Linux: nothing to wait for)


# --------------------------------------------------------------------------------------------
# Gradient buckets
# --------------------------------------------------------------------------------------------

class _Bucket:
    """Parameters whose gradients are summed by one collective of one flat buffer. A bucket
    of one parameter reduces that parameter's gradient array itself, with no buffer (and no
    copy); a bucket of several copies their gradients into its buffer, unless they already
    live there (the views its gradients become after each allreduce, into which the next
    backward may accumulate).

    With ``ranks`` (a sharded update), the bucket's elements are split into ``ranks``
    contiguous blocks (:attr:`counts`, cut on cache lines); an in-place reduce-scatter
    leaves the sum of block r at the start of rank r's reduced array (:attr:`sent`), from
    which rank r updates those elements of the parameters (:attr:`pieces`); the ranks then
    gather the updated weights (into the parameter itself for a bucket of one, through
    :attr:`weights` for one of several)."""

    __slots__ = ("params", "views", "buffer", "pending", "offsets", "counts", "sent",
                 "pieces", "weights", "weight_views")

    def __init__(self, params: list, dtype: np.dtype, ranks: int = 0, rank: int = 0) -> None:
        self.params = params
        self.pending: _Pending | None = None
        align = max(1, _BUCKET_ALIGN // dtype.itemsize)
        if len(params) == 1:
            self.buffer, self.views, self.offsets = None, [None], [0]
            n = params[0].data.size
        else:
            self.offsets, n = [], 0
            for p in params:
                self.offsets.append(n)
                n += -(-p.data.size // align) * align
            self.buffer = np.zeros(n, dtype)  # (padding stays 0: it is summed too)
            self.views = [self._view(self.buffer, o, p) for o, p in zip(self.offsets, params)]
        self.counts: list[int] = []
        # this rank's elements: (param, start, stop, offset in the bucket, in the block)
        self.pieces: list[tuple] = []
        self.sent: np.ndarray | None = None
        self.weights = None
        self.weight_views: list = []
        if ranks:
            # (cut up, so that no block is longer than the blocks before it: MPICH moves block
            # r to the front of the buffer with memcpy, which must not overlap)
            cuts = [0] + [min(n, -(-n * r // ranks // align) * align) for r in range(1, ranks)] + [n]
            self.counts = [cuts[r + 1] - cuts[r] for r in range(ranks)]
            lo, hi = cuts[rank], cuts[rank + 1]
            for o, p in zip(self.offsets, params):
                a, b = max(lo, o), min(hi, o + p.data.size)
                if a < b:
                    self.pieces.append((p, a - o, b - o, a, a - lo))
            if self.buffer is not None:
                self.weights = np.zeros(n, dtype)
                self.weight_views = [self._view(self.weights, o, p)
                                     for o, p in zip(self.offsets, params)]

    @staticmethod
    def _view(flat: np.ndarray, offset: int, p) -> np.ndarray:
        return flat[offset:offset + p.data.size].reshape(p.data.shape)

    @property
    def nbytes(self) -> int:
        return self.params[0].data.nbytes if self.buffer is None else self.buffer.nbytes

    def slices(self) -> list[tuple]:
        """This rank's pieces as :meth:`fastconv.optim.Optimizer.step_slices` takes them,
        their summed gradients read from the reduced array."""
        return [(p, start, stop, self.sent[k:k + stop - start])
                for p, start, stop, _, k in self.pieces]

    def start_gather(self, comm: "Communicator") -> _Pending:
        """After this rank updated its block: start gathering every rank's block of the
        weights (:meth:`end_gather` once it is done)."""
        if self.buffer is None:
            return comm.start_allgather_blocks(self.params[0].data.reshape(-1), self.counts)
        for p, start, stop, at, _ in self.pieces:
            self.weights[at:at + stop - start] = p.data.reshape(-1)[start:stop]
        return comm.start_allgather_blocks(self.weights, self.counts)

    def end_gather(self) -> None:
        if self.buffer is not None:
            for p, view in zip(self.params, self.weight_views):
                np.copyto(p.data, view)


def _clipped_step(optimizer, model: Module, max_norm: float | None) -> float | None:
    """``optimizer.step()`` on whole (reduced) gradients, clipped first to the total L2 norm
    ``max_norm`` when given; returns the norm before clipping, or None."""
    total = None if max_norm is None else float(clip_grad_norm_(model.parameters(), max_norm))
    optimizer.step()
    return total


def bucket_plan(nbytes: list[int], bucket_bytes: int,
                dtypes: list | None = None) -> list[list[int]]:
    """The gradient buckets of parameters of ``nbytes`` bytes (in ``parameters()`` order) as
    lists of indices, in the order they are reduced: parameters taken in reverse order
    (backward completes the last layers first), a bucket closed when the next parameter would
    take it past ``bucket_bytes`` or has another dtype (``dtypes``, when given); a parameter
    larger than ``bucket_bytes`` is a bucket of its own."""
    plan: list[list[int]] = []
    group: list[int] = []
    size = 0
    for i in reversed(range(len(nbytes))):
        if group and ((dtypes is not None and dtypes[i] != dtypes[group[0]])
                      or size + nbytes[i] > bucket_bytes):
            plan.append(group)
            group, size = [], 0
        group.append(i)
        size += nbytes[i]
    if group:
        plan.append(group)
    return plan


class _Reducer:
    """Sums the trainable parameters' gradients across ranks in buckets, each started as soon
    as backward has completed all its gradients (module hooks), in bucket order. (The
    gradients are already divided by the number of ranks: DistributedDataParallel scales the
    gradient backward starts from, so the sums are the means.) ``sharded``: each bucket is
    reduce-scattered instead of allreduced (see :class:`_Bucket`), for :meth:`update`."""

    def __init__(self, comm: Communicator, model: Module, bucket_bytes: int,
                 sharded: bool = False) -> None:
        self.comm = comm
        self.model = model
        self.sharded = sharded
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.signature = self._signature(model)
        self.buckets: list[_Bucket] = []
        self.bucket_of: list[int] = [0] * len(self.params)
        index = {id(p): i for i, p in enumerate(self.params)}
        for group in bucket_plan([p.data.nbytes for p in self.params], bucket_bytes,
                                 [p.data.dtype for p in self.params]):
            self._add_bucket(group)
        # which gradients each module's backward completes (a parameter shared by k modules
        # is complete once all k have run)
        self.own: dict[int, list[int]] = {}
        self.uses = [0] * len(self.params)
        for m in model.modules():
            own = [index[id(p)] for p in m._parameters.values()
                   if p is not None and id(p) in index]
            self.own[id(m)] = own
            for i in own:
                self.uses[i] += 1
        self.below: dict[int, list[Module]] = {}
        self.handles = []
        for m in model.modules():
            below = [u for u in m.modules() if self.own[id(u)]]
            if below:
                self.below[id(m)] = below
                self.handles.append(m.register_post_backward_hook(self._module_done))
        self.active = False

    @staticmethod
    def _signature(model: Module) -> tuple:
        return tuple((id(p), p.requires_grad) for p in model.parameters())

    def _add_bucket(self, indices: list[int]) -> None:
        k = len(self.buckets)
        for i in indices:
            self.bucket_of[i] = k
        ranks = self.comm.size if self.sharded else 0
        self.buckets.append(_Bucket([self.params[i] for i in indices],
                                    self.params[indices[0]].data.dtype, ranks, self.comm.rank))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    # -- one backward ------------------------------------------------------------------------
    def begin(self) -> None:
        self.remaining = list(self.uses)
        self.waiting = [len(b.params) for b in self.buckets]
        self.done: set[int] = set()
        self.next = 0
        self.inflight: list[_Pending] = []
        self.active = True

    def _module_done(self, module: Module) -> None:
        if not self.active:
            return
        for u in self.below[id(module)]:
            if id(u) in self.done:
                continue
            self.done.add(id(u))
            for i in self.own[id(u)]:
                self.remaining[i] -= 1
                if self.remaining[i] == 0:
                    self.waiting[self.bucket_of[i]] -= 1
        while self.next < len(self.buckets) and self.waiting[self.next] == 0:
            self._start(self.next)
        # MPI moves a non-blocking operation on only inside MPI calls: one per layer keeps the
        # buckets in flight moving while backward computes
        while self.inflight and self.inflight[0].test():
            self.inflight.pop(0)

    def _start(self, k: int) -> None:
        """Start bucket k's collective: of its parameter's gradient array itself, or of its
        buffer, into which the gradients not already there are copied."""
        b = self.buckets[k]
        if b.buffer is None:
            p = b.params[0]
            g = p.grad
            if not (g.flags.c_contiguous and g.flags.writeable):
                g = p.grad = np.ascontiguousarray(g)
            send = g.reshape(-1)
        else:
            for p, view in zip(b.params, b.views):
                g = p.grad
                if g is not view:
                    np.copyto(view, g)
            send = b.buffer
        if self.sharded:
            b.sent = send
            b.pending = self.comm.start_reduce_scatter(send, b.counts)
        else:
            b.pending = self.comm.start_allreduce(send)
        self.inflight.append(b.pending)
        self.next = k + 1

    def finish(self) -> None:
        """Start the buckets not started yet (gradients no container reported), wait for all,
        and (allreduce) make every gradient of a shared buffer the view of it that holds the
        sum."""
        while self.next < len(self.buckets):
            self._start(self.next)
        self.active = False
        for b in self.buckets:
            b.pending.wait()
            b.pending = None
            if b.buffer is None or self.sharded:
                continue
            for p, view in zip(b.params, b.views):
                if p.grad is not view:
                    p.grad = view  # (the next backward may accumulate right into it)
        self.inflight = []

    def abandon(self) -> None:
        """Backward raised: forget this step (its operations in flight are left to the job's
        end, which an error on one rank brings)."""
        self.active = False

    # -- the sharded update ------------------------------------------------------------------
    def update(self, optimizer, max_norm: float | None = None) -> float | None:
        """``optimizer``'s update of this rank's elements of every bucket (their summed
        gradients), then every rank's updated elements on every rank (collective). With
        ``max_norm``, the gradients are first clipped to that total L2 norm (the norm of
        every rank's elements together, summed over the ranks: collective), which is
        returned (else None)."""
        pieces = [piece for b in self.buckets for piece in b.slices()]
        total = None
        if max_norm is not None:
            grads = [g for _, _, _, g in pieces]
            # the squares of this rank's elements, summed in float64 over the ranks
            local = sum(float(np.dot(g64, g64)) for g64 in
                        (g.astype(np.float64, copy=False) for g in grads))
            dtype = np.result_type(*[p.data.dtype for p in self.params])
            norm = np.array(math.sqrt(float(self.comm.allreduce(np.array([local]))[0])), dtype)
            _scale_gradients(grads, max_norm, norm)
            total = float(norm)
        optimizer.step_slices(pieces)
        gathers = [b.start_gather(self.comm) for b in self.buckets]
        for b, pending in zip(self.buckets, gathers):
            pending.wait()
            b.end_gather()
            b.sent = None
        return total

    def gather_state(self, optimizer) -> None:
        """Make ``optimizer``'s state whole on every rank (collective): each rank's update
        keeps the state of its own elements only (the state arrays' other elements are
        stale), so each rank sends those elements (and the scalars of the parameters it
        updates, such as Adam's step count) to all."""
        index = {id(p): i for i, p in enumerate(self.params)}
        mine = []
        for b in self.buckets:
            for p, start, stop, _, _ in b.pieces:
                state = optimizer.state.get(p)
                if state:
                    mine.append((index[id(p)], start, stop, {
                        k: (v.reshape(-1)[start:stop].copy()
                            if isinstance(v, np.ndarray) and v.shape == p.data.shape else v)
                        for k, v in state.items()}))
        for parts in self.comm.allgather(mine):
            for i, start, stop, entries in parts:
                p = self.params[i]
                state = optimizer.state.setdefault(p, {})
                for k, v in entries.items():
                    if isinstance(v, np.ndarray) and v.ndim == 1 and v.size == stop - start:
                        whole = state.get(k)
                        if not (isinstance(whole, np.ndarray) and whole.shape == p.data.shape):
                            whole = state[k] = np.zeros_like(p.data)
                        whole.reshape(-1)[start:stop] = v
                    else:
                        state[k] = v


# --------------------------------------------------------------------------------------------
# Random generators of modules: each rank draws the whole batch's values
# --------------------------------------------------------------------------------------------

class _ShareGenerator(np.random.Generator):
    """A module's generator in a data-parallel run, on the module's own bit generator (its
    state is the module's, saved in checkpoints as before).

    During a training forward of :class:`DistributedDataParallel`, ``random(shape)`` with
    ``shape[0]`` this rank's rows of a batch (``rows = (start, total)``) draws the values of
    the whole batch, ``(total,) + shape[1:]``, and returns this rank's rows: dropout masks are
    those a single process draws for the whole batch, and every rank's generator stays in the
    same state. Any other draw is the plain generator's."""

    def __init__(self, bit_generator, ddp: "DistributedDataParallel") -> None:
        super().__init__(bit_generator)
        self._ddp = ddp

    def random(self, size=None, dtype=np.float64, out=None):
        rows = self._ddp._rows
        if rows is None or out is not None or size is None:
            return super().random(size, dtype, out)
        shape = (int(size),) if np.ndim(size) == 0 else tuple(int(s) for s in size)
        start, total = rows
        if not shape or start + shape[0] > total:
            return super().random(size, dtype)
        return super().random((total,) + shape[1:], dtype)[start:start + shape[0]]


# --------------------------------------------------------------------------------------------
# The model wrapper
# --------------------------------------------------------------------------------------------

def _check_bucket_mb(bucket_mb: Any, where: str) -> float:
    if isinstance(bucket_mb, bool) or not isinstance(bucket_mb, (int, float)) \
            or not math.isfinite(bucket_mb) or bucket_mb <= 0:
        raise ValueError(f"{where}: bucket_mb must be a number > 0, got {bucket_mb!r}")
    return float(bucket_mb)


def _structure(model: Module) -> list:
    """What must be equal on every rank: names, shapes, dtypes and trainability."""
    return ([(n, p.data.shape, str(p.data.dtype), p.requires_grad)
             for n, p in model.named_parameters()]
            + [(n, b.shape, str(b.dtype)) for n, b in model.named_buffers()])


class DistributedDataParallel(Module):
    """``module`` trained data-parallel: its gradients are averaged over the ranks of
    ``comm`` during ``backward`` (PyTorch's DistributedDataParallel).

    ::

        comm = distributed.world()
        model = distributed.DistributedDataParallel(models.vgg_small(seed=0), comm)
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        train = loader.shard(comm.rank, comm.size)       # this rank's rows of each batch
        for x, y in train:
            model.zero_grad()
            loss.forward(model(x), y)
            model.backward(loss.backward(), input_grad=False)   # gradients averaged here
            opt.step()                                     # the same step on every rank

    At construction (a collective: every rank constructs it), the ranks' models are checked
    to have the same parameters and buffers (ValueError on every rank otherwise), and rank
    0's values are copied to the others. ``backward`` sums each bucket of gradients
    (``bucket_mb`` MB, in reverse order of ``parameters()``) with a non-blocking allreduce as
    soon as backward has completed it, and returns when every gradient is the mean over the
    ranks. With a mean-reduced loss and equal shares this is the gradient of the whole
    batch; ``backward`` of a rank whose share is smaller should get its loss gradient scaled
    by ``N * share / batch`` (what :func:`fastconv.training.fit` does).

    ``sync_bn``: BatchNorm layers normalise with the statistics of the whole batch
    (:func:`fastconv.nn.convert_sync_batchnorm`, on a communicator of their own) instead of
    each rank's rows. The modules' random generators draw the whole batch's values in a
    training forward (see :meth:`forward`). :meth:`sync_buffers` copies rank 0's buffers
    (BatchNorm running statistics) to the other ranks. :meth:`close` undoes the wrapper's
    changes to ``module`` (hooks, generators, BatchNorm groups).

    ``optimizer``: the ranks share its update (a sharded update, as ZeRO's stages 1 and 2:
    gradients and optimiser step): ``backward`` reduce-scatters each bucket instead of
    allreducing it, so each rank receives the summed gradient of its 1/N of the bucket's
    elements only, and :meth:`step` (called instead of ``optimizer.step()``) updates those
    elements with the optimiser's rule (:meth:`fastconv.optim.Optimizer.step_slices`: the
    bits ``step`` gives them) and gathers every rank's updated elements on every rank. As
    many bytes cross between the ranks as with an allreduce; each rank does 1/N of the
    update. The optimiser's update must be elementwise (SGD, RMSprop, Adam, AdamW:
    ``elementwise``); the reduction works in place in the gradients, so ``Parameter.grad``
    holds no meaningful values after ``backward``, and the optimiser's state is whole only
    after :meth:`gather_optimizer_state` (collective: before reading or saving it).

    State-dict keys carry the prefix ``module.``, as PyTorch's; save ``ddp.module``'s to load
    it into an unwrapped model. ``comm_seconds`` adds up the time ``backward`` waited for the
    gradient reductions after the module's backward (communication not hidden behind
    computation).
    """

    def __init__(self, module: Module, comm: Communicator | None = None, *,
                 bucket_mb: float = DEFAULT_BUCKET_MB, sync_bn: bool = False,
                 optimizer=None) -> None:
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: module must be a fastconv.nn.Module, "
                            f"got {type(module).__name__}")
        bucket_mb = _check_bucket_mb(bucket_mb, "DistributedDataParallel")
        if optimizer is not None and not getattr(optimizer, "elementwise", False):
            raise TypeError(f"DistributedDataParallel: optimizer must be an optimiser whose "
                            f"update is elementwise (fastconv.optim SGD, RMSprop, Adam, AdamW), "
                            f"got {type(optimizer).__name__}")
        self.module = module
        comm = world() if comm is None else comm
        object.__setattr__(self, "comm", comm)
        self.bucket_mb = bucket_mb
        self.sync_bn = bool(sync_bn)
        self.comm_seconds = 0.0
        self.optimizer = optimizer
        self._rows: tuple[int, int] | None = None
        self._reducer: _Reducer | None = None
        self._bn_group: Communicator | None = None
        self._generators: list[tuple[Module, str, np.random.Generator]] = []
        if comm.size == 1:
            return
        structures = comm.allgather(_structure(module))
        for r, s in enumerate(structures):
            if s != structures[0]:
                first = next((a, b) for a, b in zip(structures[0] + [None], s + [None])
                             if a != b)
                raise every_rank(ValueError(
                    f"DistributedDataParallel: rank {r}'s model differs from rank 0's: "
                    f"{first[1]} on rank {r}, {first[0]} on rank 0 (build the same model on "
                    f"every rank)"))
        for p in module.parameters():
            comm.broadcast_array(p.data)
        self.sync_buffers()
        if self.sync_bn:
            self._bn_group = comm.dup()
            convert_sync_batchnorm(module, self._bn_group)
        self._reducer = self._new_reducer()
        self._sync_generators()
        shared: dict[int, _ShareGenerator] = {}
        for m in module.modules():
            for attr, value in list(vars(m).items()):
                if isinstance(value, np.random.Generator) and \
                        not isinstance(value, _ShareGenerator):
                    twin = shared.setdefault(id(value), _ShareGenerator(value.bit_generator,
                                                                        self))
                    self._generators.append((m, attr, value))
                    object.__setattr__(m, attr, twin)

    def _sync_generators(self) -> None:
        """Rank 0's states of the modules' random generators on every rank (collective), as
        its weights: generators seeded per rank (or from the OS) would draw other dropout
        masks on each rank. ValueError on every rank when the models hold different
        numbers of generators."""
        own: dict[int, np.random.Generator] = {}
        for m in self.module.modules():
            for value in vars(m).values():
                if isinstance(value, np.random.Generator):
                    own.setdefault(id(value), value)
        states = self.comm.broadcast([g.bit_generator.state for g in own.values()])
        if self.comm.any(len(states) != len(own)):
            raise every_rank(ValueError(
                "DistributedDataParallel: the ranks' models hold different numbers of random "
                "generators (build the same model on every rank)"))
        for g, state in zip(own.values(), states):
            g.bit_generator.state = state

    @property
    def buckets(self) -> list[tuple[int, int]]:
        """(parameters, bytes) of each gradient bucket, in the order they are reduced."""
        if self._reducer is None:
            return []
        return [(len(b.params), b.nbytes) for b in self._reducer.buckets]

    def forward(self, x: np.ndarray, rows: tuple[int, int] | None = None) -> np.ndarray:
        """The module's output for this rank's rows ``x`` of a batch. ``rows = (start,
        total)``: they are rows ``start ..`` of a batch of ``total`` (default: equal shares,
        ``(rank * len(x), size * len(x))``); in training, the modules' generators draw for
        the ``total`` rows and keep these."""
        if self._generators and self.training:
            n = len(x)
            self._rows = rows if rows is not None else (self.comm.rank * n, self.comm.size * n)
        try:
            return self.module.forward(x)
        finally:
            self._rows = None

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """The module's backward, with every parameter gradient averaged over the ranks when
        it returns (see the class docstring); the input gradient returned is that of this
        rank's loss divided by the number of ranks (the mean's)."""
        reducer = self._reducer
        if reducer is None:
            return self.module.backward(grad_y, input_grad=input_grad)
        if reducer.signature != _Reducer._signature(self.module):  # (un)frozen parameters
            if reducer.sharded:  # (the new buckets share the elements out differently)
                reducer.gather_state(self.optimizer)
            reducer.remove()
            reducer = self._reducer = self._new_reducer()
        # the mean over ranks is the sum of the ranks' gradients of loss / N: scaling the
        # gradient backward starts from (a few numbers per sample) spares a pass over the
        # parameters' gradients
        grad_y = np.multiply(grad_y, np.asarray(grad_y).dtype.type(1.0 / self.comm.size))
        reducer.begin()
        try:
            g = self.module.backward(grad_y, input_grad=input_grad)
        except BaseException:
            reducer.abandon()
            raise
        t = time.perf_counter()
        reducer.finish()
        self.comm_seconds += time.perf_counter() - t
        return g

    def _new_reducer(self) -> _Reducer:
        return _Reducer(self.comm, self.module, int(self.bucket_mb * (1 << 20)),
                        sharded=self.optimizer is not None)

    def step(self, max_norm: float | None = None) -> float | None:
        """The optimiser step after :meth:`backward`: with the ``optimizer`` of a sharded
        update, this rank's share of it and the gathering of the updated weights
        (collective); on one rank, ``optimizer.step()``. ``max_norm``: clip the gradients
        to this total L2 norm first (as :func:`fastconv.nn.utils.clip_grad_norm_` on the
        whole gradients; a sharded update sums the norm over the ranks) and return the
        norm before clipping (None without ``max_norm``)."""
        if self.optimizer is None:
            raise ValueError("DistributedDataParallel.step: no optimizer was given (call the "
                             "optimiser's own step())")
        if self._reducer is None:
            return _clipped_step(self.optimizer, self.module, max_norm)
        return self._reducer.update(self.optimizer, max_norm)

    def gather_optimizer_state(self) -> None:
        """Make the sharded update's optimiser state whole on every rank (collective; nothing
        to do without a sharded update)."""
        if self._reducer is not None and self._reducer.sharded:
            self._reducer.gather_state(self.optimizer)

    def sync_buffers(self) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank (collective)."""
        if self.comm.size == 1:
            return
        for _, b in self.module.named_buffers():
            self.comm.broadcast_array(b)

    def close(self) -> None:
        """Give ``module`` back as it was: no hooks, its own generators, local BatchNorm
        statistics. The wrapper reduces no more gradients afterwards."""
        if self._reducer is not None:
            self._reducer.remove()
            self._reducer = None
        for m, attr, gen in self._generators:
            object.__setattr__(m, attr, gen)
        self._generators = []
        if self._bn_group is not None:
            convert_sync_batchnorm(self.module, None)
            self._bn_group.free()
            self._bn_group = None

    def extra_repr(self) -> str:
        return (f"rank {self.comm.rank} of {self.comm.size}, bucket_mb={self.bucket_mb:g}, "
                f"sync_bn={self.sync_bn}, sharded_update={self.optimizer is not None}")


# --------------------------------------------------------------------------------------------
# fit(..., distributed=...)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Distributed:
    """How :func:`fastconv.training.fit` trains data-parallel (``distributed=True`` is
    ``Distributed()``): ``sync_bn`` (BatchNorm statistics of the whole batch), ``bucket_mb``
    (gradient bucket size), ``shard_update`` (the ranks share the optimiser's update, see
    :class:`DistributedDataParallel`'s ``optimizer``: the same weights, bit for bit, for
    1/N of the update's work, when the optimiser's update is elementwise and no callback
    overrides ``on_before_optimizer_step``, which is promised whole gradients; None: when
    every rank runs on one machine, where the reductions are copies made by the cores that
    also compute, so there is nothing to overlap them with and the update's work is what
    sharing saves; across machines the network's transfers hide behind backward, which the
    gathering of the weights after the update would not), ``comm`` (the ranks; None:
    :func:`world`)."""

    sync_bn: bool = False
    bucket_mb: float = DEFAULT_BUCKET_MB
    shard_update: bool | None = None
    comm: Communicator | None = None


def _crc(a: np.ndarray) -> int:
    """A checksum of every byte of ``a``, read in blocks of rows (every rank uses every row of
    the data: a sample of rows let ranks given different data train on)."""
    crc = 0
    if a.size == 0:
        return crc
    rows = max(1, (16 << 20) // max(1, a[0].nbytes if a.ndim > 1 else a.itemsize))
    for i in range(0, len(a), rows):
        crc = zlib.crc32(np.ascontiguousarray(a[i:i + rows]).view(np.uint8).reshape(-1), crc)
    return crc


def _loader_facts(loader) -> tuple | None:
    if loader is None:
        return None
    return (loader.num_samples, loader.batch_size, len(loader), loader.seed, loader.shuffle,
            loader.augment, loader.drop_last, str(loader.dtype), _crc(loader.labels),
            _crc(loader.images))


def _check_loss(loss, train) -> None:
    """A mean-reduced loss must divide by the rows of the batch for the ranks' shares to add
    up to the whole batch's gradient: a class-weighted or ignore_index cross-entropy divides
    each share by its own targets' weights (ValueError)."""
    if getattr(loss, "reduction", None) != "mean" or not hasattr(loss, "ignore_index"):
        return
    labels = np.asarray(train.labels)
    ignored = labels.dtype.kind in "iu" and bool(np.any(labels == loss.ignore_index))
    if getattr(loss, "weight", None) is not None or ignored:
        why = "class weights" if getattr(loss, "weight", None) is not None else \
            f"targets equal to ignore_index={loss.ignore_index}"
        raise ValueError(f"fit: distributed training needs a mean loss over the batch's rows; "
                         f"{type(loss).__name__} with {why} divides each rank's share by its "
                         f"own targets' weights, so the ranks would not take the whole "
                         f"batch's step: use reduction='sum' (and a learning rate divided by "
                         f"the batch size), or train in one process")


def _text(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class FitRun:
    """The data-parallel side of one :func:`fastconv.training.fit`: the communicator, the
    wrapped model, this rank's shares of the loaders, and the collective steps of the loop
    (fit makes it; callbacks see it as ``trainer.parallel``)."""

    def __init__(self, options: Distributed) -> None:
        if not isinstance(options, Distributed):
            raise TypeError(f"fit: distributed must be True, False or a "
                            f"fastconv.training.distributed.Distributed, got "
                            f"{type(options).__name__}")
        _check_bucket_mb(options.bucket_mb, "fit: distributed")
        self.options = options
        self.comm = options.comm if options.comm is not None else world()
        self.rank, self.size = self.comm.rank, self.comm.size
        self.net: DistributedDataParallel | None = None
        self.train = None
        self.val = None

    # -- set-up --------------------------------------------------------------------------------
    def agree(self, error: BaseException | None, facts: dict | None) -> None:
        """Collective: every rank's set-up error (or None) and set-up facts; raise the same
        one-line ValueError on every rank when a rank failed or the facts differ."""
        text = None if error is None else f"{type(error).__name__}: {error}"
        gathered = self.comm.allgather((text, facts))
        for r, (t, _) in enumerate(gathered):
            if t is not None:
                if error is not None:
                    raise every_rank(error)
                raise every_rank(ValueError(f"fit: rank {r} refused the set-up: {t}"))
        ref = gathered[0][1]
        for r, (_, f) in enumerate(gathered[1:], 1):
            for key in ref:
                if f.get(key) != ref[key]:
                    raise every_rank(ValueError(
                        f"fit: the ranks were started with different settings: {key} is "
                        f"{_text(f.get(key))} on rank {r} but {_text(ref[key])} on rank 0"))

    def facts(self, model, train, val, optimizer, scheduler, scheduler_interval, epochs, loss,
              callbacks, *, scheduler_monitor=None, clip_grad_norm=None) -> dict:
        """What must be equal on every rank for the ranks to train one model together."""
        _check_loss(loss, train)
        groups = [{k: v for k, v in g.items() if k != "params"} | {"params": len(g["params"])}
                  for g in optimizer.param_groups]
        return {
            "model": _structure(model),
            "train data": _loader_facts(train),
            "validation data": _loader_facts(val),
            "epochs": int(epochs),
            "loss": (type(loss).__name__, getattr(loss, "reduction", None)),
            "optimizer": (type(optimizer).__name__, groups),
            "scheduler": None if scheduler is None else (type(scheduler).__name__,
                                                         scheduler_interval, scheduler_monitor),
            "clip_grad_norm": clip_grad_norm,
            # (a progress bar may be shown on some ranks only: rank 0's terminal)
            "callbacks": [type(cb).__name__ for cb in callbacks
                          if type(cb).__name__ != "ProgressBar"],
            "sync_bn": bool(self.options.sync_bn),
            "bucket_mb": float(self.options.bucket_mb),
            "shard_update": self.options.shard_update,
        }

    def check_batches(self, train) -> None:
        """The global batch must split into equal shares, and every batch must give every
        rank at least one row (ValueError, on every rank alike)."""
        n = self.size
        if train.batch_size % n:
            raise ValueError(f"fit: the batch size {train.batch_size} (the global batch) is "
                             f"not divisible by the {n} ranks: each rank takes an equal "
                             f"share of every batch; choose a multiple of {n}")
        smallest = train.batch_length(len(train) - 1)
        if smallest < n:
            raise ValueError(f"fit: the last batch of an epoch holds {smallest} samples, "
                             f"fewer than the {n} ranks ({train.num_samples} samples in "
                             f"batches of {train.batch_size}): drop it (drop_last=True) or "
                             f"change the batch size")

    def attach(self, model, train, val, optimizer=None, callbacks=()) -> None:
        """Wrap the model (collective) and take this rank's shares of the loaders; the ranks
        share ``optimizer``'s update when the options allow it (see :class:`Distributed`)."""
        from .callbacks import Callback
        shared = self.options.shard_update
        if shared is None:
            shared = self.comm.local_size == self.comm.size
        shared = shared and getattr(optimizer, "elementwise", False) and \
            not any(type(cb).on_before_optimizer_step is not Callback.on_before_optimizer_step
                    for cb in callbacks)
        self.net = DistributedDataParallel(model, self.comm, bucket_mb=self.options.bucket_mb,
                                           sync_bn=self.options.sync_bn,
                                           optimizer=optimizer if shared else None)
        self.train = train.shard(self.rank, self.size)
        self.val = None if val is None else val.shard(self.rank, self.size)

    def load_state(self, resume):
        """The resume state on every rank: a path is read by rank 0 and sent to the others
        (the ranks need no shared file system); an error reading it is raised on every
        rank."""
        if not isinstance(resume, (str, os.PathLike)):
            return resume
        outcome: Any = None
        if self.rank == 0:
            from .loop import _load_resume
            try:
                outcome = ("ok", _load_resume(resume))
            except Exception as e:  # noqa: BLE001 - sent to every rank, raised there
                outcome = ("error", e)
        kind, value = self.comm.broadcast(outcome)
        if kind == "error":
            raise every_rank(value)
        return value

    def close(self) -> None:
        if self.net is not None:
            self.net.close()

    # -- the loop's collective steps -----------------------------------------------------------
    def forward(self, x: np.ndarray, index: int) -> np.ndarray:
        start, _ = self.train.shard_rows(index)
        return self.net.forward(x, rows=(start, self.train.batch_length(index)))

    def scale_loss_grad(self, grad: np.ndarray, loss, share: int, total: int) -> np.ndarray:
        """The loss gradient of this rank's share, scaled so that the ranks' mean is the
        gradient of the loss over the whole batch: N * share / total for a mean-reduced
        loss (1 for equal shares), N for a summed one."""
        n = self.size
        factor = n if getattr(loss, "reduction", "mean") == "sum" else n * share / total
        if factor == 1.0:
            return grad
        return grad * grad.dtype.type(factor)

    def start_sums(self, values: list[float]) -> tuple[np.ndarray, _Pending]:
        """Start summing ``values`` over the ranks (the step's loss and correct count, during
        its backward); the sums are in the returned array once the pending op is waited."""
        buf = np.array(values, np.float64)
        return buf, self.comm.start_allreduce(buf)

    def any(self, flag: bool) -> bool:
        return self.comm.any(flag)

    def step(self, optimizer, max_norm: float | None = None) -> float | None:
        """The optimiser step: shared between the ranks, or ``optimizer.step()``; with
        ``max_norm``, after clipping the gradients to that total L2 norm, which is returned
        (the norm before clipping; None without ``max_norm``)."""
        if self.net.optimizer is not None:
            return self.net.step(max_norm)
        return _clipped_step(optimizer, self.net.module, max_norm)

    def sync_buffers(self) -> None:
        """Make what a checkpoint or an evaluation reads equal and whole on every rank
        (collective): rank 0's BatchNorm running statistics, the optimiser state of a
        shared update."""
        self.net.sync_buffers()
        self.net.gather_optimizer_state()

    def gather_evaluation(self, total: float, correct: int, seen: int, classification: bool,
                          preds: list[np.ndarray]) -> tuple[float, int, int, bool, list]:
        """Sums of an evaluation over the ranks, and the predictions of every batch in the
        loader's order (each batch's shares in rank order)."""
        sums = self.comm.allreduce(np.array([total, correct, seen, 0 if classification else 1],
                                            np.float64))
        classification = sums[3] == 0
        gathered = self.comm.allgather(preds if classification else None)
        whole = [gathered[r][i] for i in range(len(preds)) for r in range(self.size)] \
            if classification else []
        return float(sums[0]), int(round(sums[1])), int(round(sums[2])), bool(classification), \
            whole

    def fail(self, exc: BaseException) -> None:
        """``exc`` is leaving fit on this rank: end the job unless every rank raised it."""
        abort_job(self.comm, exc, "fastconv.training.fit")


def start_fit(distributed: Any) -> FitRun:
    """The :class:`FitRun` of ``fit(..., distributed=...)`` (True or a :class:`Distributed`)."""
    return FitRun(Distributed() if distributed is True else distributed)
