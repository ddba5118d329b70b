// The CPU's FMA peak, measured: what the bench header reports beside the copy
// ceiling, so every GEMM row can say what fraction of the machine it reaches.
//
// Algorithm: 12 independent FMA chains on at::vec registers (acc = acc*m + a),
// enough to cover the FMA latency on every pipe (AVX2 Zen: 2 pipes x 4-cycle
// latency needs >= 8 chains), no loads or stores in the loop. Run on `threads`
// threads at once (one at::parallel_for task each) for `iters` iterations;
// GFLOP/s = threads * iters * 12 chains * lanes * 2 / wall time.
// bfloat16: this build has no bf16 dot-product instruction path, so its GEMM
// widens to float32 and the bf16 peak is the float32 peak (reported as such).
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <pybind11/pybind11.h>

#include <chrono>
#include <string>

namespace mte {
namespace {

template <typename A>
A fma_chains(int64_t iters) {
  using V = at::vec::Vectorized<A>;
  constexpr int kChains = 12;
  V acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = V(A(1) + A(i) * A(1e-3));
  const V m(A(0.9999999)), a(A(1e-7));
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) acc[i] = at::vec::fmadd(acc[i], m, a);
  }
  V s = acc[0];
  for (int i = 1; i < kChains; ++i) s = s + acc[i];
  A out[V::size()];
  s.store(out);
  return out[0];
}

double fma_peak_gflops(const std::string& dtype, int64_t threads, int64_t iters) {
  TORCH_CHECK(dtype == "float32" || dtype == "float64" || dtype == "bfloat16",
              "fma_peak: dtype must be 'float32', 'float64' or 'bfloat16', got '", dtype, "'");
  TORCH_CHECK(threads >= 1 && iters >= 1, "fma_peak: threads and iters must be >= 1");
  const bool dbl = dtype == "float64";
  const int64_t lanes = dbl ? at::vec::Vectorized<double>::size() : at::vec::Vectorized<float>::size();
  volatile double sink = 0;
  auto run = [&] {
    at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) sink = sink + (dbl ? fma_chains<double>(iters) : fma_chains<float>(iters));
    });
  };
  run();  // warm up (clocks, thread pool)
  const auto t0 = std::chrono::steady_clock::now();
  run();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return double(threads) * double(iters) * 12.0 * double(lanes) * 2.0 / s * 1e-9;
}

}  // namespace

void register_fma_peak(pybind11::module& m) {
  m.def("fma_peak", &fma_peak_gflops, pybind11::arg("dtype") = "float32", pybind11::arg("threads") = 1,
        pybind11::arg("iters") = 20000000,
        "GFLOP/s of an FMA loop on registers over `threads` threads (the CPU's arithmetic peak)");
}

}  // namespace mte
