// C (+)= A . B^T for a short A and a large B, both row-major with contiguous rows of K, float32
// on AVX-512 or AVX2 (the direct kernels): the Linear layer's forward (A = a batch of inputs,
// B = the weight matrix).
//
// The packed GEMM would pack B^T (gather K-strided columns of the 9 MB weight into panels:
// as costly as the arithmetic when M is only a batch of 64). Here B is never packed: its rows
// are broadcast in place by the direct-convolution register tiles (conv_direct.h), which
// compute C^T = B . A^T with only the short A^T packed; C^T is then transposed into C.
// (The same in-place reading for the input and weight gradients, gy W and gy^T x, measured
// slower than the packed GEMM here: W's rows are then read 9 KB apart, column block by
// column block, which the prefetchers do not follow; packing reads them sequentially.)
#pragma once

#include "common.h"

namespace fastconv {

// Returns false (and does nothing) when the direct kernels are not available or the shape
// does not suit them; the caller then uses the packed GEMM. Threads split the rows of B:
// every result is summed in the same order whatever their number.
bool gemm_abt_direct(index_t M, index_t N, index_t K, const float* A, index_t lda, const float* B,
                     index_t ldb, float* C, index_t ldc, bool accumulate);

// The same product as dot products of rows (gemm_nt_rows, AVX-512), for the shapes where a
// register tile would be mostly empty: few rows of A (a batch of 1-15, as in inference) or of
// B (a classifier's 10 outputs). The packed GEMM would gather B^T (K-strided) into 32-wide
// panels for a handful of columns: 5x slower than the dots on a 64x1024 . 1024x10 layer.
// Threads split the rows of B; each result is one dot in a fixed order. Returns false when
// the selected ISA has no dot kernel (GemmKernel::nt_rows: AVX-512) or the shape is not one
// of these (float and double alike).
template <typename T>
bool gemm_abt_dot(index_t M, index_t N, index_t K, const T* A, index_t lda, const T* B,
                  index_t ldb, T* C, index_t ldc, bool accumulate);

}  // namespace fastconv
