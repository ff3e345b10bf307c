// Python bindings: glue only. The NumPy-facing checks and shape arithmetic live in
// fastconv/_args.py and fastconv/functional.py; here every array is re-checked for dtype,
// C-contiguity, writability and size, then the GIL is released for the kernel. The kernels
// bounds-check every input read against H and W, so no output size passed here can make
// them read or write outside the arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <atomic>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

#include "activation.h"
#include "adaptive_pool.h"
#include "batchnorm.h"
#include "conv.h"
#include "conv_direct.h"
#include "cpu.h"
#include "gemm.h"
#include "gemm_direct.h"
#include "im2col.h"
#include "optim.h"
#include "peak.h"
#include "pool.h"
#include "upsample.h"

namespace py = pybind11;
using fastconv::index_t;

namespace {

// Every kernel runs inside a KernelCall: the GIL released; the process-wide thread count
// applied to this thread (OpenMP keeps one per thread, so set_num_threads would otherwise
// reach only the Python thread that called it; torch.set_num_threads is process-wide too);
// and the SIMD level and conv algorithm held still. Switching those (tests, benchmarks)
// waits for the running calls and holds new ones back: a kernel looks the level up more than
// once per call, and a level without the AVX-512 tables mid-call would crash it.
std::atomic<int> g_threads{0};  // 0: OpenMP's own default (OMP_NUM_THREADS, else all cores)
std::atomic<int> g_running{0};
std::atomic<bool> g_switching{false};

class KernelCall {
 public:
  KernelCall() {
    for (;;) {
      while (g_switching.load()) std::this_thread::yield();
      g_running.fetch_add(1);
      if (!g_switching.load()) break;
      g_running.fetch_sub(1);  // a switch began meanwhile: let it go first
    }
    const int n = g_threads.load();
    if (n > 0 && fastconv::max_threads() != n) fastconv::set_max_threads(n);
  }
  ~KernelCall() { g_running.fetch_sub(1); }
  KernelCall(const KernelCall&) = delete;
  KernelCall& operator=(const KernelCall&) = delete;

 private:
  py::gil_scoped_release release_;  // first: the waits above run without the GIL
};

// Runs change() while no kernel runs (see KernelCall).
template <typename Change>
bool while_no_kernel_runs(Change change) {
  py::gil_scoped_release release;
  bool expected = false;
  while (!g_switching.compare_exchange_weak(expected, true)) {
    expected = false;
    std::this_thread::yield();
  }
  while (g_running.load() != 0) std::this_thread::yield();
  const bool ok = change();
  g_switching.store(false);
  return ok;
}

template <typename T>
const char* dtype_name() {
  if constexpr (!std::is_floating_point_v<T>) return "int64";
  else return sizeof(T) == 4 ? "float32" : "float64";
}

// Whether `a` holds T (float32, float64 or int64) in native byte order. By value, not by
// identity: an array that went through pickle (multiprocessing, joblib) has a dtype object
// of its own, equal to NumPy's float32 but not the same object.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
constexpr char kNativeOrder = '>';
#else
constexpr char kNativeOrder = '<';
#endif

template <typename T>
bool has_dtype(const py::dtype& d) {
  const char order = d.byteorder();  // '=' native, '|' not applicable, '<' / '>' explicit
  return d.kind() == (std::is_floating_point_v<T> ? 'f' : 'i') &&
         d.itemsize() == static_cast<py::ssize_t>(sizeof(T)) &&
         (order == '=' || order == '|' || order == kNativeOrder);
}

template <typename T>
bool has_dtype(const py::array& a) {
  return has_dtype<T>(a.dtype());
}

// Pointer to the data of a C-contiguous array of exactly dtype T with `count` elements.
// No conversion ever happens (a silently converted output would be lost).
template <typename T>
T* data_of(const py::array& a, const char* name, index_t count, bool writable) {
  if (!has_dtype<T>(a))
    throw py::type_error(std::string(name) + " must be a " + dtype_name<T>() + " array");
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous");
  if (writable && !a.writeable()) throw py::value_error(std::string(name) + " is read-only");
  if (a.size() != count)
    throw py::value_error(std::string(name) + " has " + std::to_string(a.size()) +
                          " elements, expected " + std::to_string(count));
  return static_cast<T*>(const_cast<void*>(a.data()));
}

index_t dim(const py::array& a, int i, const char* name) {
  if (a.ndim() != 4) throw py::value_error(std::string(name) + " must be 4-D");
  return a.shape(i);
}

fastconv::Window2d window(index_t kh, index_t kw, index_t sh, index_t sw, index_t ph, index_t pw,
                          index_t dh, index_t dw) {
  if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1 || ph < 0 || pw < 0)
    throw py::value_error("kernel, stride and dilation must be positive, padding non-negative");
  return {kh, kw, sh, sw, ph, pw, dh, dw};
}

template <typename T>
T* optional_data(const py::object& a, const char* name, index_t count, bool writable) {
  return a.is_none() ? nullptr : data_of<T>(a.cast<py::array>(), name, count, writable);
}

// The one dtype switch: calls op(T{}) with T = float or double for a float32 or float64 dtype
// and returns its result; any other dtype is a TypeError naming the argument (`what`: "an
// array" or "a dtype"). Each op's body is a template on T (`op_t<T>`), reached as
//   return for_dtype(x, "x", [&](auto t) { return op_t<decltype(t)>(...); });
template <typename Op>
decltype(auto) for_dtype(const py::dtype& d, const char* name, const char* what, Op&& op) {
  if (has_dtype<float>(d)) return op(float{});
  if (has_dtype<double>(d)) return op(double{});
  throw py::type_error(std::string(name) + " must be a float32 or float64 " + what + ", got " +
                       std::string(py::str(d)));
}

template <typename Op>
decltype(auto) for_dtype(const py::array& a, const char* name, Op&& op) {
  return for_dtype(a.dtype(), name, "array", std::forward<Op>(op));
}

// ---- conv -------------------------------------------------------------------------------

fastconv::ConvShape conv_shape(const py::array& x, const py::array& w, const py::array& y,
                               index_t groups, const fastconv::Window2d& win) {
  fastconv::ConvShape s{dim(x, 0, "x"), dim(x, 1, "x"), dim(x, 2, "x"), dim(x, 3, "x"),
                        dim(w, 0, "weight"), groups, dim(y, 2, "y"), dim(y, 3, "y"), win};
  if (groups < 1 || s.C % groups || s.F % groups || dim(w, 1, "weight") != s.C / groups ||
      dim(w, 2, "weight") != win.KH || dim(w, 3, "weight") != win.KW || dim(y, 0, "y") != s.N ||
      dim(y, 1, "y") != s.F)
    throw py::value_error("conv2d: inconsistent shapes");
  return s;
}

template <typename T>
void conv_forward_t(const py::array& x, const py::array& w, const py::object& bias, py::array& y,
                    const fastconv::ConvShape& s) {
  const T* xp = data_of<T>(x, "x", s.N * s.C * s.H * s.W, false);
  const T* wp = data_of<T>(w, "weight", s.F * s.CKK(), false);
  const T* bp = bias.is_none() ? nullptr : data_of<T>(bias.cast<py::array>(), "bias", s.F, false);
  T* yp = data_of<T>(y, "y", s.N * s.F * s.L(), true);
  KernelCall call;
  fastconv::conv2d_forward<T>(s, xp, wp, bp, yp);
}

void conv2d_forward(const py::array& x, const py::array& w, const py::object& bias, py::array y,
                    index_t sh, index_t sw, index_t ph, index_t pw, index_t dh, index_t dw,
                    index_t groups) {
  const auto win = window(dim(w, 2, "weight"), dim(w, 3, "weight"), sh, sw, ph, pw, dh, dw);
  const auto s = conv_shape(x, w, y, groups, win);
  for_dtype(x, "x", [&](auto t) { conv_forward_t<decltype(t)>(x, w, bias, y, s); });
}

template <typename T>
void conv_backward_input_t(const py::array& gy, const py::array& w, py::array& gx,
                           const fastconv::ConvShape& s) {
  const T* gyp = data_of<T>(gy, "grad_y", s.N * s.F * s.L(), false);
  const T* wp = data_of<T>(w, "weight", s.F * s.CKK(), false);
  T* gxp = data_of<T>(gx, "grad_x", s.N * s.C * s.H * s.W, true);
  KernelCall call;
  fastconv::conv2d_backward_input<T>(s, gyp, wp, gxp);
}

void conv2d_backward_input(const py::array& gy, const py::array& w, py::array gx, index_t sh,
                           index_t sw, index_t ph, index_t pw, index_t dh, index_t dw,
                           index_t groups) {
  const auto win = window(dim(w, 2, "weight"), dim(w, 3, "weight"), sh, sw, ph, pw, dh, dw);
  const auto s = conv_shape(gx, w, gy, groups, win);
  for_dtype(gy, "grad_y", [&](auto t) { conv_backward_input_t<decltype(t)>(gy, w, gx, s); });
}

template <typename T>
void conv_backward_weight_t(const py::array& gy, const py::array& x, py::array& gw,
                            const fastconv::ConvShape& s) {
  const T* gyp = data_of<T>(gy, "grad_y", s.N * s.F * s.L(), false);
  const T* xp = data_of<T>(x, "x", s.N * s.C * s.H * s.W, false);
  T* gwp = data_of<T>(gw, "grad_weight", s.F * s.CKK(), true);
  KernelCall call;
  fastconv::conv2d_backward_weight<T>(s, gyp, xp, gwp);
}

void conv2d_backward_weight(const py::array& gy, const py::array& x, py::array gw, index_t sh,
                            index_t sw, index_t ph, index_t pw, index_t dh, index_t dw,
                            index_t groups) {
  const auto win = window(dim(gw, 2, "grad_weight"), dim(gw, 3, "grad_weight"), sh, sw, ph, pw,
                          dh, dw);
  const auto s = conv_shape(x, gw, gy, groups, win);
  for_dtype(gy, "grad_y", [&](auto t) { conv_backward_weight_t<decltype(t)>(gy, x, gw, s); });
}

template <typename T>
bool conv_forward_max_pool_t(const py::array& x, const py::array& w, const py::object& bias,
                             py::array& y, py::array& idx, const fastconv::ConvShape& s,
                             const fastconv::PoolShape& ps, bool relu) {
  const index_t P = ps.N * ps.C * ps.OH * ps.OW;
  const T* xp = data_of<T>(x, "x", s.N * s.C * s.H * s.W, false);
  const T* wp = data_of<T>(w, "weight", s.F * s.CKK(), false);
  const T* bp = optional_data<T>(bias, "bias", s.F, false);
  T* yp = data_of<T>(y, "y", P, true);
  auto* ip = data_of<std::int64_t>(idx, "indices", P, true);
  KernelCall call;
  return fastconv::conv2d_forward_max_pool<T>(s, xp, wp, bp, ps, relu, yp, ip);
}

// The shape of a convolution whose output (oh x ow) is not an array here: w is the weight or
// its gradient (same shape).
// x (N, C, H, W) and w (F, C/G, KH, KW) as shapes, the output oh x ow.
fastconv::ConvShape checked_conv_shape(const std::array<index_t, 4>& x,
                                       const std::array<index_t, 4>& w, index_t oh, index_t ow,
                                       index_t sh, index_t sw, index_t ph, index_t pw, index_t dh,
                                       index_t dw, index_t groups, const char* op) {
  const auto win = window(w[2], w[3], sh, sw, ph, pw, dh, dw);
  const fastconv::ConvShape s{x[0], x[1], x[2], x[3], w[0], groups, oh, ow, win};
  if (groups < 1 || s.C % groups || s.F % groups || w[1] != s.C / groups || oh < 1 || ow < 1)
    throw py::value_error(std::string(op) + ": inconsistent shapes");
  return s;
}

fastconv::ConvShape conv_shape_sized(const py::array& x, const py::array& w, const char* wname,
                                     index_t oh, index_t ow, index_t sh, index_t sw, index_t ph,
                                     index_t pw, index_t dh, index_t dw, index_t groups,
                                     const char* op) {
  return checked_conv_shape({dim(x, 0, "x"), dim(x, 1, "x"), dim(x, 2, "x"), dim(x, 3, "x")},
                            {dim(w, 0, wname), dim(w, 1, wname), dim(w, 2, wname),
                             dim(w, 3, wname)},
                            oh, ow, sh, sw, ph, pw, dh, dw, groups, op);
}

// The algorithm conv2d's dispatch table picks for a shape and pass (tests, benchmarks).
std::string conv_algorithm(const std::string& pass, const py::object& dtype,
                           const std::array<index_t, 4>& x, const std::array<index_t, 4>& w,
                           index_t oh, index_t ow, index_t sh, index_t sw, index_t ph, index_t pw,
                           index_t dh, index_t dw, index_t groups) {
  fastconv::ConvPass p;
  if (pass == "forward") p = fastconv::ConvPass::forward;
  else if (pass == "backward_input") p = fastconv::ConvPass::backward_input;
  else if (pass == "backward_weight") p = fastconv::ConvPass::backward_weight;
  else
    throw py::value_error("conv_algorithm: pass_ must be 'forward', 'backward_input' or "
                          "'backward_weight', got '" + pass + "'");
  const auto s = checked_conv_shape(x, w, oh, ow, sh, sw, ph, pw, dh, dw, groups,
                                    "conv_algorithm");
  return for_dtype(py::dtype::from_args(dtype), "conv_algorithm: dtype", "dtype", [&](auto t) {
    return std::string(fastconv::conv_algorithm_name(
        fastconv::conv_algorithm_for<decltype(t)>(s, p)));
  });
}

bool conv2d_forward_max_pool(const py::array& x, const py::array& w, const py::object& bias,
                             py::array y, py::array idx, index_t oh, index_t ow, index_t sh,
                             index_t sw, index_t ph, index_t pw, index_t dh, index_t dw,
                             index_t groups, index_t pool_kh, index_t pool_kw, index_t pool_sh,
                             index_t pool_sw, index_t pool_ph, index_t pool_pw,
                             index_t pool_dh, index_t pool_dw, bool relu) {
  const auto s = conv_shape_sized(x, w, "weight", oh, ow, sh, sw, ph, pw, dh, dw, groups,
                                  "conv2d_forward_max_pool");
  const fastconv::PoolShape ps{s.N, s.F, oh, ow, dim(y, 2, "y"), dim(y, 3, "y"),
                               window(pool_kh, pool_kw, pool_sh, pool_sw, pool_ph, pool_pw,
                                      pool_dh, pool_dw)};
  if (dim(y, 0, "y") != s.N || dim(y, 1, "y") != s.F)
    throw py::value_error("conv2d_forward_max_pool: y must be (N, F, PH, PW)");
  return for_dtype(x, "x", [&](auto t) {
    return conv_forward_max_pool_t<decltype(t)>(x, w, bias, y, idx, s, ps, relu);
  });
}

template <typename T>
bool conv_backward_through_pool_t(const py::array& gp, const py::array& idx,
                                  const py::object& relu_y, const py::array& x, py::array& gw,
                                  const py::object& gb, const fastconv::ConvShape& s) {
  const index_t PH = dim(gp, 2, "grad_pooled"), PW = dim(gp, 3, "grad_pooled");
  if (dim(gp, 0, "grad_pooled") != s.N || dim(gp, 1, "grad_pooled") != s.F)
    throw py::value_error("conv2d_backward_weight_through_max_pool: grad_pooled must be "
                          "(N, F, PH, PW) for x (N, ...) and weight (F, ...)");
  const index_t P = s.N * s.F * PH * PW;
  const fastconv::PooledGrad<T> pg{data_of<T>(gp, "grad_pooled", P, false),
                                   data_of<std::int64_t>(idx, "indices", P, false),
                                   optional_data<T>(relu_y, "relu_output", P, false), PH, PW};
  const T* xp = data_of<T>(x, "x", s.N * s.C * s.H * s.W, false);
  T* gwp = data_of<T>(gw, "grad_weight", s.F * s.CKK(), true);
  T* gbp = optional_data<T>(gb, "grad_bias", s.F, true);
  KernelCall call;
  return fastconv::conv2d_backward_weight_through_max_pool<T>(s, pg, xp, gwp, gbp);
}

bool conv2d_backward_weight_through_max_pool(const py::array& gp, const py::array& idx,
                                             const py::object& relu_y, const py::array& x,
                                             py::array gw, const py::object& gb, index_t oh,
                                             index_t ow, index_t sh, index_t sw, index_t ph,
                                             index_t pw, index_t dh, index_t dw, index_t groups) {
  const auto s = conv_shape_sized(x, gw, "grad_weight", oh, ow, sh, sw, ph, pw, dh, dw, groups,
                                  "conv2d_backward_weight_through_max_pool");
  return for_dtype(gp, "grad_pooled", [&](auto t) {
    return conv_backward_through_pool_t<decltype(t)>(gp, idx, relu_y, x, gw, gb, s);
  });
}

template <typename T>
void conv_backward_bias_t(const py::array& gy, py::array& gb) {
  fastconv::ConvShape s{};
  s.N = dim(gy, 0, "grad_y");
  s.F = dim(gy, 1, "grad_y");
  s.G = 1;
  s.OH = dim(gy, 2, "grad_y");
  s.OW = dim(gy, 3, "grad_y");
  const T* gyp = data_of<T>(gy, "grad_y", s.N * s.F * s.L(), false);
  T* gbp = data_of<T>(gb, "grad_bias", s.F, true);
  KernelCall call;
  fastconv::conv2d_backward_bias<T>(s, gyp, gbp);
}

void conv2d_backward_bias(const py::array& gy, py::array gb) {
  for_dtype(gy, "grad_y", [&](auto t) { conv_backward_bias_t<decltype(t)>(gy, gb); });
}

// ---- im2col / col2im --------------------------------------------------------------------

template <typename T>
void unfold_t(const py::array& image, const py::array& cols, bool to_cols, const fastconv::Window2d& win,
              index_t OH, index_t OW) {
  const index_t N = dim(image, 0, "image"), C = dim(image, 1, "image"),
                H = dim(image, 2, "image"), W = dim(image, 3, "image");
  const index_t rows = C * win.KH * win.KW, L = OH * OW;
  T* ip = data_of<T>(image, "image", N * C * H * W, !to_cols);
  T* cp = data_of<T>(cols, "cols", N * rows * L, to_cols);
  KernelCall call;
  if (to_cols) fastconv::im2col<T>(ip, N, C, H, W, win, OH, OW, cp);
  else fastconv::col2im<T>(cp, N, C, H, W, win, OH, OW, ip);
}

void im2col(const py::array& x, py::array cols, index_t kh, index_t kw, index_t sh, index_t sw,
            index_t ph, index_t pw, index_t dh, index_t dw, index_t OH, index_t OW) {
  const auto win = window(kh, kw, sh, sw, ph, pw, dh, dw);
  for_dtype(x, "x", [&](auto t) { unfold_t<decltype(t)>(x, cols, true, win, OH, OW); });
}

void col2im(const py::array& cols, py::array x, index_t kh, index_t kw, index_t sh, index_t sw,
            index_t ph, index_t pw, index_t dh, index_t dw, index_t OH, index_t OW) {
  const auto win = window(kh, kw, sh, sw, ph, pw, dh, dw);
  for_dtype(cols, "cols", [&](auto t) { unfold_t<decltype(t)>(x, cols, false, win, OH, OW); });
}

// ---- pooling ----------------------------------------------------------------------------

fastconv::PoolShape pool_shape(const py::array& x, const py::array& y,
                               const fastconv::Window2d& win) {
  fastconv::PoolShape s{dim(x, 0, "x"), dim(x, 1, "x"), dim(x, 2, "x"), dim(x, 3, "x"),
                        dim(y, 2, "y"), dim(y, 3, "y"), win};
  if (dim(y, 0, "y") != s.N || dim(y, 1, "y") != s.C)
    throw py::value_error("pool2d: output shape inconsistent with the input");
  return s;
}

template <typename T>
void max_pool_forward_t(const py::array& x, py::array& y, py::array& idx,
                        const fastconv::PoolShape& s, bool relu) {
  const T* xp = data_of<T>(x, "x", s.N * s.C * s.H * s.W, false);
  T* yp = data_of<T>(y, "y", s.N * s.C * s.OH * s.OW, true);
  auto* ip = data_of<std::int64_t>(idx, "indices", s.N * s.C * s.OH * s.OW, true);
  KernelCall call;
  fastconv::max_pool2d_forward<T>(s, xp, yp, ip, relu);
}

void max_pool2d_forward(const py::array& x, py::array y, py::array idx, index_t kh, index_t kw,
                        index_t sh, index_t sw, index_t ph, index_t pw, index_t dh, index_t dw,
                        bool relu) {
  const auto s = pool_shape(x, y, window(kh, kw, sh, sw, ph, pw, dh, dw));
  for_dtype(x, "x", [&](auto t) { max_pool_forward_t<decltype(t)>(x, y, idx, s, relu); });
}

template <typename T>
bool max_pool_backward_t(const py::array& gy, const py::array& idx, py::array& gx,
                         const py::object& relu_y) {
  fastconv::PoolShape s{dim(gx, 0, "grad_x"), dim(gx, 1, "grad_x"), dim(gx, 2, "grad_x"),
                        dim(gx, 3, "grad_x"), dim(gy, 2, "grad_y"), dim(gy, 3, "grad_y"), {}};
  if (dim(gy, 0, "grad_y") != s.N || dim(gy, 1, "grad_y") != s.C)
    throw py::value_error("max_pool2d_backward: grad_y and input_shape disagree");
  const index_t OL = s.N * s.C * s.OH * s.OW;
  const T* gyp = data_of<T>(gy, "grad_y", OL, false);
  const auto* ip = data_of<std::int64_t>(idx, "indices", OL, false);
  const T* ryp = optional_data<T>(relu_y, "relu_output", OL, false);
  T* gxp = data_of<T>(gx, "grad_x", s.N * s.C * s.H * s.W, true);
  KernelCall call;
  return fastconv::max_pool2d_backward<T>(s, gyp, ip, gxp, ryp);
}

bool max_pool2d_backward(const py::array& gy, const py::array& idx, py::array gx,
                         const py::object& relu_y) {
  return for_dtype(gy, "grad_y", [&](auto t) {
    return max_pool_backward_t<decltype(t)>(gy, idx, gx, relu_y);
  });
}

template <typename T>
void avg_pool_t(const py::array& x, const py::array& y, bool forward, bool count_include_pad,
                const fastconv::PoolShape& s) {
  T* xp = data_of<T>(x, forward ? "x" : "grad_x", s.N * s.C * s.H * s.W, !forward);
  T* yp = data_of<T>(y, forward ? "y" : "grad_y", s.N * s.C * s.OH * s.OW, forward);
  KernelCall call;
  if (forward) fastconv::avg_pool2d_forward<T>(s, count_include_pad, xp, yp);
  else fastconv::avg_pool2d_backward<T>(s, count_include_pad, yp, xp);
}

void avg_pool2d_forward(const py::array& x, py::array y, index_t kh, index_t kw, index_t sh,
                        index_t sw, index_t ph, index_t pw, bool count_include_pad) {
  const auto s = pool_shape(x, y, window(kh, kw, sh, sw, ph, pw, 1, 1));
  for_dtype(x, "x", [&](auto t) { avg_pool_t<decltype(t)>(x, y, true, count_include_pad, s); });
}

void avg_pool2d_backward(const py::array& gy, py::array gx, index_t kh, index_t kw, index_t sh,
                         index_t sw, index_t ph, index_t pw, bool count_include_pad) {
  const auto s = pool_shape(gx, gy, window(kh, kw, sh, sw, ph, pw, 1, 1));
  for_dtype(gy, "grad_y", [&](auto t) {
    avg_pool_t<decltype(t)>(gx, gy, false, count_include_pad, s);
  });
}

// ---- adaptive average pooling ----------------------------------------------------------

fastconv::AdaptivePoolShape adaptive_pool_shape(const py::array& x, const py::array& y,
                                                const char* xname, const char* yname) {
  const fastconv::AdaptivePoolShape s{dim(x, 0, xname) * dim(x, 1, xname), dim(x, 2, xname),
                                      dim(x, 3, xname), dim(y, 2, yname), dim(y, 3, yname)};
  if (dim(y, 0, yname) != dim(x, 0, xname) || dim(y, 1, yname) != dim(x, 1, xname) ||
      s.H < 1 || s.W < 1 || s.OH < 1 || s.OW < 1)
    throw py::value_error("adaptive_avg_pool2d: the input and output must agree on (N, C) and "
                          "have non-empty planes");
  return s;
}

template <typename T>
void adaptive_avg_pool_t(const py::array& x, const py::array& y, bool forward,
                         const fastconv::AdaptivePoolShape& s) {
  T* xp = data_of<T>(x, forward ? "x" : "grad_x", s.planes * s.H * s.W, !forward);
  T* yp = data_of<T>(y, forward ? "y" : "grad_y", s.planes * s.OH * s.OW, forward);
  KernelCall call;
  if (forward) fastconv::adaptive_avg_pool2d_forward<T>(s, xp, yp);
  else fastconv::adaptive_avg_pool2d_backward<T>(s, yp, xp);
}

void adaptive_avg_pool2d_forward(const py::array& x, py::array y) {
  const auto s = adaptive_pool_shape(x, y, "x", "y");
  for_dtype(x, "x", [&](auto t) { adaptive_avg_pool_t<decltype(t)>(x, y, true, s); });
}

void adaptive_avg_pool2d_backward(const py::array& gy, py::array gx) {
  const auto s = adaptive_pool_shape(gx, gy, "grad_x", "grad_y");
  for_dtype(gy, "grad_y", [&](auto t) { adaptive_avg_pool_t<decltype(t)>(gx, gy, false, s); });
}

// ---- nearest upsampling ------------------------------------------------------------------

// An index map: `count` int64 values, non-decreasing, in [0, limit).
const std::int64_t* index_map(const py::array& a, const char* name, index_t count, index_t limit) {
  const auto* p = data_of<std::int64_t>(a, name, count, false);
  for (index_t i = 0; i < count; ++i)
    if (p[i] < 0 || p[i] >= limit || (i > 0 && p[i] < p[i - 1]))
      throw py::value_error(std::string(name) + " must be non-decreasing and lie in [0, " +
                            std::to_string(limit) + ")");
  return p;
}

fastconv::UpsampleShape upsample_shape(const py::array& x, const py::array& y,
                                       const py::array& rows, const py::array& cols,
                                       const char* xname, const char* yname) {
  fastconv::UpsampleShape s{dim(x, 0, xname) * dim(x, 1, xname), dim(x, 2, xname),
                            dim(x, 3, xname), dim(y, 2, yname), dim(y, 3, yname), nullptr,
                            nullptr};
  if (dim(y, 0, yname) != dim(x, 0, xname) || dim(y, 1, yname) != dim(x, 1, xname))
    throw py::value_error("upsample_nearest2d: the input and output must agree on (N, C)");
  s.rows = index_map(rows, "rows", s.OH, s.H);
  s.cols = index_map(cols, "cols", s.OW, s.W);
  return s;
}

template <typename T>
void upsample_t(const py::array& x, const py::array& y, bool forward,
                const fastconv::UpsampleShape& s) {
  T* xp = data_of<T>(x, forward ? "x" : "grad_x", s.planes * s.H * s.W, !forward);
  T* yp = data_of<T>(y, forward ? "y" : "grad_y", s.planes * s.OH * s.OW, forward);
  KernelCall call;
  if (forward) fastconv::upsample_nearest2d_forward<T>(s, xp, yp);
  else fastconv::upsample_nearest2d_backward<T>(s, yp, xp);
}

void upsample_nearest2d_forward(const py::array& x, py::array y, const py::array& rows,
                                const py::array& cols) {
  const auto s = upsample_shape(x, y, rows, cols, "x", "y");
  for_dtype(x, "x", [&](auto t) { upsample_t<decltype(t)>(x, y, true, s); });
}

void upsample_nearest2d_backward(const py::array& gy, py::array gx, const py::array& rows,
                                 const py::array& cols) {
  const auto s = upsample_shape(gx, gy, rows, cols, "grad_x", "grad_y");
  for_dtype(gy, "grad_y", [&](auto t) { upsample_t<decltype(t)>(gx, gy, false, s); });
}

// ---- gemm (Linear, tests and benchmarks) -----------------------------------------------

template <typename T>
void gemm_t(const py::array& a, const py::array& b, py::array& c, bool trans_a, bool trans_b,
            bool accumulate) {
  if (a.ndim() != 2 || b.ndim() != 2 || c.ndim() != 2)
    throw py::value_error("gemm: a, b and c must be 2-D");
  const index_t M = c.shape(0), N = c.shape(1);
  const index_t K = trans_a ? a.shape(0) : a.shape(1);
  if ((trans_a ? a.shape(1) : a.shape(0)) != M || (trans_b ? b.shape(1) : b.shape(0)) != K ||
      (trans_b ? b.shape(0) : b.shape(1)) != N)
    throw py::value_error("gemm: shapes do not match");
  const T* ap = data_of<T>(a, "a", a.size(), false);
  const T* bp = data_of<T>(b, "b", b.size(), false);
  T* cp = data_of<T>(c, "c", M * N, true);
  const index_t lda = a.shape(1), ldb = b.shape(1);
  KernelCall call;
  if (!trans_a && trans_b) {
    if (fastconv::gemm_abt_dot<T>(M, N, K, ap, lda, bp, ldb, cp, N, accumulate)) return;
    if constexpr (std::is_same_v<T, float>)
      if (fastconv::gemm_abt_direct(M, N, K, ap, lda, bp, ldb, cp, N, accumulate)) return;
  }
  fastconv::gemm_parallel<T>(M, N, K, ap, trans_a ? 1 : lda, trans_a ? lda : 1, bp,
                             trans_b ? 1 : ldb, trans_b ? ldb : 1, cp, N, accumulate);
}

void gemm(const py::array& a, const py::array& b, py::array c, bool trans_a, bool trans_b,
          bool accumulate) {
  for_dtype(a, "a", [&](auto t) {
    gemm_t<decltype(t)>(a, b, c, trans_a, trans_b, accumulate);
  });
}

// ---- optimiser updates (in place) -------------------------------------------------------

template <typename T>
void sgd_t(py::array& p, const py::array& g, const py::object& buf, double lr, double momentum,
           double dampening, double weight_decay, bool nesterov, bool first_step) {
  const index_t n = p.size();
  T* pp = data_of<T>(p, "param", n, true);
  const T* gp = data_of<T>(g, "grad", n, false);
  T* bp = buf.is_none() ? nullptr : data_of<T>(buf.cast<py::array>(), "momentum_buffer", n, true);
  if (momentum != 0 && !bp) throw py::value_error("sgd_update: momentum needs a momentum_buffer");
  KernelCall call;
  fastconv::sgd_update<T>(n, pp, gp, bp, T(lr), T(momentum), T(dampening), T(weight_decay),
                          nesterov, first_step);
}

void sgd_update(py::array p, const py::array& g, const py::object& buf, double lr,
                double momentum, double dampening, double weight_decay, bool nesterov,
                bool first_step) {
  for_dtype(p, "param", [&](auto t) {
    sgd_t<decltype(t)>(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first_step);
  });
}

template <typename T>
void adam_t(py::array& p, const py::array& g, py::array& m, py::array& v, double lr, double beta1,
            double beta2, double eps, double weight_decay, bool decoupled, index_t step) {
  const index_t n = p.size();
  T* pp = data_of<T>(p, "param", n, true);
  const T* gp = data_of<T>(g, "grad", n, false);
  T* mp = data_of<T>(m, "exp_avg", n, true);
  T* vp = data_of<T>(v, "exp_avg_sq", n, true);
  if (step < 1) throw py::value_error("adam_update: step must be >= 1");
  KernelCall call;
  fastconv::adam_update<T>(n, pp, gp, mp, vp, T(lr), T(beta1), T(beta2), T(eps), T(weight_decay),
                           decoupled, step);
}

void adam_update(py::array p, const py::array& g, py::array m, py::array v, double lr,
                 double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                 index_t step) {
  for_dtype(p, "param", [&](auto t) {
    adam_t<decltype(t)>(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, step);
  });
}

// ---- batch norm (training mode) -----------------------------------------------------------

template <typename T>
void bn_forward_t(const py::array& x, const py::object& gamma, const py::object& beta, double eps,
                  bool relu, py::array& y, py::array& mean, py::array& invstd, py::array& var) {
  if (x.ndim() != 3) throw py::value_error("batch_norm_forward: x must be 3-D (N, C, S)");
  const index_t N = x.shape(0), C = x.shape(1), S = x.shape(2);
  const T* xp = data_of<T>(x, "x", N * C * S, false);
  const T* gp = optional_data<T>(gamma, "weight", C, false);
  const T* bp = optional_data<T>(beta, "bias", C, false);
  T* yp = data_of<T>(y, "y", N * C * S, true);
  T* mp = data_of<T>(mean, "mean", C, true);
  T* ip = data_of<T>(invstd, "invstd", C, true);
  T* vp = data_of<T>(var, "var", C, true);
  KernelCall call;
  fastconv::batch_norm_forward<T>(N, C, S, xp, gp, bp, eps, relu, yp, mp, ip, vp);
}

void batch_norm_forward(const py::array& x, const py::object& gamma, const py::object& beta,
                        double eps, bool relu, py::array y, py::array mean, py::array invstd,
                        py::array var) {
  for_dtype(x, "x", [&](auto t) {
    bn_forward_t<decltype(t)>(x, gamma, beta, eps, relu, y, mean, invstd, var);
  });
}

template <typename T>
void bn_backward_t(const py::array& gy, const py::object& relu_y, const py::array& x,
                   const py::array& mean,
                   const py::array& invstd, const py::object& gamma, const py::object& gx,
                   py::array& ggamma, py::array& gbeta) {
  if (x.ndim() != 3) throw py::value_error("batch_norm_backward: x must be 3-D (N, C, S)");
  const index_t N = x.shape(0), C = x.shape(1), S = x.shape(2);
  const T* gyp = data_of<T>(gy, "grad_y", N * C * S, false);
  const T* ryp = optional_data<T>(relu_y, "relu_output", N * C * S, false);
  const T* xp = data_of<T>(x, "x", N * C * S, false);
  const T* mp = data_of<T>(mean, "mean", C, false);
  const T* ip = data_of<T>(invstd, "invstd", C, false);
  const T* gp = optional_data<T>(gamma, "weight", C, false);
  T* gxp = gx.is_none() ? nullptr : data_of<T>(gx.cast<py::array>(), "grad_x", N * C * S, true);
  T* ggp = data_of<T>(ggamma, "grad_weight", C, true);
  T* gbp = data_of<T>(gbeta, "grad_bias", C, true);
  KernelCall call;
  fastconv::batch_norm_backward<T>(N, C, S, gyp, ryp, xp, mp, ip, gp, gxp, ggp, gbp);
}

void batch_norm_backward(const py::array& gy, const py::object& relu_y, const py::array& x,
                         const py::array& mean, const py::array& invstd, const py::object& gamma,
                         const py::object& gx, py::array ggamma, py::array gbeta) {
  for_dtype(x, "x", [&](auto t) {
    bn_backward_t<decltype(t)>(gy, relu_y, x, mean, invstd, gamma, gx, ggamma, gbeta);
  });
}

// ---- activations ---------------------------------------------------------------------------

template <typename T>
void relu_t(const py::array& x, py::array& y) {
  const index_t n = x.size();
  const T* xp = data_of<T>(x, "x", n, false);
  T* yp = data_of<T>(y, "y", n, true);
  KernelCall call;
  fastconv::relu_forward<T>(n, xp, yp);
}

void relu_forward(const py::array& x, py::array y) {
  for_dtype(x, "x", [&](auto t) { relu_t<decltype(t)>(x, y); });
}

template <typename T>
void relu_backward_t(const py::array& gy, const py::array& y, py::array& gx) {
  const index_t n = y.size();
  const T* gp = data_of<T>(gy, "grad_y", n, false);
  const T* yp = data_of<T>(y, "y", n, false);
  T* xp = data_of<T>(gx, "grad_x", n, true);
  KernelCall call;
  fastconv::relu_backward<T>(n, gp, yp, xp);
}

void relu_backward(const py::array& gy, const py::array& y, py::array gx) {
  for_dtype(y, "y", [&](auto t) { relu_backward_t<decltype(t)>(gy, y, gx); });
}

// ---- the machine ----------------------------------------------------------------------------

py::dict cache_dict(const fastconv::CacheLevel& c) {
  py::dict d;
  d["bytes"] = c.bytes;
  d["ways"] = c.ways;
  d["line"] = c.line;
  d["shared_by"] = c.shared_by;
  return d;
}

py::dict cpu_info_dict() {
  const fastconv::CpuInfo& c = fastconv::cpu_info();
  py::dict caches;
  caches["l1d"] = cache_dict(c.l1d);
  caches["l2"] = cache_dict(c.l2);
  caches["l3"] = cache_dict(c.l3);
  caches["source"] = c.cache_source;
  py::dict d;
  d["vendor"] = c.vendor;
  d["model_name"] = c.model_name;
  d["family"] = c.family;
  d["model"] = c.model;
  d["features"] = c.feature_names();
  d["caches"] = caches;
  return d;
}

py::dict gemm_blocks(const py::object& dtype) {
  return for_dtype(py::dtype::from_args(dtype), "gemm_blocks: dtype", "dtype", [&](auto t) {
    const auto& c = fastconv::gemm_config<decltype(t)>();
    py::dict d;
    d["isa"] = fastconv::isa_name(c.isa);
    d["mr"] = c.mr;
    d["nr"] = c.nr;
    d["mc"] = c.mc;
    d["kc"] = c.kc;
    d["nc"] = c.nc;
    return d;
  });
}

bool set_gemm_blocks(const py::object& dtype, index_t mc, index_t kc, index_t nc) {
  return for_dtype(py::dtype::from_args(dtype), "set_gemm_blocks: dtype", "dtype", [&](auto t) {
    return while_no_kernel_runs(
        [&] { return fastconv::set_gemm_blocks<decltype(t)>(mc, kc, nc); });
  });
}

double fma_peak_gflops(double seconds, const py::object& dtype) {
  if (!(seconds > 0 && seconds <= 60))
    throw py::value_error("fma_peak_gflops: seconds must be in (0, 60], got " +
                          std::to_string(seconds));
  return for_dtype(py::dtype::from_args(dtype), "fma_peak_gflops: dtype", "dtype", [&](auto t) {
    KernelCall call;
    return fastconv::fma_peak_gflops<decltype(t)>(seconds);
  });
}

template <typename T>
void gelu_t(const py::array& x, py::array& y, bool tanh_approx) {
  const index_t n = x.size();
  const T* xp = data_of<T>(x, "x", n, false);
  T* yp = data_of<T>(y, "y", n, true);
  KernelCall call;
  fastconv::gelu_forward<T>(n, xp, yp, tanh_approx);
}

void gelu_forward(const py::array& x, py::array y, bool tanh_approx) {
  for_dtype(x, "x", [&](auto t) { gelu_t<decltype(t)>(x, y, tanh_approx); });
}

template <typename T>
void gelu_backward_t(const py::array& gy, const py::array& x, py::array& gx, bool tanh_approx) {
  const index_t n = x.size();
  const T* gp = data_of<T>(gy, "grad_y", n, false);
  const T* xp = data_of<T>(x, "x", n, false);
  T* gxp = data_of<T>(gx, "grad_x", n, true);
  KernelCall call;
  fastconv::gelu_backward<T>(n, gp, xp, gxp, tanh_approx);
}

void gelu_backward(const py::array& gy, const py::array& x, py::array gx, bool tanh_approx) {
  for_dtype(x, "x", [&](auto t) { gelu_backward_t<decltype(t)>(gy, x, gx, tanh_approx); });
}

template <typename T>
void silu_t(const py::array& x, py::array& y) {
  const index_t n = x.size();
  const T* xp = data_of<T>(x, "x", n, false);
  T* yp = data_of<T>(y, "y", n, true);
  KernelCall call;
  fastconv::silu_forward<T>(n, xp, yp);
}

void silu_forward(const py::array& x, py::array y) {
  for_dtype(x, "x", [&](auto t) { silu_t<decltype(t)>(x, y); });
}

template <typename T>
void silu_backward_t(const py::array& gy, const py::array& x, py::array& gx) {
  const index_t n = x.size();
  const T* gp = data_of<T>(gy, "grad_y", n, false);
  const T* xp = data_of<T>(x, "x", n, false);
  T* gxp = data_of<T>(gx, "grad_x", n, true);
  KernelCall call;
  fastconv::silu_backward<T>(n, gp, xp, gxp);
}

void silu_backward(const py::array& gy, const py::array& x, py::array gx) {
  for_dtype(x, "x", [&](auto t) { silu_backward_t<decltype(t)>(gy, x, gx); });
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastconv compiled kernels (internal: use fastconv.functional)";
  m.def("conv2d_forward", &conv2d_forward, py::arg("x"), py::arg("weight"), py::arg("bias").none(true),
        py::arg("y"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"),
        py::arg("dilation_h"), py::arg("dilation_w"), py::arg("groups"));
  m.def("conv2d_backward_input", &conv2d_backward_input, py::arg("grad_y"), py::arg("weight"),
        py::arg("grad_x"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"),
        py::arg("pad_w"), py::arg("dilation_h"), py::arg("dilation_w"), py::arg("groups"));
  m.def("conv2d_backward_weight", &conv2d_backward_weight, py::arg("grad_y"), py::arg("x"),
        py::arg("grad_weight"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"),
        py::arg("pad_w"), py::arg("dilation_h"), py::arg("dilation_w"), py::arg("groups"));
  m.def("conv2d_backward_bias", &conv2d_backward_bias, py::arg("grad_y"), py::arg("grad_bias"));
  m.def("conv2d_forward_max_pool", &conv2d_forward_max_pool, py::arg("x"), py::arg("weight"),
        py::arg("bias").none(true), py::arg("y"), py::arg("indices"), py::arg("out_h"),
        py::arg("out_w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"),
        py::arg("pad_w"), py::arg("dilation_h"), py::arg("dilation_w"), py::arg("groups"),
        py::arg("pool_kernel_h"), py::arg("pool_kernel_w"), py::arg("pool_stride_h"),
        py::arg("pool_stride_w"), py::arg("pool_pad_h"), py::arg("pool_pad_w"),
        py::arg("pool_dilation_h"), py::arg("pool_dilation_w"), py::arg("relu"),
        "Returns False, having done nothing, where the fused kernels do not apply.");
  m.def("conv2d_backward_weight_through_max_pool", &conv2d_backward_weight_through_max_pool,
        py::arg("grad_pooled"), py::arg("indices"), py::arg("relu_output").none(true),
        py::arg("x"), py::arg("grad_weight"), py::arg("grad_bias").none(true), py::arg("out_h"),
        py::arg("out_w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"),
        py::arg("pad_w"), py::arg("dilation_h"), py::arg("dilation_w"), py::arg("groups"),
        "Returns False if a pooling index lies outside its plane.");
  m.def("conv_algorithm", &conv_algorithm, py::arg("pass_"), py::arg("dtype"),
        py::arg("input_shape"), py::arg("weight_shape"), py::arg("out_h"), py::arg("out_w"),
        py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"),
        py::arg("dilation_h"), py::arg("dilation_w"), py::arg("groups"),
        "Name of the algorithm conv2d runs for this pass and shape, for finite data.");
  m.def("im2col", &im2col, py::arg("x"), py::arg("cols"), py::arg("kernel_h"), py::arg("kernel_w"),
        py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"),
        py::arg("dilation_h"), py::arg("dilation_w"), py::arg("out_h"), py::arg("out_w"));
  m.def("col2im", &col2im, py::arg("cols"), py::arg("x"), py::arg("kernel_h"), py::arg("kernel_w"),
        py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"),
        py::arg("dilation_h"), py::arg("dilation_w"), py::arg("out_h"), py::arg("out_w"));
  m.def("max_pool2d_forward", &max_pool2d_forward, py::arg("x"), py::arg("y"), py::arg("indices"),
        py::arg("kernel_h"), py::arg("kernel_w"), py::arg("stride_h"), py::arg("stride_w"),
        py::arg("pad_h"), py::arg("pad_w"), py::arg("dilation_h"), py::arg("dilation_w"),
        py::arg("relu") = false);
  m.def("max_pool2d_backward", &max_pool2d_backward, py::arg("grad_y"), py::arg("indices"),
        py::arg("grad_x"), py::arg("relu_output").none(true) = py::none(),
        "Returns False if an index lies outside its H*W plane.");
  m.def("avg_pool2d_forward", &avg_pool2d_forward, py::arg("x"), py::arg("y"), py::arg("kernel_h"),
        py::arg("kernel_w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"),
        py::arg("pad_w"), py::arg("count_include_pad"));
  m.def("avg_pool2d_backward", &avg_pool2d_backward, py::arg("grad_y"), py::arg("grad_x"),
        py::arg("kernel_h"), py::arg("kernel_w"), py::arg("stride_h"), py::arg("stride_w"),
        py::arg("pad_h"), py::arg("pad_w"), py::arg("count_include_pad"));
  m.def("adaptive_avg_pool2d_forward", &adaptive_avg_pool2d_forward, py::arg("x"), py::arg("y"));
  m.def("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward, py::arg("grad_y"),
        py::arg("grad_x"));
  m.def("upsample_nearest2d_forward", &upsample_nearest2d_forward, py::arg("x"), py::arg("y"),
        py::arg("rows"), py::arg("cols"),
        "y[..., i, j] = x[..., rows[i], cols[j]] (rows, cols: non-decreasing int64 maps).");
  m.def("upsample_nearest2d_backward", &upsample_nearest2d_backward, py::arg("grad_y"),
        py::arg("grad_x"), py::arg("rows"), py::arg("cols"));
  m.def("gemm", &gemm, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("trans_a") = false,
        py::arg("trans_b") = false, py::arg("accumulate") = false,
        "c (+)= op(a) @ op(b) with the packed GEMM (threads over blocks of c).");
  m.def("sgd_update", &sgd_update, py::arg("param"), py::arg("grad"),
        py::arg("momentum_buffer").none(true), py::arg("lr"), py::arg("momentum"),
        py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"), py::arg("first_step"),
        "In-place torch.optim.SGD update of one parameter array.");
  m.def("adam_update", &adam_update, py::arg("param"), py::arg("grad"), py::arg("exp_avg"),
        py::arg("exp_avg_sq"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("decoupled"), py::arg("step"),
        "In-place torch.optim.Adam (decoupled=False) / AdamW (True) update of one array.");
  m.def("batch_norm_forward", &batch_norm_forward, py::arg("x"), py::arg("weight").none(true),
        py::arg("bias").none(true), py::arg("eps"), py::arg("relu"), py::arg("y"), py::arg("mean"),
        py::arg("invstd"), py::arg("var"),
        "Training-mode batch norm over (N, C, S), followed by ReLU if relu.");
  m.def("batch_norm_backward", &batch_norm_backward, py::arg("grad_y"),
        py::arg("relu_output").none(true), py::arg("x"),
        py::arg("mean"), py::arg("invstd"), py::arg("weight").none(true),
        py::arg("grad_x").none(true), py::arg("grad_weight"), py::arg("grad_bias"),
        "Gradients of training-mode batch norm (grad_weight/grad_bias written, not added).");
  m.def("relu_forward", &relu_forward, py::arg("x"), py::arg("y"));
  m.def("relu_backward", &relu_backward, py::arg("grad_y"), py::arg("y"), py::arg("grad_x"));
  m.def("gelu_forward", &gelu_forward, py::arg("x"), py::arg("y"), py::arg("tanh_approx"));
  m.def("gelu_backward", &gelu_backward, py::arg("grad_y"), py::arg("x"), py::arg("grad_x"),
        py::arg("tanh_approx"));
  m.def("silu_forward", &silu_forward, py::arg("x"), py::arg("y"));
  m.def("silu_backward", &silu_backward, py::arg("grad_y"), py::arg("x"), py::arg("grad_x"));
  m.def("get_num_threads", [] {
    const int n = g_threads.load();
    return n > 0 ? n : fastconv::max_threads();
  });
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw py::value_error("set_num_threads: n must be >= 1, got " + std::to_string(n));
    if (!fastconv::openmp_enabled()) return;  // single-threaded build: stays 1
    g_threads.store(n);
    fastconv::set_max_threads(n);
  }, py::arg("n"), "Threads of every kernel call from now on, from any Python thread.");
  m.def("openmp_enabled", &fastconv::openmp_enabled);
  m.def("fma_peak_gflops", &fma_peak_gflops, py::arg("seconds"), py::arg("dtype") = "float32",
        "The machine's multiply-add peak in GFLOP/s, measured: the selected SIMD level's FMA "
        "loop on every thread (get_num_threads()) for `seconds`.");
  m.def("gemm_blocks", &gemm_blocks, py::arg("dtype") = "float32",
        "The packed GEMM's register tile (mr, nr) and cache blocks (mc, kc, nc) for dtype at "
        "the selected SIMD level.");
  m.def("set_gemm_blocks", &set_gemm_blocks, py::arg("dtype"), py::arg("mc"), py::arg("kc"),
        py::arg("nc"),
        "Force the selected SIMD level's GEMM cache blocks for dtype (tests/benchmarks); all "
        "zero: back to those derived from the caches. False if invalid (mc, nc multiples of "
        "mr, nr).");
  m.def("cpu_info", &cpu_info_dict,
        "The CPU as read once at start-up: model, features, caches (bytes per core's view).");
  m.def("simd_level", [] { return fastconv::isa_name(fastconv::selected_isa()); });
  m.def("set_conv_algorithm",
        [](const std::string& name) {
          return while_no_kernel_runs([&] { return fastconv::set_conv_algorithm(name); });
        },
        py::arg("name"),
        "'auto', 'wide', 'im2col', 'direct', 'direct_nchw', 'winograd' or 'subsampled' "
        "(tests/benchmarks).");
  m.def("best_simd_level", [] { return fastconv::isa_name(fastconv::best_isa()); });
  m.def("set_simd_level",
        [](const std::string& level) {
          fastconv::Isa isa;
          if (!fastconv::isa_from_name(level, &isa)) return false;
          return while_no_kernel_runs([&] { return fastconv::select_isa(isa); });
        },
        py::arg("level"),
        "Force the micro-kernel ISA (tests/benchmarks); False if unsupported here.");
  m.def("direct_kernel_lanes", [] {
    const fastconv::DirectKernels* k = fastconv::direct_kernels();
    return k ? k->lanes : 0;
  }, "Vector lanes of the direct / Winograd / few-channel conv kernels at this SIMD level (0: none).");
}
