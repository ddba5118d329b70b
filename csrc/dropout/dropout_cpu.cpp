// Dropout on the CPU: dropout_fwd, dropout_fwd_ (in place), dropout_bwd (schemas in
// csrc/ops.cpp).
//
// Algorithm: element (or channel) c is kept iff its Philox4x32-10 word (word c % 4 of
// the counter c / 4, key = the 64-bit seed: csrc/common/philox.h, the NumPy reference
// minitorch_ext/_philox.py) is >= floor(p * 2^32); a kept element is scaled by
// 1/(1-p), a dropped one multiplied by 0 (so a NaN stays NaN, as torch's x * mask).
// channel_size > 1 (dropout1d/2d, torch's feature dropout): the mask index is the
// (n, c) channel index c = i / channel_size, broadcast over the channel's elements.
// Backward is the same map applied to grad_output: the mask is regenerated from
// (seed, index), never stored (torch keeps a float mask of the input's size).
//
// Parallelism: parallel_for over blocks of elements (channels); inside a block the
// words of 2048 consecutive elements are made into an L1 scratch (32 words per AVX2
// Philox call; 256 per AVX-512 call: four groups of 16 counters interleaved to hide the
// multiplies' latency), then one AVX-512 pass computes y = x * (w >= t ? s : 0) in float
// (an unsigned compare -> lane mask -> blend -> multiply; bfloat16 widened in registers
// and rounded once; float64/float16 a scalar loop), with streaming stores when the
// output is larger than 16 MB (no read-for-ownership of y: 1/3 less traffic).
// Memory traffic: read x once, write y once (8 bytes an element for float32), no mask
// tensor; the Philox words live only in L1. torch's CPU dropout writes a float mask
// (bernoulli_), scales it, then multiplies: three passes plus the mask's allocation.
// The trick: a counter-based generator makes the mask a pure function of the index,
// so forward and backward each run as one streaming pass, in any order, on any
// number of threads, with the same bits.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "common/alloc.h"
#include "common/philox.h"

namespace mte {
namespace {

constexpr int64_t kBlock = 2048;  // elements whose words are made at once (8 KB of scratch)

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// the L1 widening buffer of a block: bfloat16 / float16 only
template <typename T>
struct WideBuf {
  static constexpr int64_t n = std::is_same_v<T, acc_t<T>> ? 1 : kBlock;
};

// y[j] = x[j] * (w[j] >= t ? s : 0), j < n (scalar: the tails, float64, float16, non-AVX-512)
template <typename T, typename A>
inline void apply_mask_scalar(const T* x, T* y, const uint32_t* w, int64_t n, uint32_t t, A s) {
  for (int64_t j = 0; j < n; ++j) y[j] = static_cast<T>(static_cast<A>(x[j]) * (w[j] >= t ? s : A(0)));
}

template <typename A>
inline void scale_by(const A* x, A* y, int64_t n, A m) {
  for (int64_t j = 0; j < n; ++j) y[j] = x[j] * m;
}

// The same with AVX-512 for float32 and bfloat16: an unsigned compare of 16 words gives a
// lane mask, the mask blends the scale with 0, one multiply (NaN * 0 stays NaN, as torch).
// NT: streaming stores, for outputs larger than the cache (no read-for-ownership of y).
template <typename T, bool NT>
inline void apply_mask(const T* x, T* y, const uint32_t* w, int64_t n, uint32_t t, acc_t<T> s) {
  int64_t j = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, at::BFloat16>) {
    const __m512i tv = _mm512_set1_epi32(static_cast<int>(t));
    const __m512 sv = _mm512_set1_ps(s), zero = _mm512_setzero_ps();
    for (; j + 16 <= n; j += 16) {
      const __mmask16 k = _mm512_cmpge_epu32_mask(_mm512_loadu_si512(w + j), tv);
      const __m512 m = _mm512_mask_blend_ps(k, zero, sv);
      if constexpr (std::is_same_v<T, float>) {
        const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + j), m);
        if constexpr (NT) _mm512_stream_ps(y + j, v);
        else _mm512_storeu_ps(y + j, v);
      } else {
        __m512 xf;
        at::vec::cvtbf16_fp32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j)), xf);
        const __m256i v = at::vec::cvtfp32_bf16(_mm512_mul_ps(xf, m));
        if constexpr (NT) _mm256_stream_si256(reinterpret_cast<__m256i*>(y + j), v);
        else _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + j), v);
      }
    }
  }
#endif
  apply_mask_scalar<T, acc_t<T>>(x + j, y + j, w + j, n - j, t, s);
}

// The map y = x * keep / (1 - p) on n contiguous elements (y may alias x).
template <typename T>
void dropout_map(const T* x, T* y, int64_t n, double p, uint64_t seed, int64_t cs) {
  using A = acc_t<T>;
  constexpr bool kWide = !std::is_same_v<T, A>;  // bfloat16 / float16: widen into L1
  const bool all = p >= 1.0;
  const uint32_t t = philox_threshold(p);
  const A s = all ? A(0) : static_cast<A>(1.0 / (1.0 - p));
  if (cs == 1) {
    // streaming stores when the output cannot stay in the cache anyway (and y is 64-byte aligned,
    // which every block then is: kBlock * sizeof(T) is a multiple of 64)
    const bool nt = n * static_cast<int64_t>(sizeof(T)) >= (int64_t{16} << 20) &&
                    reinterpret_cast<uintptr_t>(y) % 64 == 0 && static_cast<const void*>(x) != y;
    at::parallel_for(0, (n + kBlock - 1) / kBlock, 16, [&](int64_t b0, int64_t b1) {
      alignas(64) uint32_t scratch[kBlock + 48];
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t i0 = b * kBlock, len = std::min(kBlock, n - i0);
        if (all) {
          for (int64_t j = 0; j < len; ++j) y[i0 + j] = static_cast<T>(static_cast<A>(x[i0 + j]) * A(0));
          continue;
        }
        const uint32_t* w = philox_row(seed, static_cast<uint64_t>(i0), len, scratch);
        if (nt) apply_mask<T, true>(x + i0, y + i0, w, len, t, s);
        else apply_mask<T, false>(x + i0, y + i0, w, len, t, s);
      }
#if defined(__AVX512F__)
      if (nt) _mm_sfence();  // streaming stores are weakly ordered: each thread fences its own
#endif
    });
    return;
  }
  // channel dropout: one word per channel, broadcast over its cs elements
  const int64_t nch = n / cs;
  const int64_t grain = std::max<int64_t>(1, 32768 / cs);
  const bool nt = n * static_cast<int64_t>(sizeof(T)) >= (int64_t{16} << 20) &&
                  reinterpret_cast<uintptr_t>(y) % 64 == 0 && static_cast<const void*>(x) != y;
  at::parallel_for(0, nch, grain, [&](int64_t c0, int64_t c1) {
    alignas(64) uint32_t scratch[kBlock + 48];
    alignas(64) A xb[WideBuf<T>::n];
    for (int64_t cb = c0; cb < c1; cb += kBlock) {
      const int64_t nc = std::min(kBlock, c1 - cb);
      const uint32_t* w = all ? nullptr : philox_row(seed, static_cast<uint64_t>(cb), nc, scratch);
      for (int64_t k = 0; k < nc; ++k) {
        const A m = (w != nullptr && w[k] >= t) ? s : A(0);
        const T* xc = x + (cb + k) * cs;
        T* yc = y + (cb + k) * cs;
        int64_t j = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
        if constexpr (std::is_same_v<T, float> || std::is_same_v<T, at::BFloat16>) {
          const __m512 mv = _mm512_set1_ps(m);
          // streaming stores need 64 (float32) / 32 (bfloat16) byte alignment: a channel start may lack it
          const bool a = nt && reinterpret_cast<uintptr_t>(yc) % (16 * sizeof(T)) == 0;
          for (; j + 16 <= cs; j += 16) {
            if constexpr (std::is_same_v<T, float>) {
              const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(xc + j), mv);
              if (a) _mm512_stream_ps(yc + j, v);
              else _mm512_storeu_ps(yc + j, v);
            } else {
              __m512 xf;
              at::vec::cvtbf16_fp32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xc + j)), xf);
              const __m256i v = at::vec::cvtfp32_bf16(_mm512_mul_ps(xf, mv));
              if (a) _mm256_stream_si256(reinterpret_cast<__m256i*>(yc + j), v);
              else _mm256_storeu_si256(reinterpret_cast<__m256i*>(yc + j), v);
            }
          }
        }
#endif
        if constexpr (kWide) {
          for (; j < cs; j += kBlock) {
            const int64_t len = std::min(kBlock, cs - j);
            at::vec::convert(xc + j, xb, len);
            scale_by(xb, xb, len, m);
            at::vec::convert(xb, yc + j, len);
          }
        } else {
          scale_by(xc + j, yc + j, cs - j, m);
        }
      }
    }
#if defined(__AVX512F__)
    if (nt) _mm_sfence();
#endif
  });
}

void check_args(const at::Tensor& t, const char* name, double p, int64_t channel_size) {
  TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0, "dropout probability has to be between 0 and 1, but got ", p);
  TORCH_CHECK(channel_size >= 1, "channel_size: expected >= 1, got ", channel_size);
  TORCH_CHECK(t.numel() % channel_size == 0, "channel_size: ", channel_size, " does not divide the ", t.numel(),
              " elements of ", name);
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf, name,
              ": expected a floating point tensor (float32, float64, bfloat16 or float16), got ", st);
}

int64_t seed_value(const at::Tensor& seed) {
  TORCH_CHECK(seed.numel() == 1 && seed.scalar_type() == at::kLong,
              "seed: expected a one-element int64 tensor, got ", seed.scalar_type(), " of shape ", seed.sizes());
  return seed.item<int64_t>();
}

void run(const at::Tensor& src, at::Tensor& dst, double p, int64_t seed, int64_t cs) {
  if (src.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, src.scalar_type(), "dropout", [&] {
    dropout_map<scalar_t>(src.const_data_ptr<scalar_t>(), dst.mutable_data_ptr<scalar_t>(), src.numel(), p,
                          static_cast<uint64_t>(seed), cs);
  });
}

at::Tensor dropout_fwd(const at::Tensor& input, double p, const at::Tensor& seed_t, int64_t channel_size) {
  check_args(input, "input", p, channel_size);
  const int64_t seed = seed_value(seed_t);
  const at::Tensor x = input.contiguous();
  at::Tensor y = new_output(x.sizes(), x.options());
  run(x, y, p, seed, channel_size);
  return y;
}

void dropout_fwd_(at::Tensor& input, double p, const at::Tensor& seed_t, int64_t channel_size) {
  check_args(input, "input", p, channel_size);
  const int64_t seed = seed_value(seed_t);
  if (input.is_contiguous()) {
    run(input, input, p, seed, channel_size);
    return;
  }
  at::Tensor x = input.contiguous();
  run(x, x, p, seed, channel_size);
  input.copy_(x);
}

at::Tensor dropout_bwd(const at::Tensor& grad_output, double p, const at::Tensor& seed_t, int64_t channel_size) {
  check_args(grad_output, "grad_output", p, channel_size);
  const int64_t seed = seed_value(seed_t);
  const at::Tensor g = grad_output.contiguous();
  at::Tensor gi = new_output(g.sizes(), g.options());
  run(g, gi, p, seed, channel_size);
  return gi;
}

}  // namespace
}  // namespace mte

TORCH_LIBRARY_IMPL(minitorch_ext, CPU, m) {
  m.impl("dropout_fwd", &mte::dropout_fwd);
  m.impl("dropout_fwd_", &mte::dropout_fwd_);
  m.impl("dropout_bwd", &mte::dropout_bwd);
}
