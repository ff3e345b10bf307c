"""The programs test_bench_distributed.py times, in their own processes (one process, or the
ranks of ``mpiexec -n N``); rank 0 prints one JSON line with the results.

    python distributed_runs.py steps BATCH WARMUP STEPS MODEL... [--distributed]
        For each model (fastconv.models.get_model names): WARMUP then STEPS training steps
        (forward, cross-entropy, backward, SGD with Nesterov momentum and weight decay) on a
        fixed random global batch of BATCH 32x32 images, each rank on its share (gradients
        averaged by DistributedDataParallel, default buckets). Prints
        {model: {"images_per_s", "seconds", "steps", "comm_share", "parameters", "ranks",
        "threads"}}; comm_share is the share of the time backward waited for allreduces
        after the model's own backward (communication not hidden by computation).
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
        net = DistributedDataParallel(model, comm) if comm else model
        opt = SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        loss = CrossEntropyLoss()

        def step() -> None:
            net.zero_grad()
            loss.forward(net.forward(xs), ys)
            net.backward(loss.backward(), input_grad=False)
            opt.step()

        for _ in range(warmup):
            step()
        if comm:
            comm.barrier()
            net.comm_seconds = 0.0
        t = time.perf_counter()
        for _ in range(steps):
            step()
        if comm:
            comm.barrier()
        seconds = time.perf_counter() - t
        results[name] = {"images_per_s": batch * steps / seconds, "seconds": seconds,
                         "steps": steps, "parameters": model.num_parameters(),
                         "comm_share": (net.comm_seconds / seconds) if comm else 0.0,
                         "ranks": ranks, "threads": fastconv.get_num_threads()}
        if comm:
            net.close()
    return results


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
