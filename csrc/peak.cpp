// The FMA peak (see peak.h): each thread runs the loop in calls of kRounds rounds (tens of
// microseconds each) until the deadline; flops over the wall time between two barriers (a
// thread the OS takes away meanwhile lowers the figure, as it would the kernels').
#include "peak.h"

#include <chrono>
#include <vector>

#include "gemm/gemm.h"

namespace fastconv {

template <typename T>
double fma_peak_gflops(double seconds) {
  using Clock = std::chrono::steady_clock;
  const GemmConfig<T>& k = gemm_config<T>();
  constexpr index_t kRounds = 1 << 14;
  const std::chrono::duration<double> warmup(0.02), span(seconds);
  const int threads = max_threads();
  std::vector<double> flops(threads, 0.0);
  Clock::time_point t0, t1;
  // (The loop is reached through a function pointer chosen at run time: no call can be
  // optimised away, whether or not its result is used.)
#pragma omp parallel num_threads(threads)
  {
    for (const auto end = Clock::now() + warmup; Clock::now() < end;) k.fma_loop(kRounds);
#pragma omp barrier
#pragma omp single
    t0 = Clock::now();  // the single's barrier: every thread starts from here
    // At least one call each, even for a thread that was descheduled past the deadline.
    double mine = 0;
    const auto end = t0 + span;
    do {
      k.fma_loop(kRounds);
      mine += double(kRounds) * double(k.fma_flops);
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

template double fma_peak_gflops<float>(double);
template double fma_peak_gflops<double>(double);

}  // namespace fastconv
