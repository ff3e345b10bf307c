// The FMA and bf16 dot-product peaks (see peak.h): each thread runs the loop in calls of
// kRounds rounds (tens of microseconds each) until the deadline; flops over the wall time
// between two barriers (a thread the OS takes away meanwhile lowers the figure, as it would
// the kernels').
#include "peak.h"

#include <chrono>
#include <vector>

#include "gemm/gemm.h"
#include "gemm/gemm_bf16.h"

namespace fastconv {

namespace {

// GFLOP/s of loop(kRounds) (flops_per_round each round) on every thread for `seconds`.
double peak_gflops(double seconds, double (*loop)(index_t), index_t flops_per_round) {
  using Clock = std::chrono::steady_clock;
  constexpr index_t kRounds = 1 << 14;
  const std::chrono::duration<double> warmup(0.02), span(seconds);
  const int threads = max_threads();
  std::vector<double> flops(threads, 0.0);
  Clock::time_point t0, t1;
  // (The loop is reached through a function pointer chosen at run time: no call can be
  // optimised away, whether or not its result is used.)
#pragma omp parallel num_threads(threads)
  {
    for (const auto end = Clock::now() + warmup; Clock::now() < end;) loop(kRounds);
#pragma omp barrier
#pragma omp single
    t0 = Clock::now();  // the single's barrier: every thread starts from here
    // At least one call each, even for a thread that was descheduled past the deadline.
    double mine = 0;
    const auto end = t0 + span;
    do {
      loop(kRounds);
      mine += double(kRounds) * double(flops_per_round);
    } while (Clock::now() < end);
    flops[thread_id()] = mine;
#pragma omp barrier
#pragma omp single
    t1 = Clock::now();
  }
  double total = 0;
  for (double f : flops) total += f;
  return total / std::chrono::duration<double>(t1 - t0).count() / 1e9;
}

}  // namespace

template <typename T>
double fma_peak_gflops(double seconds) {
  const GemmConfig<T>& k = gemm_config<T>();
  return peak_gflops(seconds, k.fma_loop, k.fma_flops);
}

double bf16_peak_gflops(double seconds) {
  const Bf16GemmConfig& k = bf16_gemm_config();
  return k.peak_loop ? peak_gflops(seconds, k.peak_loop, k.peak_flops) : 0.0;
}

template double fma_peak_gflops<float>(double);
template double fma_peak_gflops<double>(double);

}  // namespace fastconv
