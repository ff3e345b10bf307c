// im2col / col2im: lay out every receptive field of an image as a column, and back.
//
// For one image x (C x H x W) and a window (KH x KW, stride, padding, dilation) with output
// grid OH x OW, the column matrix has C*KH*KW rows and L = OH*OW columns:
//   cols[(c*KH + i)*KW + j][oh*OW + ow] = x[c][oh*SH - PH + i*DH][ow*SW - PW + j*DW]
// (zero where the index falls in the padding). Row order matches torch.nn.functional.unfold.
#pragma once

#include "common.h"
#include "gemm/gemm.h"

namespace fastconv {

struct Window2d {
  index_t KH, KW;  // kernel
  index_t SH, SW;  // stride
  index_t PH, PW;  // padding before (top, left); after-padding is implied by OH/OW
  index_t DH, DW;  // dilation
};

// One image, channels [0, C): writes cols (C*KH*KW x ld, first OH*OW columns used).
template <typename T>
void im2col_image(const T* x, index_t C, index_t H, index_t W, const Window2d& win, index_t OH,
                  index_t OW, T* cols, index_t ld);

// One image: x[c][ih][iw] += every column entry that im2col would read from it.
template <typename T>
void col2im_image(const T* cols, index_t ld, index_t C, index_t H, index_t W, const Window2d& win,
                  index_t OH, index_t OW, T* x);

// The column matrix of one image as a GEMM B operand (CKK x L), packed straight from the
// image into the GEMM's panels: no column buffer is written or read. With image_stride, the
// column matrices of consecutive images side by side (CKK x images*L): column j is column
// j % L of the image at x + (j / L) * image_stride.
template <typename T>
struct Im2colB final : BSource<T> {
  const T* x;  // first channel of the (first) image (group)
  index_t C, H, W, OH, OW;
  Window2d win;
  index_t image_stride;
  Im2colB(const T* x_, index_t C_, index_t H_, index_t W_, const Window2d& w, index_t OH_,
          index_t OW_, index_t image_stride_ = 0)
      : x(x_), C(C_), H(H_), W(W_), OH(OH_), OW(OW_), win(w), image_stride(image_stride_) {}
  void pack(index_t pc, index_t kc, index_t jc, index_t nc, index_t nr, T* dst) const override;
};

// The float32 im2col loops with row copies in AVX-512 or AVX2 registers (im2col_avx512.cpp,
// im2col_avx2.cpp; nullptr when the build has none); im2col_kernels() picks those of the
// selected ISA (nullptr: the portable loops). Same values as the portable loops: copies.
struct Im2colKernels {
  void (*pack)(const Im2colB<float>& b, index_t pc, index_t kc, index_t jc, index_t nc,
               index_t nr, float* dst);
  void (*image)(const float* x, index_t C, index_t H, index_t W, const Window2d& win,
                index_t OH, index_t OW, float* cols, index_t ld);
  // col2im_image where it has a kernel for the shape (else false, nothing written; may be
  // nullptr): outputs of at most 16 values on planes of at most 64 on AVX-512.
  bool (*col2im)(const float* cols, index_t ld, index_t C, index_t H, index_t W,
                 const Window2d& win, index_t OH, index_t OW, float* x);
};
const Im2colKernels* im2col_kernels_avx512();
const Im2colKernels* im2col_kernels_avx2();
const Im2colKernels* im2col_kernels();

// Batched versions (== F.unfold / F.fold), threaded over (image, channel).
template <typename T>
void im2col(const T* x, index_t N, index_t C, index_t H, index_t W, const Window2d& win,
            index_t OH, index_t OW, T* cols);
template <typename T>
void col2im(const T* cols, index_t N, index_t C, index_t H, index_t W, const Window2d& win,
            index_t OH, index_t OW, T* x);

}  // namespace fastconv
