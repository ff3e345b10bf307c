"""Ranks as threads of one process: a stand-in for :class:`fastconv.training.distributed.
Communicator` (the same methods) for in-process tests of data-parallel code without MPI.

``run_ranks(n, fn)`` runs ``fn(comm)`` on n threads, each with its rank's ThreadComm, and
returns their results in rank order (the first exception raised on any rank is re-raised;
the other ranks are released from their waits). Sums add the ranks' values in rank order,
so every rank gets the same bits, as from MPI. A started allreduce completes at its
``wait()`` (every rank waits for its operations in the order it started them, as the code
under test does), so ``test()`` is False until then.
"""

from __future__ import annotations

import copy
import threading
from typing import Any, Callable

import numpy as np


class RankFailed(Exception):
    """Raised in the other ranks' waits when one rank failed (or aborted)."""


class _Group:
    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size)
        self.slots: list[Any] = [None] * size
        self.lock = threading.Lock()
        self.dups: list[_Group] = []

    def exchange(self, rank: int, value: Any) -> list:
        """Every rank's value, in rank order (a collective)."""
        try:
            self.slots[rank] = value
            self.barrier.wait()
            values = list(self.slots)
            self.barrier.wait()
        except threading.BrokenBarrierError:
            raise RankFailed("another rank failed") from None
        return values

    def abort(self) -> None:
        self.barrier.abort()
        for g in self.dups:
            g.abort()


class _Pending:
    def __init__(self, comm: "ThreadComm", buffer: np.ndarray) -> None:
        self.comm, self.buffer, self.done = comm, buffer, False
        comm.started += 1

    def test(self) -> bool:
        return self.done

    def wait(self) -> None:
        if not self.done:
            self.buffer[...] = self.comm.allreduce(self.buffer)
            self.done = True


class _PendingScatter(_Pending):
    """A reduce-scatter in place: at ``wait()``, this rank's block of the sum goes to the
    start of the buffer, and the rest of it is spoilt (MPI leaves it undefined)."""

    def __init__(self, comm: "ThreadComm", buffer: np.ndarray, counts: list) -> None:
        super().__init__(comm, buffer)
        self.start, self.count = int(sum(counts[:comm.rank])), int(counts[comm.rank])

    def wait(self) -> None:
        if not self.done:
            total = self.comm.allreduce(self.buffer)
            self.buffer[...] = np.nan
            self.buffer[:self.count] = total[self.start:self.start + self.count]
            self.done = True


class _PendingGather:
    def __init__(self, comm: "ThreadComm", buffer: np.ndarray, counts: list) -> None:
        self.comm, self.buffer, self.counts, self.done = comm, buffer, counts, False

    def test(self) -> bool:
        return self.done

    def wait(self) -> None:
        if not self.done:
            ends = np.cumsum(self.counts)
            values = self.comm.group.exchange(self.comm.rank, self.buffer.copy())
            for r, v in enumerate(values):
                self.buffer[ends[r] - self.counts[r]:ends[r]] = v[ends[r] - self.counts[r]:ends[r]]
            self.done = True


class ThreadComm:
    """One rank's view of a group of thread ranks (see the module docstring)."""

    def __init__(self, group: _Group, rank: int, dup_count: list | None = None) -> None:
        self.group = group
        self.rank = rank
        self.size = group.size
        self.local_rank, self.local_size = rank, group.size
        self.aborted: int | None = None
        self.started = 0          # reductions started (start_allreduce, start_reduce_scatter)
        self.reductions = 0       # allreduces completed (blocking or waited)
        self._dups = 0

    def allreduce(self, array: np.ndarray) -> np.ndarray:
        values = self.group.exchange(self.rank, np.array(array, copy=True))
        out = values[0].copy()
        for v in values[1:]:
            out += v
        self.reductions += 1
        return out

    def start_allreduce(self, buffer: np.ndarray) -> _Pending:
        return _Pending(self, buffer)

    def start_reduce_scatter(self, buffer: np.ndarray, counts: list) -> _Pending:
        return _PendingScatter(self, buffer, counts)

    def start_allgather_blocks(self, buffer: np.ndarray, counts: list) -> _PendingGather:
        return _PendingGather(self, buffer, counts)

    def broadcast(self, obj: Any, root: int = 0) -> Any:
        return copy.deepcopy(self.group.exchange(self.rank, obj)[root])

    def broadcast_array(self, array: np.ndarray, root: int = 0) -> None:
        array[...] = self.group.exchange(self.rank, array.copy())[root]

    def allgather(self, obj: Any) -> list:
        return copy.deepcopy(self.group.exchange(self.rank, obj))

    def any(self, flag: bool) -> bool:
        return any(self.group.exchange(self.rank, bool(flag)))

    def barrier(self) -> None:
        self.group.exchange(self.rank, None)

    def abort(self, code: int = 1) -> None:
        self.aborted = code
        self.group.abort()
        raise RankFailed(f"rank {self.rank} aborted with code {code}")

    def dup(self) -> "ThreadComm":
        k = self._dups
        self._dups += 1
        with self.group.lock:
            while len(self.group.dups) <= k:
                self.group.dups.append(_Group(self.size))
        return ThreadComm(self.group.dups[k], self.rank)

    def free(self) -> None:
        pass


def run_ranks(n: int, fn: Callable[[ThreadComm], Any]) -> list:
    """``fn(comm)`` on n thread ranks; their results in rank order (see module docstring)."""
    group = _Group(n)
    results: list[Any] = [None] * n
    errors: list[tuple[int, BaseException]] = []

    def work(rank: int) -> None:
        try:
            results[rank] = fn(ThreadComm(group, rank))
        except BaseException as e:  # noqa: BLE001 - re-raised by run_ranks
            errors.append((rank, e))
            group.abort()

    threads = [threading.Thread(target=work, args=(r,), name=f"rank-{r}") for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        if t.is_alive():
            group.abort()
            raise RuntimeError(f"{t.name} still running after 120 s")
    if errors:
        # the first failure, not the other ranks' RankFailed that it caused
        errors.sort(key=lambda e: isinstance(e[1], RankFailed))
        raise errors[0][1]
    return results
