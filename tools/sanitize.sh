#!/usr/bin/env bash
# Runs tests on a build of the kernels with AddressSanitizer + UndefinedBehaviorSanitizer
# (CMake option FASTCONV_SANITIZE=ON: every report aborts the process, so no test passes over
# one).
#
#   tools/sanitize.sh                 # the kernel tests (tests/ops, the conv, pooling, GEMM
#                                     # and dispatch tests, the fuzzers), all paths
#   tools/sanitize.sh tests/test_x.py -k name    # any pytest arguments instead
#   tools/sanitize.sh --fuzz --scale 2           # tools/fuzz.py (its arguments) instead
#
# The build goes to a venv of its own, build/sanitize/venv (the normal install is left
# alone), which sees the packages of the Python running this script (numpy, pytest, torch)
# through a path file. Python itself is not instrumented, so the ASan runtime is preloaded
# into it; leaks are not checked (the interpreter keeps its objects at exit).
# Env: PYTHON (default python3), FASTCONV_SANITIZE_REBUILD=0 to reuse an existing build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
dir=build/sanitize
venv=$dir/venv
if [[ ! -x $venv/bin/python || ${FASTCONV_SANITIZE_REBUILD:-1} != 0 ]]; then
  "$PYTHON" -m venv --clear "$venv"
  # fastconv first, into the new venv alone (its build isolated), then the outer packages.
  "$venv/bin/python" -m pip install --quiet --no-deps . \
    -C cmake.define.FASTCONV_SANITIZE=ON -C build-dir="$dir/cmake"
  outer=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  inner=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$outer" > "$inner/fastconv_outer_packages.pth"
fi


# The ASan runtime, and libstdc++ with it: ASan looks up the real __cxa_throw when it starts,
# and Python itself links no libstdc++ (without it the first C++ exception aborts in ASan's
# interceptor).
asan="$(${CXX:-g++} -print-file-name=libasan.so) $(${CXX:-g++} -print-file-name=libstdc++.so.6)"
# The import check of the sanitized module first: a build that was not instrumented (or an
# outer fastconv picked up instead) would make the whole run meaningless.
LD_PRELOAD="$asan" ASAN_OPTIONS=detect_leaks=0 "$venv/bin/python" - <<'EOF'
import fastconv, sys
path = fastconv._core.__file__
if "build/sanitize/venv" not in path:
    sys.exit(f"tools/sanitize.sh: imported fastconv._core from {path}, not the sanitizer build")
print("sanitized fastconv._core:", path)
EOF
export LD_PRELOAD="$asan"
# detect_leaks=0: CPython keeps objects alive at exit. abort_on_error: a report kills the
# test run (a subprocess of a test fails that test). The sanitizers' reports go to stderr.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
if [[ ${1:-} == --fuzz ]]; then
  shift
  exec "$venv/bin/python" tools/fuzz.py "$@"
fi
if [[ $# -gt 0 ]]; then
  exec "$venv/bin/python" -m pytest -q "$@"
fi
# Every kernel path: the fuzzers (conv2d on every algorithm x SIMD level, pooling, the fused
# conv + pooling, GELU/SiLU, adaptive pooling, upsampling, conv_transpose2d, conv2d in bf16 on
# every bf16 path, extreme geometries) at a quarter of the suite's cases; valid_taps' own tests
# (its bf16 tap-reduce tile at both heights, wide channel blocks and strided input gradients,
# which the fuzzers' small geometries reach only in part); the bindings' argument
# checks; the dispatch; GEMM blocking; the newer ops' tests; the bf16 GEMM kernels (their
# portable twins here, the hardware ones where the CPU has them) and rounding; then from
# test_functional.py the kernels the fuzzers do not call (GEMM, Linear, batch norm, ReLU,
# im2col and its batches of images, the register tiles' edges, thread counts) and the fused
# optimiser updates (test_functional.py whole: several times longer).
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/kernels/test_fuzz.py --fuzz-scale 0.25 \
  tests/kernels/test_conv_valid_taps.py \
  tests/kernels/test_core_bindings.py tests/kernels/test_conv_dispatch.py \
  tests/kernels/test_gemm_blocks.py tests/ops \
  --ignore=tests/ops/test_functional.py --ignore=tests/ops/test_reference.py \
  --ignore=tests/ops/test_input_checks.py --ignore=tests/ops/test_backend.py \
  tests/precision/test_bf16_gemm.py tests/precision/test_bf16_rounding.py
# The block cache behind every kernel's scratch and fastconv.memory.recycling (not its
# airbench94 steps: minutes under the sanitizers; the kernels above already ran on the cache).
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/kernels/test_memory.py -k "not airbench94"
kernels="gemm or linear_matches_reference or batch_norm_train_matches"
kernels+=" or batch_norm_train_fused_relu_is or relu_matches or im2col_col2im_match_reference"
kernels+=" or tile_edge or does_not_depend_on_thread or fused_update_matches or bits_of_each_alone"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/ops/test_functional.py \
  tests/training/test_optim.py::test_fused_update_matches_numpy_update -k "$kernels"
