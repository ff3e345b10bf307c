"""Type stub of the compiled kernels (internal: use fastconv.functional).

Every array argument must be a C-contiguous float32 or float64 array (indices: int64) of the
exact size the shapes imply; outputs are written in place. The GIL is released inside.
"""

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.floating]

def conv2d_forward(x: Array, weight: Array, bias: Array | None, y: Array, stride_h: int,
                   stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
                   groups: int) -> None: ...
def conv2d_backward_input(grad_y: Array, weight: Array, grad_x: Array, stride_h: int,
                          stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
                          dilation_w: int, groups: int) -> None: ...
def conv2d_backward_weight(grad_y: Array, x: Array, grad_weight: Array, stride_h: int,
                           stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
                           dilation_w: int, groups: int) -> None: ...
def conv2d_backward_bias(grad_y: Array, grad_bias: Array) -> None: ...
def conv2d_forward_max_pool(x: Array, weight: Array, bias: Array | None, y: Array,
                            indices: NDArray[np.int64], out_h: int, out_w: int, stride_h: int,
                            stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
                            dilation_w: int, groups: int, pool_kernel_h: int,
                            pool_kernel_w: int, pool_stride_h: int, pool_stride_w: int,
                            pool_pad_h: int, pool_pad_w: int, pool_dilation_h: int,
                            pool_dilation_w: int, relu: bool) -> bool: ...
def conv2d_backward_weight_through_max_pool(grad_pooled: Array, indices: NDArray[np.int64],
                                            relu_output: Array | None, x: Array,
                                            grad_weight: Array, grad_bias: Array | None,
                                            out_h: int, out_w: int, stride_h: int,
                                            stride_w: int, pad_h: int, pad_w: int,
                                            dilation_h: int, dilation_w: int,
                                            groups: int) -> bool: ...
def conv_algorithm(pass_: str, dtype: object, input_shape: tuple[int, int, int, int],
                   weight_shape: tuple[int, int, int, int], out_h: int, out_w: int,
                   stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
                   dilation_w: int, groups: int) -> str:
    """The algorithm ('winograd', 'direct_nchw', 'direct', 'wide' or 'im2col') conv2d runs for
    pass_ ('forward', 'backward_input', 'backward_weight') on these shapes, with the SIMD level
    and forced algorithm in effect, for finite data (weights holding inf/NaN take im2col in the
    forward and input-gradient passes; Winograd and the wide weight gradient hand non-finite
    inputs to the next algorithm)."""
    ...
def im2col(x: Array, cols: Array, kernel_h: int, kernel_w: int, stride_h: int, stride_w: int,
           pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, out_h: int,
           out_w: int) -> None: ...
def col2im(cols: Array, x: Array, kernel_h: int, kernel_w: int, stride_h: int, stride_w: int,
           pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, out_h: int,
           out_w: int) -> None: ...
def max_pool2d_forward(x: Array, y: Array, indices: NDArray[np.int64], kernel_h: int,
                       kernel_w: int, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
                       dilation_h: int, dilation_w: int, relu: bool = False) -> None: ...
def max_pool2d_backward(grad_y: Array, indices: NDArray[np.int64], grad_x: Array,
                        relu_output: Array | None = None) -> bool: ...
def avg_pool2d_forward(x: Array, y: Array, kernel_h: int, kernel_w: int, stride_h: int,
                       stride_w: int, pad_h: int, pad_w: int, count_include_pad: bool) -> None: ...
def avg_pool2d_backward(grad_y: Array, grad_x: Array, kernel_h: int, kernel_w: int,
                        stride_h: int, stride_w: int, pad_h: int, pad_w: int,
                        count_include_pad: bool) -> None: ...
def gemm(a: Array, b: Array, c: Array, trans_a: bool = False, trans_b: bool = False,
         accumulate: bool = False) -> None: ...
def sgd_update(param: Array, grad: Array, momentum_buffer: Array | None, lr: float,
               momentum: float, dampening: float, weight_decay: float, nesterov: bool,
               first_step: bool) -> None: ...
def adam_update(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array, lr: float,
                beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool,
                step: int) -> None: ...
def batch_norm_forward(x: Array, weight: Array | None, bias: Array | None, eps: float,
                       relu: bool, y: Array, mean: Array, invstd: Array, var: Array) -> None: ...
def batch_norm_backward(grad_y: Array, relu_output: Array | None, x: Array, mean: Array,
                        invstd: Array,
                        weight: Array | None, grad_x: Array | None, grad_weight: Array,
                        grad_bias: Array) -> None: ...
def relu_forward(x: Array, y: Array) -> None: ...
def relu_backward(grad_y: Array, y: Array, grad_x: Array) -> None: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def openmp_enabled() -> bool: ...
def gemm_blocks(dtype: object = "float32") -> dict:
    """The packed GEMM at the selected SIMD level for dtype: {isa, mr, nr, mc, kc, nc}: the
    register tile and the cache blocks derived from the CPU's caches at start-up."""
    ...
def set_gemm_blocks(dtype: object, mc: int, kc: int, nc: int) -> bool:
    """Force the selected SIMD level's cache blocks for dtype (tests and benchmarks); 0, 0, 0
    restores the derived ones. False, and no change, unless mc and nc are positive multiples
    of mr and nr and kc is positive (each at most 2**16)."""
    ...
def fma_peak_gflops(seconds: float, dtype: object = "float32") -> float:
    """The machine's multiply-add peak in GFLOP/s (an FMA counts 2), measured: the selected SIMD
    level's FMA loop, with enough independent accumulators to cover the FMA latency, run on
    every thread (get_num_threads()) for `seconds` (0 < seconds <= 60) after a 20 ms warm-up."""
    ...
def cpu_info() -> dict:
    """The CPU as read once at start-up: vendor, model_name, family, model, features (present
    and enabled by the OS) and caches ({l1d, l2, l3: {bytes, ways, line, shared_by}, source})."""
    ...
def simd_level() -> str: ...
def best_simd_level() -> str: ...
def set_simd_level(level: str) -> bool: ...
def set_conv_algorithm(name: str) -> bool:
    """Force a convolution formulation: 'auto', 'im2col', 'wide', 'direct', 'direct_nchw' or
    'winograd' (each where it applies; tests and benchmarks). False for an unknown name."""
    ...
