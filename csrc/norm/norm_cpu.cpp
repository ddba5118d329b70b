// Row-wise normalization on the CPU: LayerNorm and RMSNorm, forward and backward.
//
// Algorithm. The input is viewed as M rows of N elements; rows are split over
// threads with at::parallel_for. One templated row routine serves both norms
// (kCenter = true: LayerNorm subtracts the mean; false: RMSNorm does not).
//   forward, per row:  mean = sum(x)/N                      (LayerNorm only)
//                      rstd = 1/sqrt(sum((x-mean)^2)/N + eps)
//                      y    = (x-mean)*rstd*w + b
//   backward, per row: xhat = (x-mean)*rstd, g = dy*w
//                      c1 = sum(g*xhat)/N, c2 = sum(g)/N    (c2: LayerNorm only)
//                      dx = rstd*(g - xhat*c1 - c2)
//                      dw += dy*xhat, db += dy              (per-block partials)
// Memory traffic. Forward reads x once from DRAM and writes y once; backward
// reads dy and x once and writes dx once (the minimum: 2 and 3 row-passes).
// The trick. A row (4 KB at N=1024) stays in L1/L2 between the passes of its
// row routine, so the second and third passes cost cache bandwidth, not DRAM:
// the two-pass variance is as cheap as the inaccurate one-pass sum of squares.
// dweight/dbias are accumulated per block of rows into a private partial
// buffer (no atomics, no false sharing), blocks fixed by M alone, then summed
// over blocks in a fixed order: the result is bitwise reproducible whatever
// the thread count. All arithmetic is in float (double for float64) on
// at::vec::Vectorized lanes with 4 independent accumulators; bfloat16/float16
// rows are widened into a per-thread float scratch row once and narrowed once.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif
#include <vector>

#include "common/vec_reduce.h"
#include "common/alloc.h"
#include "common/checks.h"

namespace mte {
namespace {

using at::vec::Vectorized;

// ---- small vector helpers on acc_t rows (float or double) ------------------
//
// A row is walked as full vectors, then at most one masked tail vector. The
// callbacks get (i, count): for full vectors count is a compile-time constant
// (std::integral_constant), so the body has no per-load branch; for the tail
// it is an int64_t and loads pad with zeros.

template <typename C>
inline constexpr bool is_tail_v = std::is_integral_v<C>;

template <typename acc_t, typename C>
inline Vectorized<acc_t> ldc(const acc_t* p, C count) {
  if constexpr (is_tail_v<C>) return Vectorized<acc_t>::loadu(p, count);
  else return Vectorized<acc_t>::loadu(p);
}

template <typename acc_t, typename C>
inline void stc(const Vectorized<acc_t>& v, acc_t* p, C count) {
  if constexpr (is_tail_v<C>) v.store(p, count); else v.store(p);
}

// f(i, count) for every vector of a row of n elements.
template <typename acc_t, typename F>
inline void for_vecs(int64_t n, F f) {
  constexpr int64_t W = Vectorized<acc_t>::size();
  int64_t i = 0;
  for (; i + W <= n; i += W) f(i, std::integral_constant<int64_t, W>{});
  if (i < n) f(i, n - i);
}

// sum of f(i, count) over a row (f must give 0 in lanes past count), with 4
// independent accumulators: hides the add latency, and the pairwise-like
// summation keeps the float32 rounding error small.
template <typename acc_t, typename F>
inline acc_t reduce_vecs(int64_t n, F f) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  using Full = std::integral_constant<int64_t, W>;
  Vec a0(0), a1(0), a2(0), a3(0);
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    a0 += f(i, Full{});
    a1 += f(i + W, Full{});
    a2 += f(i + 2 * W, Full{});
    a3 += f(i + 3 * W, Full{});
  }
  for (; i + W <= n; i += W) a0 += f(i, Full{});
  if (i < n) a1 += f(i, n - i);
  return hsum((a0 + a1) + (a2 + a3));
}

// Non-temporal ("streaming") store of a full vector to a 64-byte aligned address:
// a large output is written straight to memory, skipping the read-for-ownership
// of each cache line that a normal store costs (a third of the write traffic),
// and without evicting the input rows we are still reading.
template <typename acc_t>
inline void st_stream(const Vectorized<acc_t>& v, acc_t* p) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<acc_t, float>) _mm512_stream_ps(p, v); else _mm512_stream_pd(p, v);
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<acc_t, float>) _mm256_stream_ps(p, v); else _mm256_stream_pd(p, v);
#else
  v.store(p);
#endif
}

inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// Streaming pays only for outputs far larger than the cache, in full aligned vectors.
template <typename scalar_t, typename acc_t>
inline bool use_stream(const scalar_t* out, int64_t M, int64_t N) {
  constexpr int64_t W = Vectorized<acc_t>::size();
  return std::is_same_v<scalar_t, acc_t> && M * N * int64_t(sizeof(scalar_t)) >= (int64_t(8) << 20) &&
         N % W == 0 && reinterpret_cast<uintptr_t>(out) % 64 == 0;
}

// Writes a row of n outputs, f(i, count) giving acc_t vectors: directly for
// float/double (streaming stores when `stream`), and for bfloat16/float16 by
// narrowing two float vectors at a time straight into the output, so the
// result never makes an extra trip through a float scratch row (only the
// tail, under 2 vectors, goes through `scratch`).
template <typename scalar_t, typename acc_t, typename F>
inline void write_row(scalar_t* out, int64_t n, bool stream, acc_t* scratch, F f) {
  constexpr int64_t W = Vectorized<acc_t>::size();
  using Full = std::integral_constant<int64_t, W>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    for_vecs<acc_t>(n, [&](int64_t i, auto c) {
      const Vectorized<acc_t> v = f(i, c);
      if constexpr (!is_tail_v<decltype(c)>) {
        if (stream) { st_stream(v, out + i); return; }
      }
      stc(v, out + i, c);
    });
  } else {
    int64_t i = 0;
    for (; i + 2 * W <= n; i += 2 * W)
      at::vec::convert_from_float<scalar_t>(f(i, Full{}), f(i + W, Full{})).store(out + i);
    if (i < n) {
      for (int64_t j = i; j < n; j += W) {
        if (j + W <= n) f(j, Full{}).store(scratch + j);
        else f(j, n - j).store(scratch + j, n - j);
      }
      at::vec::convert(scratch + i, out + i, n - i);
    }
  }
}

// ---- per-thread scratch for reduced-precision rows --------------------------

// For float/double the kernel reads the tensors directly; for bfloat16/float16
// it widens each input row into float scratch once (outputs: write_row).
template <typename scalar_t>
struct Rows {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  static constexpr bool kDirect = std::is_same_v<scalar_t, acc_t>;
  std::vector<acc_t> a, b, c;
  explicit Rows(int64_t n) {
    if (!kDirect) { a.resize(n); b.resize(n); c.resize(n); }
  }
  const acc_t* in(const scalar_t* p, std::vector<acc_t>& buf, int64_t n) {
    if constexpr (kDirect) return p;
    else { at::vec::convert(p, buf.data(), n); return buf.data(); }
  }
};

// A parameter may have another dtype than the input (float32 weights with a
// bfloat16 input: check_param_dtypes): it is widened from, and its gradient
// narrowed to, its own dtype.
template <typename acc_t>
void to_acc(const at::Tensor& c, acc_t* out, int64_t n) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, c.scalar_type(), "norm_widen", [&] {
    at::vec::convert(c.data_ptr<scalar_t>(), out, n);
  });
}

template <typename acc_t>
void from_acc(const acc_t* in, at::Tensor& out, int64_t n) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "norm_narrow", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) o[i] = static_cast<scalar_t>(in[i]);
  });
}

// weight/bias widened to acc_t once per call (they are read by every row).
template <typename scalar_t, typename acc_t>
std::vector<acc_t> widen(const std::optional<at::Tensor>& t, int64_t n) {
  std::vector<acc_t> v;
  if (!t.has_value() || !t->defined()) return v;
  auto c = t->contiguous();
  v.resize(n);
  to_acc(c, v.data(), n);
  return v;
}

// ---- forward -----------------------------------------------------------------

template <typename scalar_t, bool kCenter>
void norm_fwd_kernel(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                     const std::optional<at::Tensor>& bias, double eps, int64_t M, int64_t N,
                     at::Tensor& y, at::Tensor& mean, at::Tensor& rstd) {
  using R = Rows<scalar_t>;
  using acc_t = typename R::acc_t;
  using Vec = Vectorized<acc_t>;
  const auto w = widen<scalar_t, acc_t>(weight, N);
  const auto b = widen<scalar_t, acc_t>(bias, N);
  const acc_t* wp = w.empty() ? nullptr : w.data();
  const acc_t* bp = b.empty() ? nullptr : b.data();
  const scalar_t* X = x.data_ptr<scalar_t>();
  scalar_t* Y = y.data_ptr<scalar_t>();
  acc_t* MEAN = kCenter ? mean.data_ptr<acc_t>() : nullptr;
  acc_t* RSTD = rstd.data_ptr<acc_t>();
  const acc_t inv_n = acc_t(1) / acc_t(N);
  const bool stream = use_stream<scalar_t, acc_t>(Y, M, N);

  // ~64 KB of input per task keeps scheduling overhead negligible.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(N, 1));
  at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
    R rows(N);
    for (int64_t r = begin; r < end; ++r) {
      const acc_t* xr = rows.in(X + r * N, rows.a, N);
      acc_t mu = 0;
      if constexpr (kCenter) mu = reduce_vecs<acc_t>(N, [&](int64_t i, auto c) { return ldc(xr + i, c); }) * inv_n;
      const Vec vmu(mu);
      const acc_t var = reduce_vecs<acc_t>(N, [&](int64_t i, auto c) {
        Vec d = ldc(xr + i, c) - vmu;
        if constexpr (is_tail_v<decltype(c)>) d = Vec::set(Vec(0), d, c);  // padded lanes: 0, not mu^2
        return d * d;
      }) * inv_n;
      const acc_t rs = acc_t(1) / std::sqrt(var + static_cast<acc_t>(eps));
      const Vec vrs(rs);
      write_row<scalar_t, acc_t>(Y + r * N, N, stream, rows.b.data(), [&](int64_t i, auto c) {
        Vec v = (ldc(xr + i, c) - vmu) * vrs;
        if (wp) v = v * ldc(wp + i, c);
        if (bp) v = v + ldc(bp + i, c);
        return v;
      });
      if constexpr (kCenter) MEAN[r] = mu;
      RSTD[r] = rs;
    }
    if (stream) stream_fence();
  });
}

// ---- backward ----------------------------------------------------------------

// Rows are grouped into nblocks fixed blocks (a function of M only); each block
// owns a partial dweight/dbias row, reduced in block order at the end.
inline int64_t num_blocks(int64_t M) { return std::max<int64_t>(1, std::min<int64_t>(64, M / 16)); }

template <typename scalar_t, bool kCenter>
void norm_bwd_kernel(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                     const at::Tensor& rstd, const std::optional<at::Tensor>& weight, bool want_dw,
                     bool want_db, int64_t M, int64_t N, at::Tensor& dx, at::Tensor& dw,
                     at::Tensor& db) {
  using R = Rows<scalar_t>;
  using acc_t = typename R::acc_t;
  using Vec = Vectorized<acc_t>;
  const auto w = widen<scalar_t, acc_t>(weight, N);
  const acc_t* wp = w.empty() ? nullptr : w.data();
  const scalar_t* DY = dy.data_ptr<scalar_t>();
  const scalar_t* X = x.data_ptr<scalar_t>();
  scalar_t* DX = dx.data_ptr<scalar_t>();
  const acc_t* MEAN = kCenter ? mean.data_ptr<acc_t>() : nullptr;
  const acc_t* RSTD = rstd.data_ptr<acc_t>();
  const acc_t inv_n = acc_t(1) / acc_t(N);
  const bool stream = use_stream<scalar_t, acc_t>(DX, M, N);

  const int64_t nb = num_blocks(M);
  const int64_t rows_per_block = (M + nb - 1) / nb;
  // partial[blk][0..N) = dweight partials, [N..2N) = dbias partials
  const int64_t pw = (want_dw ? N : 0), pb = (want_db ? N : 0);
  std::vector<acc_t> partial(static_cast<size_t>(nb) * (pw + pb), acc_t(0));

  at::parallel_for(0, nb, 1, [&](int64_t blk_begin, int64_t blk_end) {
    R rows(N);
    for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
      acc_t* pdw = partial.data() + blk * (pw + pb);
      acc_t* pdb = pdw + pw;
      const int64_t r_end = std::min(M, (blk + 1) * rows_per_block);
      for (int64_t r = blk * rows_per_block; r < r_end; ++r) {
        const acc_t* xr = rows.in(X + r * N, rows.a, N);
        const acc_t* dyr = rows.in(DY + r * N, rows.b, N);
        const Vec vmu(kCenter ? MEAN[r] : acc_t(0));
        const Vec vrs(RSTD[r]);
        // pass 1: the two row sums, and the dweight/dbias partials
        Vec s1(0), s2(0);
        for_vecs<acc_t>(N, [&](int64_t i, auto c) {
          const Vec xhat = (ldc(xr + i, c) - vmu) * vrs;
          const Vec d = ldc(dyr + i, c);  // zero past the row, so every product is 0 there
          const Vec g = wp ? d * ldc(wp + i, c) : d;
          s1 = at::vec::fmadd(g, xhat, s1);
          if constexpr (kCenter) s2 += g;
          if (pw) stc(at::vec::fmadd(d, xhat, ldc(pdw + i, c)), pdw + i, c);
          if (pb) stc(d + ldc(pdb + i, c), pdb + i, c);
        });
        const acc_t c1 = hsum(s1) * inv_n;
        const acc_t c2 = kCenter ? hsum(s2) * inv_n : acc_t(0);
        // pass 2 (from cache): dx = rstd * (g - xhat*c1 - c2)
        const Vec vc1(c1), vc2(c2);
        write_row<scalar_t, acc_t>(DX + r * N, N, stream, rows.c.data(), [&](int64_t i, auto c) {
          const Vec xhat = (ldc(xr + i, c) - vmu) * vrs;
          const Vec d = ldc(dyr + i, c);
          const Vec g = wp ? d * ldc(wp + i, c) : d;
          Vec v = g - xhat * vc1;
          if constexpr (kCenter) v = v - vc2;
          return v * vrs;
        });
      }
    }
    if (stream) stream_fence();
  });

  // reduce the partials over blocks in fixed order, columns in parallel
  // (dw/db have their parameter's dtype, which may differ from the input's)
  auto reduce = [&](at::Tensor& out, int64_t offset) {
    std::vector<acc_t> sums(N);
    at::parallel_for(0, N, 1024, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        acc_t s = 0;
        for (int64_t blk = 0; blk < nb; ++blk) s += partial[blk * (pw + pb) + offset + c];
        sums[c] = s;
      }
    });
    from_acc(sums.data(), out, N);
  };
  if (want_dw) reduce(dw, 0);
  if (want_db) reduce(db, pw);
}

// ---- op entry points -----------------------------------------------------------

bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// kCenter (LayerNorm): parameters of the input's dtype, or float32 with a
// reduced-precision input; RMSNorm: any floating dtype (both as torch).
template <bool kCenter>
void check_fwd(const at::Tensor& input, at::IntArrayRef ns, const std::optional<at::Tensor>& weight,
               const std::optional<at::Tensor>& bias) {
  check_float(input, "input");
  check_affine(weight, "weight", input, ns);
  check_affine(bias, "bias", input, ns);
  check_param_dtypes(input, weight, bias, /*any_float=*/!kCenter);
}

template <bool kCenter>
std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_fwd(const at::Tensor& input, at::IntArrayRef ns,
                                                        const std::optional<at::Tensor>& weight,
                                                        const std::optional<at::Tensor>& bias,
                                                        double eps) {
  check_fwd<kCenter>(input, ns, weight, bias);
  const auto [M, N] = rows_cols(input, ns);
  auto x = input.contiguous();
  auto y = new_output_like(x);
  auto sopt = x.options().dtype(stat_dtype(x.scalar_type()));
  auto mean = new_output({kCenter ? M : 0}, sopt);
  auto rstd = new_output({M}, sopt);
  if (M > 0 && N > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "norm_fwd_cpu", [&] {
      norm_fwd_kernel<scalar_t, kCenter>(x, weight, bias, eps, M, N, y, mean, rstd);
    });
  } else if (M > 0) {  // N == 0: statistics of an empty row are NaN, as in torch
    mean.fill_(NAN);
    rstd.fill_(NAN);
  }
  return {y, mean, rstd};
}

template <bool kCenter>
std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_bwd(const at::Tensor& grad_output, const at::Tensor& input,
                                                        at::IntArrayRef ns, const at::Tensor& mean,
                                                        const at::Tensor& rstd,
                                                        const std::optional<at::Tensor>& weight,
                                                        const std::optional<at::Tensor>& bias) {
  check_fwd<kCenter>(input, ns, weight, bias);
  const auto [M, N] = rows_cols(input, ns);
  TORCH_CHECK(grad_output.sizes() == input.sizes(), "grad_output: expected shape ", input.sizes(),
              " (the shape of input), got ", grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), "grad_output: expected dtype ",
              input.scalar_type(), ", got ", grad_output.scalar_type());
  check_same_device(grad_output, "grad_output", input, "input");
  const auto sdt = stat_dtype(input.scalar_type());
  TORCH_CHECK(rstd.numel() == M && rstd.scalar_type() == sdt, "rstd: expected ", M, " values of dtype ", sdt);
  if (kCenter)
    TORCH_CHECK(mean.numel() == M && mean.scalar_type() == sdt, "mean: expected ", M, " values of dtype ", sdt);
  auto x = input.contiguous();
  auto dy = grad_output.contiguous();
  auto dx = new_output_like(x);
  const bool want_dw = present(weight);
  const bool want_db = present(bias);
  auto dw = want_dw ? new_output(ns, weight->options()) : at::empty({0}, x.options());
  auto db = want_db ? new_output(ns, bias->options()) : at::empty({0}, x.options());
  if (M == 0) {  // no rows: the parameter gradients are sums over nothing
    dw.zero_();
    db.zero_();
  }
  if (M > 0 && N > 0) {
    auto mean_c = mean.contiguous();
    auto rstd_c = rstd.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "norm_bwd_cpu", [&] {
      norm_bwd_kernel<scalar_t, kCenter>(dy, x, mean_c, rstd_c, weight, want_dw, want_db, M, N, dx, dw, db);
    });
  }
  return {dx, dw, db};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd(const at::Tensor& input, at::IntArrayRef ns,
                                                              const std::optional<at::Tensor>& weight,
                                                              const std::optional<at::Tensor>& bias, double eps) {
  return norm_fwd<true>(input, ns, weight, bias, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd(const at::Tensor& grad_output, const at::Tensor& input,
                                                              at::IntArrayRef ns, const at::Tensor& mean,
                                                              const at::Tensor& rstd,
                                                              const std::optional<at::Tensor>& weight,
                                                              const std::optional<at::Tensor>& bias) {
  return norm_bwd<true>(grad_output, input, ns, mean, rstd, weight, bias);
}

std::tuple<at::Tensor, at::Tensor> rms_norm_fwd(const at::Tensor& input, at::IntArrayRef ns,
                                                const std::optional<at::Tensor>& weight, double eps) {
  auto [y, mean, rstd] = norm_fwd<false>(input, ns, weight, std::nullopt, eps);
  return {y, rstd};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd(const at::Tensor& grad_output, const at::Tensor& input,
                                                at::IntArrayRef ns, const at::Tensor& rstd,
                                                const std::optional<at::Tensor>& weight) {
  auto [dx, dw, db] = norm_bwd<false>(grad_output, input, ns, rstd, rstd, weight, std::nullopt);
  return {dx, dw};
}

}  // namespace
}  // namespace mte

TORCH_LIBRARY_IMPL(minitorch_ext, CPU, m) {
  m.impl("layer_norm_fwd", &mte::layer_norm_fwd);
  m.impl("layer_norm_bwd", &mte::layer_norm_bwd);
  m.impl("rms_norm_fwd", &mte::rms_norm_fwd);
  m.impl("rms_norm_bwd", &mte::rms_norm_bwd);
}
