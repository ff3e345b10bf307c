// Stride-1 convolutions on "wide rows" (a shifted-GEMM formulation).
//
// Copy the image, zero-padded, into xpad with rows Wp = OW + (KW-1)*DW wide and Hp = OH +
// (KH-1)*DH rows. On the wide output grid OH x Wp (position l = oh*Wp + ow; the columns
// ow >= OW are junk and dropped), the im2col row of kernel tap (c, i, j) is then one
// contiguous run of the padded image:
//     cols[(c*KH + i)*KW + j][l] = xpad[c*Hp*Wp + i*DH*Wp + j*DW + l]
// so GEMM panels are packed with plain contiguous copies, col2im becomes one vector add per
// row, and no per-element index arithmetic is left. The junk columns cost (Wp/OW - 1) extra
// work, which is why conv/dispatch.cpp uses this path only where the cheaper packing wins.
#pragma once

#include <vector>

#include "conv/conv.h"
#include "gemm/gemm.h"

namespace fastconv {

struct WideGeometry {
  index_t Cg = 0, Hp = 0, Wp = 0, plane = 0, Lw = 0, KH = 0, KW = 0, tap_h = 0, tap_w = 0,
          PH = 0, PW = 0, H = 0, W = 0, OW = 0;
  index_t padded = 0;

  WideGeometry() = default;  // no image
  // Sizes checked (SizeTooLarge): every offset into the padded image is then below 2^62.
  WideGeometry(const ConvShape& s)
      : Cg(s.Cg()),
        Hp(checked_add(s.OH, checked_mul(s.win.KH - 1, s.win.DH))),
        Wp(checked_add(s.OW, checked_mul(s.win.KW - 1, s.win.DW))),
        plane(checked_mul(Hp, Wp)),
        Lw(checked_mul(s.OH, Wp)),
        KH(s.win.KH),
        KW(s.win.KW),
        tap_h(checked_mul(s.win.DH, Wp)),
        tap_w(s.win.DW),
        PH(s.win.PH),
        PW(s.win.PW),
        H(s.H),
        W(s.W),
        OW(s.OW),
        padded(checked_add(checked_mul(Cg, plane), checked_mul(KW - 1, tap_w))) {}

  // Elements of a padded image (the last tap's junk columns read (KW-1)*DW past the end).
  index_t padded_size() const { return padded; }
  // Offset in xpad of the run of column-matrix row r = (c*KH + i)*KW + j.
  index_t row_offset(index_t r) const {
    const index_t c = r / (KH * KW), i = (r / KW) % KH, j = r % KW;
    return c * plane + i * tap_h + j * tap_w;
  }
};

// xpad <- zero-padded copy of x (Cg x H x W).
template <typename T>
void pad_image(const WideGeometry& g, const T* x, T* xpad);
// x (Cg x H x W) <- the interior of xpad.
template <typename T>
void crop_image(const WideGeometry& g, const T* xpad, T* x);
// dst (rows x OH*Wp) <- src (rows x OH*OW) with zero junk columns, and the reverse.
template <typename T>
void widen_rows(const WideGeometry& g, index_t rows, index_t OH, const T* src, T* dst);
template <typename T>
void narrow_rows(const WideGeometry& g, index_t rows, index_t OH, const T* src, T* dst);
// xpad[row_offset(r) + l] += cols[r*Lw + l] for every row r of the column matrix.
template <typename T>
void col2im_wide(const WideGeometry& g, index_t rows, const T* cols, T* xpad);

// The column matrix (CKK x Lw) as a GEMM B operand: panels are contiguous copies of xpad.
template <typename T>
struct WideColsB final : BSource<T> {
  const WideGeometry& g;
  const T* xpad;
  WideColsB(const WideGeometry& g_, const T* x) : g(g_), xpad(x) {}
  void pack(index_t pc, index_t kc, index_t jc, index_t nc, index_t nr, T* dst) const override;
};

// The column matrix (CKK x Lw) as a GEMM A operand (weight gradient, computed transposed).
template <typename T>
struct WideColsA final : ASource<T> {
  const WideGeometry& g;
  const T* xpad;
  index_t rows;
  WideColsA(const WideGeometry& g_, const T* x, index_t r) : g(g_), xpad(x), rows(r) {}
  const T* block(index_t ic, index_t mc, index_t pc, index_t kc, index_t mr,
                 T* scratch) const override;
};

}  // namespace fastconv
