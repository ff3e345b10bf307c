// Nearest-neighbour resampling of NCHW planes (PyTorch's 'nearest' mode): output row oh
// copies input row rows[oh] and output column ow input column cols[ow]. The index maps come
// from the caller (PyTorch computes them in float32: fastconv/_args.py) and are non-decreasing
// and in range (the bindings check), so the input rows feeding one gradient row are a run.
#pragma once

#include <cstdint>

#include "common.h"

namespace fastconv {

struct UpsampleShape {
  index_t planes;  // N * C
  index_t H, W;    // input
  index_t OH, OW;  // output
  const std::int64_t* rows;  // OH entries in [0, H)
  const std::int64_t* cols;  // OW entries in [0, W)
};

// Threads take output rows (an output row that repeats the previous one is a copy of it).
template <typename T>
void upsample_nearest2d_forward(const UpsampleShape& s, const T* x, T* y);
// grad_x[row r] = sum over the output rows oh with rows[oh] = r (in order) of grad_y's row
// scattered by cols (ow in order); threads take gradient rows, so the order is fixed.
template <typename T>
void upsample_nearest2d_backward(const UpsampleShape& s, const T* grad_y, T* grad_x);

}  // namespace fastconv
