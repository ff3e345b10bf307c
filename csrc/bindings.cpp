// Python bindings: glue only. The NumPy-facing checks and shape arithmetic live in
// fastconv/_args.py and fastconv/functional.py; here every array is re-checked for dtype,
// C-contiguity, writability and size, every integer argument and dimension for its range
// and every output size against its window's formula (so a direct call of _core with any
// arguments gives a result or a clear exception), then the GIL is released for the kernel.
// A scratch buffer too large for int64 is a MemoryError (SizeTooLarge, common.h).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "activation/activation.h"
#include "pool/adaptive_pool.h"
#include "norm/batchnorm.h"
#include "block_cache.h"
#include "conv/conv.h"
#include "conv/conv_direct.h"
#include "cpu.h"
#include "gemm/gemm.h"
#include "gemm/gemm_bf16.h"
#include "gemm/gemm_direct.h"
#include "conv/im2col.h"
#include "numpy_recycling.h"
#include "optim/optim.h"
#include "peak.h"
#include "pool/pool.h"
#include "pool/upsample.h"

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
// More threads than any machine runs kernels on well: each takes scratch of its own.
constexpr int kMaxThreads = 1024;
std::atomic<int> g_running{0};
std::atomic<bool> g_switching{false};
// Whether a kernel has run in this process (its OpenMP team may exist), and whether this
// process is a child forked after one had (see after_fork_in_child).
std::atomic<bool> g_kernels_ran{false};
std::atomic<bool> g_forked_after_kernels{false};

// In a child forked after kernels ran: the child has the forking thread alone, and a
// parallel region of more than one thread would wait forever for the parent's OpenMP team,
// which it did not inherit. Its kernels run on one thread; the calls that were running in
// the parent's other threads are not running here.
void after_fork_in_child() {
  g_running.store(0);
  g_switching.store(false);
  if (!g_kernels_ran.load()) return;
  g_forked_after_kernels.store(true);
  g_threads.store(1);
  fastconv::set_max_threads(1);
}

class KernelCall {
 public:
  KernelCall() {
    for (;;) {
      while (g_switching.load()) std::this_thread::yield();
      g_running.fetch_add(1);
      if (!g_switching.load()) break;
      g_running.fetch_sub(1);  // a switch began meanwhile: let it go first
    }
    g_kernels_ran.store(true, std::memory_order_relaxed);
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

// Sizes and window arguments lie in [lo, 2^31 - 1], as fastconv/_args.py keeps them: the
// product of any two then stays below 2^62, which the kernels' index arithmetic relies on.
constexpr index_t kMaxArg = (index_t(1) << 31) - 1;

index_t arg(index_t v, index_t lo, const char* op, const char* name) {
  if (v < lo || v > kMaxArg)
    throw py::value_error(std::string(op) + ": " + name + " must lie in [" + std::to_string(lo) +
                          ", 2**31 - 1], got " + std::to_string(v));
  return v;
}

index_t dim(const py::array& a, int i, const char* name) {
  if (a.ndim() != 4) throw py::value_error(std::string(name) + " must be 4-D");
  if (a.shape(i) > kMaxArg)
    throw py::value_error(std::string(name) + ": every dimension must be below 2**31, got " +
                          std::to_string(a.shape(i)));
  return a.shape(i);
}

fastconv::Window2d window(index_t kh, index_t kw, index_t sh, index_t sw, index_t ph, index_t pw,
                          index_t dh, index_t dw) {
  const char* op = "window";
  return {arg(kh, 1, op, "kernel_h"), arg(kw, 1, op, "kernel_w"), arg(sh, 1, op, "stride_h"),
          arg(sw, 1, op, "stride_w"), arg(ph, 0, op, "pad_h"),    arg(pw, 0, op, "pad_w"),
          arg(dh, 1, op, "dilation_h"), arg(dw, 1, op, "dilation_w")};
}

// Outputs of a window along one axis of `size` with `pad_total` padding in all
// (fastconv/_args.py's conv_output_size; arguments in range: no overflow), 0 where none fits.
index_t window_outputs(index_t size, index_t k, index_t s, index_t pad_total, index_t d) {
  const index_t span = size + pad_total - d * (k - 1) - 1;
  return span < 0 ? 0 : span / s + 1;
}

// A convolution's output rows: those of padding PH above and PH or PH + 1 below (conv2d's
// 'same' puts an odd extra row at the bottom), at least one.
bool conv_outputs_ok(index_t out, index_t size, index_t k, index_t s, index_t p, index_t d) {
  return out >= 1 && (out == window_outputs(size, k, s, 2 * p, d) ||
                      out == window_outputs(size, k, s, 2 * p + 1, d));
}

void check_conv_outputs(const fastconv::ConvShape& s, const char* op) {
  const fastconv::Window2d& w = s.win;
  if (!conv_outputs_ok(s.OH, s.H, w.KH, w.SH, w.PH, w.DH) ||
      !conv_outputs_ok(s.OW, s.W, w.KW, w.SW, w.PW, w.DW))
    throw py::value_error(std::string(op) + ": output size " + std::to_string(s.OH) + "x" +
                          std::to_string(s.OW) + " does not match the input " +
                          std::to_string(s.H) + "x" + std::to_string(s.W) + " and the window");
}

// A pooling's output rows: floor or ceil mode (a last window starting in the bottom padding
// dropped, as PyTorch), with padding at most half the kernel, as max_pool2d and avg_pool2d.
bool pool_outputs_ok(index_t out, index_t size, index_t k, index_t s, index_t p, index_t d) {
  if (p > k / 2) return false;
  const index_t floor_out = window_outputs(size, k, s, 2 * p, d);
  index_t ceil_out = window_outputs(size, k, s, 2 * p + s - 1, d);
  if (ceil_out > 0 && (ceil_out - 1) * s >= size + p) --ceil_out;
  return out >= 1 && (out == floor_out || out == ceil_out);
}

void check_pool_outputs(const fastconv::PoolShape& s, const char* op) {
  const fastconv::Window2d& w = s.win;
  if (!pool_outputs_ok(s.OH, s.H, w.KH, w.SH, w.PH, w.DH) ||
      !pool_outputs_ok(s.OW, s.W, w.KW, w.SW, w.PW, w.DW))
    throw py::value_error(std::string(op) + ": output size " + std::to_string(s.OH) + "x" +
                          std::to_string(s.OW) + " does not match the input " +
                          std::to_string(s.H) + "x" + std::to_string(s.W) +
                          " and the window (or the padding exceeds half the kernel)");
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

// The Precision named `name` ("f32" or "bf16") for arrays of dtype d: bf16 only for float32.
fastconv::Precision precision_arg(const std::string& name, const py::dtype& d, const char* op) {
  fastconv::Precision p;
  if (!fastconv::precision_from_name(name, &p))
    throw py::value_error(std::string(op) + ": precision must be 'f32' or 'bf16', got '" + name +
                          "'");
  if (p == fastconv::Precision::bf16 && !has_dtype<float>(d))
    throw py::type_error(std::string(op) + ": precision 'bf16' needs float32 arrays, got " +
                         std::string(py::str(d)));
  return p;
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
  check_conv_outputs(s, "conv2d");
  return s;
}

template <typename T>
void conv_forward_t(const py::array& x, const py::array& w, const py::object& bias, py::array& y,
                    const fastconv::ConvShape& s) {
  const T* xp = data_of<T>(x, "x", s.N * s.C * s.H * s.W, false);
  const T* wp = data_of<T>(w, "weight", s.F * s.CKK(), false);
  const T* bp = bias.is_none() ? nullptr : data_of<T>(bias.cast<py::array>(), "bias", s.F, false);
  T* yp = data_of<T>(y, "y", s.N * s.F * s.L(), true);
  if (y.size() == 0) return;
  KernelCall call;
  fastconv::conv2d_forward<T>(s, xp, wp, bp, yp);
}

void conv2d_forward(const py::array& x, const py::array& w, const py::object& bias, py::array y,
                    index_t sh, index_t sw, index_t ph, index_t pw, index_t dh, index_t dw,
                    index_t groups, const std::string& precision) {
  const auto win = window(dim(w, 2, "weight"), dim(w, 3, "weight"), sh, sw, ph, pw, dh, dw);
  auto s = conv_shape(x, w, y, groups, win);
  s.precision = precision_arg(precision, x.dtype(), "conv2d_forward");
  for_dtype(x, "x", [&](auto t) { conv_forward_t<decltype(t)>(x, w, bias, y, s); });
}

template <typename T>
void conv_backward_input_t(const py::array& gy, const py::array& w, py::array& gx,
                           const fastconv::ConvShape& s) {
  const T* gyp = data_of<T>(gy, "grad_y", s.N * s.F * s.L(), false);
  const T* wp = data_of<T>(w, "weight", s.F * s.CKK(), false);
  T* gxp = data_of<T>(gx, "grad_x", s.N * s.C * s.H * s.W, true);
  if (gx.size() == 0) return;
  KernelCall call;
  fastconv::conv2d_backward_input<T>(s, gyp, wp, gxp);
}

void conv2d_backward_input(const py::array& gy, const py::array& w, py::array gx, index_t sh,
                           index_t sw, index_t ph, index_t pw, index_t dh, index_t dw,
                           index_t groups, const std::string& precision) {
  const auto win = window(dim(w, 2, "weight"), dim(w, 3, "weight"), sh, sw, ph, pw, dh, dw);
  auto s = conv_shape(gx, w, gy, groups, win);
  s.precision = precision_arg(precision, gy.dtype(), "conv2d_backward_input");
  for_dtype(gy, "grad_y", [&](auto t) { conv_backward_input_t<decltype(t)>(gy, w, gx, s); });
}

template <typename T>
void conv_backward_weight_t(const py::array& gy, const py::array& x, py::array& gw,
                            const fastconv::ConvShape& s) {
  const T* gyp = data_of<T>(gy, "grad_y", s.N * s.F * s.L(), false);
  const T* xp = data_of<T>(x, "x", s.N * s.C * s.H * s.W, false);
  T* gwp = data_of<T>(gw, "grad_weight", s.F * s.CKK(), true);
  if (gw.size() == 0) return;
  KernelCall call;
  fastconv::conv2d_backward_weight<T>(s, gyp, xp, gwp);
}

void conv2d_backward_weight(const py::array& gy, const py::array& x, py::array gw, index_t sh,
                            index_t sw, index_t ph, index_t pw, index_t dh, index_t dw,
                            index_t groups, const std::string& precision) {
  const auto win = window(dim(gw, 2, "grad_weight"), dim(gw, 3, "grad_weight"), sh, sw, ph, pw,
                          dh, dw);
  auto s = conv_shape(x, gw, gy, groups, win);
  s.precision = precision_arg(precision, gy.dtype(), "conv2d_backward_weight");
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
  if (P == 0) return true;  // nothing to write
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
  for (int i = 0; i < 4; ++i) {
    arg(x[i], 0, op, "input_shape's dimensions");
    arg(w[i], 0, op, "weight_shape's dimensions");
  }
  const fastconv::ConvShape s{x[0], x[1], x[2], x[3], w[0], groups, oh, ow, win};
  if (groups < 1 || s.C % groups || s.F % groups || w[1] != s.C / groups)
    throw py::value_error(std::string(op) + ": inconsistent shapes");
  check_conv_outputs(s, op);
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
                           index_t dh, index_t dw, index_t groups, const std::string& precision) {
  fastconv::ConvPass p;
  if (pass == "forward") p = fastconv::ConvPass::forward;
  else if (pass == "backward_input") p = fastconv::ConvPass::backward_input;
  else if (pass == "backward_weight") p = fastconv::ConvPass::backward_weight;
  else
    throw py::value_error("conv_algorithm: pass_ must be 'forward', 'backward_input' or "
                          "'backward_weight', got '" + pass + "'");
  auto s = checked_conv_shape(x, w, oh, ow, sh, sw, ph, pw, dh, dw, groups, "conv_algorithm");
  s.precision = precision_arg(precision, py::dtype::from_args(dtype), "conv_algorithm");
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
                             index_t pool_dh, index_t pool_dw, bool relu,
                             const std::string& precision) {
  auto s = conv_shape_sized(x, w, "weight", oh, ow, sh, sw, ph, pw, dh, dw, groups,
                            "conv2d_forward_max_pool");
  s.precision = precision_arg(precision, x.dtype(), "conv2d_forward_max_pool");
  const fastconv::PoolShape ps{s.N, s.F, oh, ow, dim(y, 2, "y"), dim(y, 3, "y"),
                               window(pool_kh, pool_kw, pool_sh, pool_sw, pool_ph, pool_pw,
                                      pool_dh, pool_dw)};
  if (dim(y, 0, "y") != s.N || dim(y, 1, "y") != s.F)
    throw py::value_error("conv2d_forward_max_pool: y must be (N, F, PH, PW)");
  check_pool_outputs(ps, "conv2d_forward_max_pool");
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
                                             index_t pw, index_t dh, index_t dw, index_t groups,
                                             const std::string& precision) {
  auto s = conv_shape_sized(x, gw, "grad_weight", oh, ow, sh, sw, ph, pw, dh, dw, groups,
                            "conv2d_backward_weight_through_max_pool");
  s.precision = precision_arg(precision, gp.dtype(), "conv2d_backward_weight_through_max_pool");
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
  if (s.OH < 1 || s.OW < 1)
    throw py::value_error("conv2d_backward_bias: grad_y must have non-empty planes");
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
  if (OH != window_outputs(H, win.KH, win.SH, 2 * win.PH, win.DH) || OH < 1 ||
      OW != window_outputs(W, win.KW, win.SW, 2 * win.PW, win.DW) || OW < 1)
    throw py::value_error(std::string(to_cols ? "im2col" : "col2im") + ": out_h x out_w " +
                          std::to_string(OH) + "x" + std::to_string(OW) +
                          " does not match the image " + std::to_string(H) + "x" +
                          std::to_string(W) + " and the window");
  const index_t rows = fastconv::checked_mul(C, win.KH, win.KW);
  const index_t L = fastconv::checked_mul(OH, OW);
  T* ip = data_of<T>(image, "image", N * C * H * W, !to_cols);
  T* cp = data_of<T>(cols, "cols", fastconv::checked_mul(N, rows, L), to_cols);
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
  check_pool_outputs(s, "pool2d");
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
                index_t divisor_override, const fastconv::PoolShape& s) {
  T* xp = data_of<T>(x, forward ? "x" : "grad_x", s.N * s.C * s.H * s.W, !forward);
  T* yp = data_of<T>(y, forward ? "y" : "grad_y", s.N * s.C * s.OH * s.OW, forward);
  KernelCall call;
  if (forward) fastconv::avg_pool2d_forward<T>(s, count_include_pad, xp, yp, divisor_override);
  else fastconv::avg_pool2d_backward<T>(s, count_include_pad, yp, xp, divisor_override);
}

void avg_pool2d_forward(const py::array& x, py::array y, index_t kh, index_t kw, index_t sh,
                        index_t sw, index_t ph, index_t pw, bool count_include_pad,
                        index_t divisor_override) {
  const auto s = pool_shape(x, y, window(kh, kw, sh, sw, ph, pw, 1, 1));
  for_dtype(x, "x", [&](auto t) {
    avg_pool_t<decltype(t)>(x, y, true, count_include_pad, divisor_override, s);
  });
}

void avg_pool2d_backward(const py::array& gy, py::array gx, index_t kh, index_t kw, index_t sh,
                         index_t sw, index_t ph, index_t pw, bool count_include_pad,
                         index_t divisor_override) {
  const auto s = pool_shape(gx, gy, window(kh, kw, sh, sw, ph, pw, 1, 1));
  for_dtype(gy, "grad_y", [&](auto t) {
    avg_pool_t<decltype(t)>(gx, gy, false, count_include_pad, divisor_override, s);
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
  if (s.planes == 0) return;  // (the window tables have OH, OW entries: none needed)
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
  if (s.planes == 0) return;  // (the backward's row table has H entries: none needed)
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
            bool accumulate, fastconv::Precision precision) {
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
  if constexpr (std::is_same_v<T, float>) {
    if (precision == fastconv::Precision::bf16) {
      const fastconv::StridedA<float> as(ap, trans_a ? 1 : lda, trans_a ? lda : 1);
      fastconv::gemm_bf16_parallel(M, N, K, fastconv::Bf16FromF32A(as),
                                   fastconv::StridedB<float>(bp, trans_b ? 1 : ldb,
                                                             trans_b ? ldb : 1),
                                   cp, N, accumulate);
      return;
    }
  }
  if (!trans_a && trans_b) {
    if (fastconv::gemm_abt_dot<T>(M, N, K, ap, lda, bp, ldb, cp, N, accumulate)) return;
    if constexpr (std::is_same_v<T, float>)
      if (fastconv::gemm_abt_direct(M, N, K, ap, lda, bp, ldb, cp, N, accumulate)) return;
  }
  fastconv::gemm_parallel<T>(M, N, K, ap, trans_a ? 1 : lda, trans_a ? lda : 1, bp,
                             trans_b ? 1 : ldb, trans_b ? ldb : 1, cp, N, accumulate);
}

void gemm(const py::array& a, const py::array& b, py::array c, bool trans_a, bool trans_b,
          bool accumulate, const std::string& precision) {
  const fastconv::Precision p = precision_arg(precision, a.dtype(), "gemm");
  for_dtype(a, "a", [&](auto t) {
    gemm_t<decltype(t)>(a, b, c, trans_a, trans_b, accumulate, p);
  });
}

// ---- bf16 ------------------------------------------------------------------------------

void round_to_bf16_array(const py::array& x, py::array y) {
  const float* xp = data_of<float>(x, "x", x.size(), false);
  float* yp = data_of<float>(y, "y", x.size(), true);
  KernelCall call;
  fastconv::round_to_bf16(xp, x.size(), yp);
}

py::dict bf16_paths() {
  py::dict d;
  for (int i = 0; i < fastconv::kBf16PathCount; ++i) {
    const auto path = static_cast<fastconv::Bf16Path>(i);
    const char* why = fastconv::bf16_path_unavailable_reason(path);
    d[fastconv::bf16_path_name(path)] = why ? py::object(py::str(why)) : py::object(py::none());
  }
  return d;
}

bool set_bf16_path(const std::string& name) {
  if (name == "auto")
    return while_no_kernel_runs([] {
      fastconv::select_best_bf16_path();
      return true;
    });
  fastconv::Bf16Path path;
  if (!fastconv::bf16_path_from_name(name, &path))
    throw py::value_error("set_bf16_path: unknown path '" + name + "'");
  return while_no_kernel_runs([&] { return fastconv::select_bf16_path(path); });
}

py::dict bf16_gemm_blocks() {
  const fastconv::Bf16GemmConfig& c = fastconv::bf16_gemm_config();
  py::dict d;
  d["path"] = fastconv::bf16_path_name(c.path);
  d["mr"] = c.mr;
  d["nr"] = c.nr;
  d["k_group"] = c.k_group;
  d["elem_bytes"] = c.elem_bytes;
  d["mc"] = c.mc;
  d["kc"] = c.kc;
  d["nc"] = c.nc;
  return d;
}

bool set_bf16_gemm_blocks(index_t mc, index_t kc, index_t nc) {
  return while_no_kernel_runs([&] { return fastconv::set_bf16_gemm_blocks(mc, kc, nc); });
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

// Statistics need at least one value per channel (the kernels' per-row tables then have no
// more entries than x has values).
void check_bn_values(index_t N, index_t C, index_t S, const char* op) {
  if (C > 0 && N * S == 0)
    throw py::value_error(std::string(op) + ": x of shape (" + std::to_string(N) + ", " +
                          std::to_string(C) + ", " + std::to_string(S) +
                          ") has no values per channel");
}

template <typename T>
void bn_forward_t(const py::array& x, const py::object& gamma, const py::object& beta, double eps,
                  bool relu, py::array& y, py::array& mean, py::array& invstd, py::array& var) {
  if (x.ndim() != 3) throw py::value_error("batch_norm_forward: x must be 3-D (N, C, S)");
  const index_t N = x.shape(0), C = x.shape(1), S = x.shape(2);
  check_bn_values(N, C, S, "batch_norm_forward");
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
  check_bn_values(N, C, S, "batch_norm_backward");
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

double bf16_peak_gflops(double seconds) {
  if (!(seconds > 0 && seconds <= 60))
    throw py::value_error("bf16_peak_gflops: seconds must be in (0, 60], got " +
                          std::to_string(seconds));
  fastconv::Bf16Path path;
  double gflops;
  {
    KernelCall call;  // (no path switch meanwhile)
    path = fastconv::selected_bf16_path();
    gflops = fastconv::bf16_peak_gflops(seconds);
  }
  if (gflops == 0.0)
    throw py::value_error(std::string("bf16_peak_gflops: bf16 path '") +
                          fastconv::bf16_path_name(path) +
                          "' has no bf16 instruction to time (emulated: float32's peak, "
                          "fma_peak_gflops; twins: portable C++)");
  return gflops;
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

// A new reference from the numpy_recycling functions as an object (nullptr: their Python error).
py::object steal_or_throw(PyObject* o) {
  if (!o) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(o);
}

py::dict block_cache_stats() {
  const fastconv::block_cache::Stats s = fastconv::block_cache::stats();
  py::dict d;
  d["in_use_bytes"] = s.in_use_bytes;
  d["cached_bytes"] = s.cached_bytes;
  d["cached_blocks"] = s.cached_blocks;
  d["bound_bytes"] = s.bound_bytes;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  return d;
}

// Tests' stress run of the block cache from `threads` threads at once, without the GIL: each
// thread allocates `rounds` blocks of sizes drawn from `sizes` (keeping up to 8 alive), checks
// each is 64-byte aligned and at least as large as asked (its capacity), stamps its first and
// last bytes and checks the stamps are intact when it releases it. Returns the failed checks.
std::size_t block_cache_exercise(int threads, int rounds, const std::vector<std::size_t>& sizes,
                                 std::uint64_t seed) {
  if (threads < 1 || rounds < 0 || sizes.empty())
    throw py::value_error("block_cache_exercise: threads >= 1, rounds >= 0, sizes not empty");
  py::gil_scoped_release release;
  std::atomic<std::size_t> failures{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      struct Live {
        unsigned char* p;
        std::size_t bytes;
        unsigned char stamp;
      };
      std::vector<Live> live;
      std::uint64_t state = seed * 0x9E3779B97F4A7C15ull + std::uint64_t(t) + 1;
      auto next = [&] {  // xorshift64
        state ^= state << 13, state ^= state >> 7, state ^= state << 17;
        return state;
      };
      auto drop = [&](const Live& b) {
        if (b.bytes && (b.p[0] != b.stamp || b.p[b.bytes - 1] != b.stamp)) ++failures;
        fastconv::block_cache::release(b.p);
      };
      for (int r = 0; r < rounds; ++r) {
        const std::size_t bytes = sizes[next() % sizes.size()];
        auto* p = static_cast<unsigned char*>(fastconv::block_cache::allocate(bytes));
        if (!p || reinterpret_cast<std::uintptr_t>(p) % fastconv::block_cache::kAlignment ||
            fastconv::block_cache::capacity(p) < bytes) {
          ++failures;
          fastconv::block_cache::release(p);
          continue;
        }
        const auto stamp = static_cast<unsigned char>(next());
        if (bytes) p[0] = p[bytes - 1] = stamp;
        live.push_back(Live{p, bytes, stamp});
        if (live.size() > 8) {
          const std::size_t victim = next() % live.size();
          drop(live[victim]);
          live[victim] = live.back();
          live.pop_back();
        }
      }
      for (const Live& b : live) drop(b);
    });
  }
  for (std::thread& th : pool) th.join();
  return failures.load();
}

}  // namespace

PYBIND11_MODULE(_core, m) {
#if defined(__unix__) || defined(__APPLE__)
  pthread_atfork(nullptr, nullptr, &after_fork_in_child);
#endif
  m.doc() = "fastconv compiled kernels (internal: use fastconv.functional)";
  m.def("conv2d_forward", &conv2d_forward, py::arg("x"), py::arg("weight"), py::arg("bias").none(true),
        py::arg("y"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"),
        py::arg("dilation_h"), py::arg("dilation_w"), py::arg("groups"),
        py::arg("precision") = "f32");
  m.def("conv2d_backward_input", &conv2d_backward_input, py::arg("grad_y"), py::arg("weight"),
        py::arg("grad_x"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"),
        py::arg("pad_w"), py::arg("dilation_h"), py::arg("dilation_w"), py::arg("groups"),
        py::arg("precision") = "f32");
  m.def("conv2d_backward_weight", &conv2d_backward_weight, py::arg("grad_y"), py::arg("x"),
        py::arg("grad_weight"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"),
        py::arg("pad_w"), py::arg("dilation_h"), py::arg("dilation_w"), py::arg("groups"),
        py::arg("precision") = "f32");
  m.def("conv2d_backward_bias", &conv2d_backward_bias, py::arg("grad_y"), py::arg("grad_bias"));
  m.def("conv2d_forward_max_pool", &conv2d_forward_max_pool, py::arg("x"), py::arg("weight"),
        py::arg("bias").none(true), py::arg("y"), py::arg("indices"), py::arg("out_h"),
        py::arg("out_w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"),
        py::arg("pad_w"), py::arg("dilation_h"), py::arg("dilation_w"), py::arg("groups"),
        py::arg("pool_kernel_h"), py::arg("pool_kernel_w"), py::arg("pool_stride_h"),
        py::arg("pool_stride_w"), py::arg("pool_pad_h"), py::arg("pool_pad_w"),
        py::arg("pool_dilation_h"), py::arg("pool_dilation_w"), py::arg("relu"),
        py::arg("precision") = "f32",
        "Returns False, having done nothing, where the fused kernels do not apply.");
  m.def("conv2d_backward_weight_through_max_pool", &conv2d_backward_weight_through_max_pool,
        py::arg("grad_pooled"), py::arg("indices"), py::arg("relu_output").none(true),
        py::arg("x"), py::arg("grad_weight"), py::arg("grad_bias").none(true), py::arg("out_h"),
        py::arg("out_w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"),
        py::arg("pad_w"), py::arg("dilation_h"), py::arg("dilation_w"), py::arg("groups"),
        py::arg("precision") = "f32",
        "Returns False if a pooling index lies outside its plane.");
  m.def("conv_algorithm", &conv_algorithm, py::arg("pass_"), py::arg("dtype"),
        py::arg("input_shape"), py::arg("weight_shape"), py::arg("out_h"), py::arg("out_w"),
        py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"),
        py::arg("dilation_h"), py::arg("dilation_w"), py::arg("groups"),
        py::arg("precision") = "f32",
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
        py::arg("pad_w"), py::arg("count_include_pad"), py::arg("divisor_override") = 0,
        "divisor_override: 0 for the window's own divisor, else every sum divided by it.");
  m.def("avg_pool2d_backward", &avg_pool2d_backward, py::arg("grad_y"), py::arg("grad_x"),
        py::arg("kernel_h"), py::arg("kernel_w"), py::arg("stride_h"), py::arg("stride_w"),
        py::arg("pad_h"), py::arg("pad_w"), py::arg("count_include_pad"),
        py::arg("divisor_override") = 0);
  m.def("adaptive_avg_pool2d_forward", &adaptive_avg_pool2d_forward, py::arg("x"), py::arg("y"));
  m.def("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward, py::arg("grad_y"),
        py::arg("grad_x"));
  m.def("upsample_nearest2d_forward", &upsample_nearest2d_forward, py::arg("x"), py::arg("y"),
        py::arg("rows"), py::arg("cols"),
        "y[..., i, j] = x[..., rows[i], cols[j]] (rows, cols: non-decreasing int64 maps).");
  m.def("upsample_nearest2d_backward", &upsample_nearest2d_backward, py::arg("grad_y"),
        py::arg("grad_x"), py::arg("rows"), py::arg("cols"));
  m.def("gemm", &gemm, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("trans_a") = false,
        py::arg("trans_b") = false, py::arg("accumulate") = false, py::arg("precision") = "f32",
        "c (+)= op(a) @ op(b) with the packed GEMM (threads over blocks of c); precision "
        "'bf16' (float32): a and b rounded to bfloat16, the bf16 GEMM.");
  m.def("round_to_bf16", &round_to_bf16_array, py::arg("x"), py::arg("y"),
        "y = x rounded to the nearest bfloat16 (float32 arrays of one size; y may be x).");
  m.def("bf16_path", [] { return fastconv::bf16_path_name(fastconv::selected_bf16_path()); },
        "The bf16 GEMM path in use: 'amx', 'avx512_bf16', 'emulated' (or a forced twin).");
  m.def("best_bf16_path", [] { return fastconv::bf16_path_name(fastconv::best_bf16_path()); });
  m.def("bf16_paths", &bf16_paths,
        "Every bf16 path: None where it runs here, else why not (e.g. 'CPU lacks avx512_bf16').");
  m.def("set_bf16_path", &set_bf16_path, py::arg("path"),
        "Force a bf16 path ('auto': the best) for tests/benchmarks; False if it cannot run here.");
  m.def("bf16_gemm_blocks", &bf16_gemm_blocks,
        "The bf16 GEMM's path, register tile (mr, nr), k group, element bytes and blocks.");
  m.def("set_bf16_gemm_blocks", &set_bf16_gemm_blocks, py::arg("mc"), py::arg("kc"),
        py::arg("nc"),
        "Force the selected bf16 path's blocks (tests); all zero: back to the derived ones. "
        "False if invalid.");
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
    if (n < 1 || n > kMaxThreads)
      throw py::value_error("set_num_threads: n must be >= 1 and <= " +
                            std::to_string(kMaxThreads) + ", got " + std::to_string(n));
    if (!fastconv::openmp_enabled()) return;  // single-threaded build: stays 1
    if (g_forked_after_kernels.load()) return;  // stays 1 (see after_fork_in_child)
    g_threads.store(n);
    fastconv::set_max_threads(n);
  }, py::arg("n"), "Threads of every kernel call from now on, from any Python thread.");
  m.def("forked_after_kernels", [] { return g_forked_after_kernels.load(); },
        "Whether this process was forked after kernels ran in its parent: its kernels then "
        "run on one thread.");
  m.def("openmp_enabled", &fastconv::openmp_enabled);
  m.def("fma_peak_gflops", &fma_peak_gflops, py::arg("seconds"), py::arg("dtype") = "float32",
        "The machine's multiply-add peak in GFLOP/s, measured: the selected SIMD level's FMA "
        "loop on every thread (get_num_threads()) for `seconds`.");
  m.def("bf16_peak_gflops", &bf16_peak_gflops, py::arg("seconds"),
        "The bf16 peak in GFLOP/s (a product and its add count 2), measured: the selected bf16 "
        "path's instruction (vdpbf16ps, tdpbf16ps) on every thread for `seconds`; ValueError "
        "on a path without one.");
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
        "'auto', 'wide', 'im2col', 'direct', 'direct_nchw', 'winograd', 'winograd4' or "
        "'subsampled' "
        "(tests/benchmarks).");
  m.def("conv_algorithms", &fastconv::conv_algorithm_names,
        "The conv dispatch table's algorithms, in the order it tries them.");
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
  m.def("numpy_recycling_handler",
        [] { return steal_or_throw(fastconv::numpy_recycling_handler()); },
        "The NumPy data-memory handler (a 'mem_handler' capsule) over the block cache "
        "(fastconv.memory.recycling installs it).");
  m.def("set_numpy_handler",
        [](py::object handler) {
          return steal_or_throw(fastconv::numpy_set_handler(handler.is_none() ? nullptr
                                                                              : handler.ptr()));
        },
        py::arg("handler").none(true),
        "Make handler (a 'mem_handler' capsule; None: NumPy's default) NumPy's handler for new "
        "arrays in the current context; returns the previous one.");
  m.def("block_cache_stats", &block_cache_stats,
        "The block cache's counters: in_use_bytes, cached_bytes, cached_blocks, bound_bytes, "
        "hits, misses.");
  m.def("block_cache_release", &fastconv::block_cache::release_cached,
        "Free every cached (not in use) block of the block cache; returns the bytes freed.");
  m.def("block_cache_exercise", &block_cache_exercise, py::arg("threads"), py::arg("rounds"),
        py::arg("sizes"), py::arg("seed") = 0,
        "Stress the block cache from several threads (tests); returns the failed checks.");
}
