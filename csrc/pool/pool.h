// Max and average pooling, forward and backward, NCHW, semantics of PyTorch's CPU kernels:
//   window of output (oh, ow) starts at (oh*SH - PH, ow*SW - PW); OH/OW computed by the caller
//   (floor or ceil mode). Max pooling returns the flat index ih*W + iw of the maximum in each
//   H*W plane (first maximum wins; NaN propagates). Average pooling divides by the window area
//   clipped to the padded input (count_include_pad) or to the input itself, or by
//   divisor_override when it is not 0 (PyTorch's divisor_override: sum / divisor).
#pragma once

#include "common.h"
#include "conv/im2col.h"

namespace fastconv {

struct PoolShape {
  index_t N, C, H, W;  // input
  index_t OH, OW;      // output
  Window2d win;
};

// relu: y = relu(max(window)) (a ReLU after the pooling, applied while the plane is in L1).
template <typename T>
void max_pool2d_forward(const PoolShape& s, const T* x, T* y, std::int64_t* indices,
                        bool relu = false);
// max_pool2d_forward of `planes` consecutive planes on the calling thread (s.N, s.C unused).
template <typename T>
void max_pool2d_forward_planes(const PoolShape& s, index_t planes, const T* x, T* y,
                               std::int64_t* indices, bool relu);
// Returns false (and writes nothing for that entry) if an index lies outside [0, H*W).
// relu_y: the output of a forward with relu; gy is then the gradient of relu(y) and first goes
// through the ReLU's gradient (relu_grad), in the same pass as the scatter.
template <typename T>
bool max_pool2d_backward(const PoolShape& s, const T* gy, const std::int64_t* indices, T* gx,
                         const T* relu_y = nullptr);
// One plane of max_pool2d_backward: gx (HW values) zeroed, then gx[indices[o]] += gy[o] (through
// relu_grad with relu_y) for o < OL in order. False if an index lies outside [0, HW).
template <typename T>
bool max_pool_backward_plane(index_t OL, index_t HW, const T* gy, const std::int64_t* indices,
                             const T* relu_y, T* gx);
// divisor_override: 0 for the window's own divisor, else every window's sum is divided by it.
template <typename T>
void avg_pool2d_forward(const PoolShape& s, bool count_include_pad, const T* x, T* y,
                        index_t divisor_override = 0);
template <typename T>
void avg_pool2d_backward(const PoolShape& s, bool count_include_pad, const T* gy, T* gx,
                         index_t divisor_override = 0);

// Kernels of one plane of 2x2 / stride-2 windows (float32): a W-wide input plane x whose
// OH x OW windows lie wholly inside it, outputs to y (and, for max pooling, their flat indices
// to idx). The same values and indices as the portable kernels of pool.cpp.
struct Pool2x2Kernels {
  void (*max_plane)(const float* x, index_t W, index_t OH, index_t OW, float* y,
                    std::int64_t* idx);
  void (*avg_plane)(const float* x, index_t W, index_t OH, index_t OW, float* y);
};
// The AVX-512 and AVX2 kernels (pool_avx512.cpp, pool_avx2.cpp), or nullptr when the build
// has none; pool_2x2_kernels() picks those of the selected ISA (nullptr: generic).
const Pool2x2Kernels* pool_2x2_kernels_avx512();
const Pool2x2Kernels* pool_2x2_kernels_avx2();
const Pool2x2Kernels* pool_2x2_kernels();

}  // namespace fastconv
