"""fastconv: fast convolutional networks on a plain CPU, from Python.

C++/OpenMP kernels (conv2d forward/backward, max/avg pooling, im2col/col2im, a packed GEMM with
AVX-512/AVX2 micro-kernels chosen at run time) behind a NumPy API that mirrors
torch.nn.functional, plus a pure-NumPy reference with the same signatures.

    >>> import numpy as np, fastconv
    >>> fastconv.F.conv2d(np.ones((1, 3, 8, 8), "f4"), np.ones((4, 3, 3, 3), "f4")).shape
    (1, 4, 6, 6)
"""

from __future__ import annotations

__version__ = "0.1.0"


def _load_core():
    """Import the compiled kernels.

    In a source checkout (e.g. `python -c "import fastconv"` run in the clone after
    `pip install .`), the package found first is the source folder, which has no compiled
    module: use the one `pip install .` put in site-packages, if it is the same version.
    """
    try:
        from . import _core

        return _core
    except ImportError as exc:
        error = exc
    import importlib.machinery
    import importlib.metadata
    import importlib.util
    import sys

    try:
        dist = importlib.metadata.distribution("fastconv")
        files = [f for f in dist.files or () if f.parts[:1] == ("fastconv",)
                 and f.name.startswith("_core.") and
                 f.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))]
        if dist.version == __version__ and files:
            path = str(dist.locate_file(files[0]))
            spec = importlib.util.spec_from_file_location(f"{__name__}._core", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[spec.name] = module
            return module
    except importlib.metadata.PackageNotFoundError:
        pass
    raise ImportError(
        "fastconv's compiled extension (fastconv._core) is not built or not installed. "
        "Run `pip install .` in the fastconv checkout (or `pip install -e .` to develop). "
        f"Original error: {error}") from error


_core = _load_core()

from . import functional  # noqa: E402  (needs _core)
from .backend import current_backend, get_backend, use_backend  # noqa: E402
from .precision import autocast  # noqa: E402

F = functional


def get_num_threads() -> int:
    """Number of OpenMP threads the kernels use: the last set_num_threads, else
    OMP_NUM_THREADS at start-up, else all cores."""
    return _core.get_num_threads()


def set_num_threads(n: int) -> None:
    """Set the number of OpenMP threads the kernels use (n >= 1), for every kernel call from
    then on, from any Python thread (as torch.set_num_threads). Results do not depend on it.
    A build without OpenMP runs on one thread whatever n is (get_num_threads() then says 1;
    fastconv.build_info() shows whether OpenMP is in). So does a process forked after its
    parent ran kernels (multiprocessing's "fork" start method): the parent's OpenMP threads
    are not in the child, which would wait for them forever; a RuntimeWarning says so when
    more threads are asked for there (use the "spawn" or "forkserver" start method)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be an int, got {n!r}")
    if n > 1 and _core.forked_after_kernels():
        import warnings

        warnings.warn(f"set_num_threads({n}): this process was forked after fastconv's kernels "
                      f"ran in its parent, so its kernels run on one thread (OpenMP's threads "
                      f"are not forked); start it with multiprocessing's 'spawn' or "
                      f"'forkserver' method for more", RuntimeWarning, stacklevel=2)
    _core.set_num_threads(n)


def simd_level(precision: str = "f32") -> str:
    """Instruction set of the GEMM micro-kernels in use: 'avx512', 'avx2' or 'generic'.
    precision="bf16": the kernels bf16 mode runs on (fastconv.precision.bf16_path()): 'amx',
    'avx512_bf16' or 'emulated' (the float32 kernels of simd_level() on rounded operands)."""
    from .precision import _normalize, bf16_path

    if _normalize(precision, "simd_level") == "bf16":
        return bf16_path()
    return _core.simd_level()


def build_info() -> dict:
    """What this build and machine offer: OpenMP, threads, SIMD levels, and the CPU as the
    kernels read it once at start-up (`cpu`: vendor, model_name, family, model, the
    `features` present and enabled by the OS, and `caches`: l1d, l2, l3 as bytes, ways, line
    size and how many logical CPUs share each, plus the `source` of the sizes: "cpuid",
    "sysfs" or "defaults"), and the packed GEMM's register tile and cache blocks derived from
    them, per dtype, at the selected SIMD level (`gemm`); `bf16`: the bf16 path in use
    (`path`: "amx", "avx512_bf16" or "emulated"), the best this CPU has (`best`), why each path
    does or does not run here (`paths`: None where it runs, else the reason, e.g. "CPU lacks
    avx512_bf16") and its GEMM's tile and blocks (`gemm`)."""
    return {
        "version": __version__,
        "openmp": _core.openmp_enabled(),
        "num_threads": _core.get_num_threads(),
        "simd_level": _core.simd_level(),
        "best_simd_level": _core.best_simd_level(),
        "cpu": _core.cpu_info(),
        "gemm": {dtype: _core.gemm_blocks(dtype) for dtype in ("float32", "float64")},
        "bf16": {
            "path": _core.bf16_path(),
            "best": _core.best_bf16_path(),
            "paths": _core.bf16_paths(),
            "gemm": _core.bf16_gemm_blocks(),
        },
    }




def __getattr__(name: str):
    # Submodules that pull in more than the kernels are imported on first use.
    import importlib

    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fastconv' has no attribute {name!r}")


_LAZY_SUBMODULES = ("reference", "nn", "losses", "init", "optim", "models",
                    "gradcheck", "data", "checkpoint", "plotting", "training", "cli", "export",
                    "memory")

__all__ = [
    "F",
    "use_backend",
    "current_backend",
    "autocast",
    "get_backend",
    "functional",
    "reference",
    "get_num_threads",
    "set_num_threads",
    "simd_level",
    "build_info",
    "__version__",
]
