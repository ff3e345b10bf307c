"""The programs test_bench_distributed.py times, in their own processes (one process, or the
ranks of ``mpiexec -n N``); rank 0 prints one JSON line with the results.

    python distributed_runs.py steps BATCH WARMUP STEPS MODEL... [--distributed]
        For each model (fastconv.models.get_model names): WARMUP then STEPS training steps
        (forward, cross-entropy, backward, SGD with Nesterov momentum and weight decay) on a
        fixed random global batch of BATCH 32x32 images, each rank on its share (gradients
        reduced by DistributedDataParallel, default buckets, the update shared between the
        ranks as fit does). Prints {model: {"images_per_s", "images_per_cpu_s", "seconds",
        "steps", "comm_share", "phases_ms", "parameters", "ranks", "threads"}};
        images_per_cpu_s counts the CPU time of every thread of every rank (what the work
        costs, whatever else the machine runs); comm_share is the share of the time
        backward waited for the gradient reductions after the model's own backward
        (communication not hidden by computation); phases_ms, the median milliseconds of a
        step's phases on rank 0: "forward" (with the loss), "backward" (the model's, with
        the reductions started and driven during it), "wait" (for the reductions after it),
        "optimizer" (the update, with the gathering of the shared update's weights). One
        process (not --distributed) also records, for the scaling model, "backward_share"
        (backward's share of a step) and "ready" (for each trainable parameter, in
        parameters() order, the share of backward elapsed when its gradient was complete:
        its module's post-backward hook; 1 when no container reports it), and
        "param_bytes"; medians over the timed steps.
    python distributed_runs.py allreduce REPEATS BYTES...
        MPI_Allreduce (sum, in place) of float32 buffers of each size: the median seconds per
        call over REPEATS calls (after one warm-up call). Prints {bytes: seconds}.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def steps_program(batch: int, warmup: int, steps: int, names: list[str],
                  distributed: bool) -> dict:
    import fastconv
    from fastconv.losses import CrossEntropyLoss
    from fastconv.models import get_model
    from fastconv.optim import SGD
    from fastconv.training.distributed import DistributedDataParallel, world

    comm = world() if distributed else None
    ranks = comm.size if comm else 1
    share = batch // ranks
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    rank = comm.rank if comm else 0
    xs, ys = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
    results = {}
    for name in names:
        model = get_model(name, seed=0)
        opt = SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        net = DistributedDataParallel(model, comm, optimizer=opt) if comm else model
        update = net.step if comm else opt.step
        loss = CrossEntropyLoss()
        # (one process: when each gradient is complete within backward; the recorder's hooks
        # cost one clock read per layer)
        ready = None if comm else _ReadyRecorder(model)
        shares: list[float] = []
        phases: list[tuple[float, float, float, float]] = []

        def step() -> None:
            net.zero_grad()
            waited = net.comm_seconds if comm else 0.0
            t0 = time.perf_counter()
            loss.forward(net.forward(xs), ys)
            g = loss.backward()
            if ready:
                ready.begin()
            t1 = time.perf_counter()
            net.backward(g, input_grad=False)
            t2 = time.perf_counter()
            if ready:
                ready.end(t1, t2)
            update()
            t3 = time.perf_counter()
            shares.append((t2 - t1) / (t3 - t0))
            wait = (net.comm_seconds - waited) if comm else 0.0
            phases.append((t1 - t0, t2 - t1 - wait, wait, t3 - t2))

        for _ in range(warmup):
            step()
        if comm:
            comm.barrier()
            net.comm_seconds = 0.0
        elif ready:
            ready.fractions.clear()
        shares.clear()
        phases.clear()
        t, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        cpu = time.process_time() - cpu  # (this process's threads)
        if comm:
            comm.barrier()
            cpu = float(comm.allreduce(np.array([cpu]))[0])  # (every rank's)
        seconds = time.perf_counter() - t
        results[name] = {"images_per_s": batch * steps / seconds, "seconds": seconds,
                         "images_per_cpu_s": batch * steps / cpu,
                         "steps": steps, "parameters": model.num_parameters(),
                         "comm_share": (net.comm_seconds / seconds) if comm else 0.0,
                         "phases_ms": dict(zip(("forward", "backward", "wait", "optimizer"),
                                               (1e3 * float(v) for v in
                                                np.median(np.array(phases), axis=0)))),
                         "ranks": ranks, "threads": fastconv.get_num_threads()}
        if ready:
            results[name].update(backward_share=float(np.median(shares)),
                                 ready=ready.medians(), param_bytes=ready.param_bytes)
            ready.remove()
        if comm:
            net.close()
    return results


class _ReadyRecorder:
    """When, within a backward, each trainable parameter's gradient is complete: the time its
    module's post-backward hook fired, as a share of that backward's duration."""

    def __init__(self, model) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        self.param_bytes = [p.data.nbytes for p in params]
        index = {id(p): i for i, p in enumerate(params)}
        self.times = [0.0] * len(params)
        self.fractions: list[list[float]] = []
        self.handles = []
        for m in model.modules():
            own = [index[id(p)] for p in m._parameters.values() if p is not None
                   and id(p) in index]
            if own:
                self.handles.append(m.register_post_backward_hook(
                    lambda module, own=own: self._done(own)))

    def _done(self, own: list[int]) -> None:
        now = time.perf_counter()
        for i in own:
            self.times[i] = now

    def begin(self) -> None:
        self.times = [float("inf")] * len(self.times)  # (unreported: complete at the end)

    def end(self, start: float, stop: float) -> None:
        span = stop - start
        self.fractions.append([min(1.0, (t - start) / span) for t in self.times])

    def medians(self) -> list[float]:
        return [float(v) for v in np.median(np.array(self.fractions), axis=0)]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def allreduce_program(repeats: int, sizes: list[int]) -> dict:
    from fastconv.training.distributed import world
    comm = world()
    out = {}
    for nbytes in sizes:
        buf = np.ones(max(1, nbytes // 4), np.float32)
        comm.allreduce(buf)
        times = []
        for _ in range(repeats):
            comm.barrier()
            t = time.perf_counter()
            comm.comm.Allreduce(comm._MPI.IN_PLACE, buf, op=comm._MPI.SUM)
            times.append(time.perf_counter() - t)
        # the slowest rank's time is the call's time
        out[str(buf.nbytes)] = float(np.median(np.max(comm.allgather(times), axis=0)))
    return out


def main(argv: list[str]) -> None:
    if argv[0] == "steps":
        names = [a for a in argv[4:] if not a.startswith("--")]
        result = steps_program(int(argv[1]), int(argv[2]), int(argv[3]), names,
                               "--distributed" in argv)
        distributed = "--distributed" in argv
    elif argv[0] == "allreduce":
        result = allreduce_program(int(argv[1]), [int(a) for a in argv[2:]])
        distributed = True
    else:
        raise SystemExit(f"unknown program {argv[0]!r}")
    rank = 0
    if distributed:
        from fastconv.training.distributed import world
        rank = world().rank
    if rank == 0:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
