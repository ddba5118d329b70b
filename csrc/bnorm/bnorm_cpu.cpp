// Normalization over batches and groups on the CPU: BatchNorm (training and
// eval) and GroupNorm (which also serves InstanceNorm: G == C), forward and
// backward.
//
// Algorithm.
//   BatchNorm, per channel c over the N*S elements of the batch (S: spatial size):
//     forward  mean, var (biased) -> invstd = 1/sqrt(var + eps);
//              y = x*a[c] + b[c] with a = invstd*w, b = bias - mean*a;
//              running_mean/var updated in the same call (unbiased var, momentum).
//     backward sum_dy = sum(dy), sum_dyx = sum(dy*(x - mean));
//              dx = k1*dy + k2*x + k3 (per-channel constants; k2 = k3 = 0 in eval),
//              dweight = sum_dyx*invstd, dbias = sum_dy.
//   GroupNorm, per (n, g) over the (C/G)*S contiguous elements of the group, the
//     same statistics; backward as torch's: per-(n, c) sums ds = sum(dy*x),
//     db = sum(dy), combined per group into the dx constants, reduced over n for
//     dweight/dbias.
// Statistics: two passes over cache-resident tiles (mean, then the squared
//   deviations from the tile's own mean), tiles merged with Chan's parallel
//   formula in double. Why not Welford: Welford's per-element division is
//   serial and slow; why not sum/sum-of-squares: it cancels catastrophically
//   when |mean| >> std. The second pass of a tile reads L1/L2, not DRAM, so the
//   two-pass accuracy costs no memory traffic.
// Layouts: contiguous NCHW (each (n, c) plane a contiguous span: the tiles are
//   spans; parallel over channels) and channels_last / 2-D [N, C] (rows of C
//   contiguous channels: tiles are fixed blocks of rows, each giving per-channel
//   partials; parallel over blocks). The output keeps the input's format.
// Memory traffic. Training forward reads x twice (stats, normalize) and writes y
//   once; backward reads x and dy twice and writes dx once; eval forward reads x
//   once. That is the minimum for a batch statistic (it is needed before any y).
// Determinism. Every reduction is cut into tiles fixed by the shape alone and
//   merged in tile order (no atomics): bitwise the same for any thread count.
// dtypes: float32, float64, bfloat16/float16 (widened to float32 per tile, rounded
//   once on store); weight/bias/running stats may be float32 with a reduced input.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "common/alloc.h"
#include "common/checks.h"
#include "common/vec_reduce.h"

namespace mte {
namespace {

using at::vec::Vectorized;

template <typename T>
using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

constexpr int64_t kTile = 4096;  // elements per statistics tile (16 KB of float: L1)

// a span of scalar_t as acc_t: the data itself for float/double, else widened into buf
// (bfloat16/float16: one reduced vector -> two float vectors at a time; at::vec::convert
// would take its scalar loop for these)
template <typename scalar_t, typename acc_t>
inline const acc_t* widen(const scalar_t* p, int64_t n, std::vector<acc_t>& buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return p;
  } else {
    if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
    using bVec = Vectorized<scalar_t>;
    constexpr int64_t B = bVec::size(), F = Vectorized<float>::size();
    int64_t i = 0;
    for (; i + B <= n; i += B) {
      auto [a, b] = at::vec::convert_to_float<scalar_t>(bVec::loadu(p + i));
      a.store(buf.data() + i);
      b.store(buf.data() + i + F);
    }
    for (; i < n; ++i) buf[i] = static_cast<float>(p[i]);
    return buf.data();
  }
}

// store n acc_t values into scalar_t (rounded once)
template <typename scalar_t, typename acc_t>
inline void narrow(const acc_t* src, scalar_t* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (src != dst) std::copy(src, src + n, dst);
  } else {
    using fVec = Vectorized<float>;
    constexpr int64_t B = Vectorized<scalar_t>::size(), F = fVec::size();
    int64_t i = 0;
    for (; i + B <= n; i += B)
      at::vec::convert_from_float<scalar_t>(fVec::loadu(src + i), fVec::loadu(src + i + F)).store(dst + i);
    for (; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
  }
}

// sum of f(v_i) over a span with 4 independent vector accumulators, lane order fixed
template <typename acc_t, typename F>
inline acc_t vreduce(int64_t n, F f) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  Vec a0(0), a1(0), a2(0), a3(0);
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    a0 += f(i, W);
    a1 += f(i + W, W);
    a2 += f(i + 2 * W, W);
    a3 += f(i + 3 * W, W);
  }
  for (; i + W <= n; i += W) a0 += f(i, W);
  if (i < n) a1 += f(i, n - i);
  return hsum((a0 + a1) + (a2 + a3));
}

template <typename acc_t>
inline Vectorized<acc_t> ld(const acc_t* p, int64_t cnt) {
  constexpr int64_t W = Vectorized<acc_t>::size();
  return cnt == W ? Vectorized<acc_t>::loadu(p) : Vectorized<acc_t>::loadu(p, cnt);
}

template <typename acc_t>
inline acc_t vsum(const acc_t* x, int64_t n) {
  return vreduce<acc_t>(n, [&](int64_t i, int64_t c) { return ld(x + i, c); });
}

// sum((x - m)^2); padded lanes load 0 and must not count: masked by blend on the tail
template <typename acc_t>
inline acc_t vsqdev(const acc_t* x, int64_t n, acc_t m) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  const Vec vm(m);
  return vreduce<acc_t>(n, [&](int64_t i, int64_t c) {
    const Vec d = ld(x + i, c) - vm;
    if (c == W) return d * d;
    return Vec::set(Vec(0), d * d, c);
  });
}

// sum(dy * (x - m))
template <typename acc_t>
inline acc_t vdotdev(const acc_t* dy, const acc_t* x, int64_t n, acc_t m) {
  using Vec = Vectorized<acc_t>;
  const Vec vm(m);
  return vreduce<acc_t>(n, [&](int64_t i, int64_t c) { return ld(dy + i, c) * (ld(x + i, c) - vm); });
}

// out = a*x + b
template <typename acc_t>
inline void vaxpb(const acc_t* x, int64_t n, acc_t a, acc_t b, acc_t* out) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  const Vec va(a), vb(b);
  int64_t i = 0;
  for (; i + W <= n; i += W) at::vec::fmadd(Vec::loadu(x + i), va, vb).store(out + i);
  if (i < n) at::vec::fmadd(Vec::loadu(x + i, n - i), va, vb).store(out + i, n - i);
}

// out = k1*dy + k2*x + k3
template <typename acc_t>
inline void vdx(const acc_t* dy, const acc_t* x, int64_t n, acc_t k1, acc_t k2, acc_t k3, acc_t* out) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  const Vec v1(k1), v2(k2), v3(k3);
  int64_t i = 0;
  for (; i + W <= n; i += W)
    at::vec::fmadd(Vec::loadu(dy + i), v1, at::vec::fmadd(Vec::loadu(x + i), v2, v3)).store(out + i);
  if (i < n) {
    const int64_t c = n - i;
    at::vec::fmadd(Vec::loadu(dy + i, c), v1, at::vec::fmadd(Vec::loadu(x + i, c), v2, v3)).store(out + i, c);
  }
}

// y = a*x + b straight from and to a span of scalar_t: float/double through vaxpb,
// bfloat16/float16 one reduced vector (two float vectors) at a time in registers, no
// scratch pass (the scratch-row version was 1.5-3x slower than torch's bf16 normalize)
template <typename scalar_t, typename acc_t>
inline void axpb_span(const scalar_t* x, int64_t n, acc_t a, acc_t b, scalar_t* y) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    vaxpb(x, n, a, b, y);
  } else {
    using bVec = Vectorized<scalar_t>;
    using fVec = Vectorized<float>;
    constexpr int64_t B = bVec::size();
    const fVec va(a), vb(b);
    int64_t i = 0;
    for (; i + B <= n; i += B) {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(bVec::loadu(x + i));
      at::vec::convert_from_float<scalar_t>(at::vec::fmadd(lo, va, vb), at::vec::fmadd(hi, va, vb)).store(y + i);
    }
    for (; i < n; ++i) y[i] = static_cast<scalar_t>(static_cast<float>(x[i]) * a + b);
  }
}

// dx = k1*dy + (k2*x + k3) straight from and to spans of scalar_t (as axpb_span)
template <typename scalar_t, typename acc_t>
inline void dx_span(const scalar_t* dy, const scalar_t* x, int64_t n, acc_t k1, acc_t k2, acc_t k3, scalar_t* dx) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    vdx(dy, x, n, k1, k2, k3, dx);
  } else {
    using bVec = Vectorized<scalar_t>;
    using fVec = Vectorized<float>;
    constexpr int64_t B = bVec::size();
    const fVec v1(k1), v2(k2), v3(k3);
    int64_t i = 0;
    for (; i + B <= n; i += B) {
      auto [g0, g1] = at::vec::convert_to_float<scalar_t>(bVec::loadu(dy + i));
      auto [x0, x1] = at::vec::convert_to_float<scalar_t>(bVec::loadu(x + i));
      at::vec::convert_from_float<scalar_t>(at::vec::fmadd(g0, v1, at::vec::fmadd(x0, v2, v3)),
                                            at::vec::fmadd(g1, v1, at::vec::fmadd(x1, v2, v3)))
          .store(dx + i);
    }
    for (; i < n; ++i)
      dx[i] = static_cast<scalar_t>(static_cast<float>(dy[i]) * k1 + (static_cast<float>(x[i]) * k2 + k3));
  }
}

// a row of C channels: y[c] = x[c]*a[c] + b[c] (per-channel vectors a, b), converted in
// registers for bfloat16/float16 as axpb_span
template <typename scalar_t, typename acc_t>
inline void axpb_row(const scalar_t* x, int64_t C, const acc_t* a, const acc_t* b, scalar_t* y) {
  using fVec = Vectorized<acc_t>;
  constexpr int64_t F = fVec::size();
  int64_t c = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    for (; c + F <= C; c += F)
      at::vec::fmadd(fVec::loadu(x + c), fVec::loadu(a + c), fVec::loadu(b + c)).store(y + c);
  } else {
    using bVec = Vectorized<scalar_t>;
    constexpr int64_t B = bVec::size();
    for (; c + B <= C; c += B) {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(bVec::loadu(x + c));
      at::vec::convert_from_float<scalar_t>(at::vec::fmadd(lo, fVec::loadu(a + c), fVec::loadu(b + c)),
                                            at::vec::fmadd(hi, fVec::loadu(a + c + F), fVec::loadu(b + c + F)))
          .store(y + c);
    }
  }
  for (; c < C; ++c) y[c] = static_cast<scalar_t>(static_cast<acc_t>(x[c]) * a[c] + b[c]);
}

// a row of C channels: dx[c] = k1[c]*dy[c] + (k2[c]*x[c] + k3[c])
template <typename scalar_t, typename acc_t>
inline void dx_row(const scalar_t* dy, const scalar_t* x, int64_t C, const acc_t* k1, const acc_t* k2,
                   const acc_t* k3, scalar_t* dx) {
  using fVec = Vectorized<acc_t>;
  constexpr int64_t F = fVec::size();
  int64_t c = 0;
  auto one = [&](const fVec& g, const fVec& v, int64_t o) {
    return at::vec::fmadd(g, fVec::loadu(k1 + o), at::vec::fmadd(v, fVec::loadu(k2 + o), fVec::loadu(k3 + o)));
  };
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    for (; c + F <= C; c += F) one(fVec::loadu(dy + c), fVec::loadu(x + c), c).store(dx + c);
  } else {
    using bVec = Vectorized<scalar_t>;
    constexpr int64_t B = bVec::size();
    for (; c + B <= C; c += B) {
      auto [g0, g1] = at::vec::convert_to_float<scalar_t>(bVec::loadu(dy + c));
      auto [x0, x1] = at::vec::convert_to_float<scalar_t>(bVec::loadu(x + c));
      at::vec::convert_from_float<scalar_t>(one(g0, x0, c), one(g1, x1, c + F)).store(dx + c);
    }
  }
  for (; c < C; ++c)
    dx[c] = static_cast<scalar_t>(k1[c] * static_cast<acc_t>(dy[c]) + (k2[c] * static_cast<acc_t>(x[c]) + k3[c]));
}

// Chan's merge of (count, mean, M2) states, in double
struct Stat {
  double n = 0, mean = 0, m2 = 0;
  void merge(double nb, double meanb, double m2b) {
    if (nb == 0) return;
    const double tot = n + nb, d = meanb - mean;
    mean += d * (nb / tot);
    m2 += m2b + d * d * (n * nb / tot);
    n = tot;
  }
};

// per-channel parameter widened to acc_t (value `dflt` where absent)
template <typename acc_t>
std::vector<acc_t> param(const std::optional<at::Tensor>& t, int64_t C, acc_t dflt) {
  std::vector<acc_t> v(C, dflt);
  if (!t.has_value() || !t->defined()) return v;
  const at::Tensor c = t->contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, c.scalar_type(), "bnorm_param", [&] {
    const scalar_t* p = c.data_ptr<scalar_t>();
    for (int64_t i = 0; i < C; ++i) v[i] = static_cast<acc_t>(p[i]);
  });
  return v;
}

// a per-channel gradient [C] in `like`'s dtype from acc values
template <typename acc_t>
at::Tensor param_grad(const std::vector<acc_t>& v, const at::Tensor& like) {
  at::Tensor g = new_output({static_cast<int64_t>(v.size())}, like.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g.scalar_type(), "bnorm_pgrad", [&] {
    scalar_t* p = g.data_ptr<scalar_t>();
    for (size_t i = 0; i < v.size(); ++i) p[i] = static_cast<scalar_t>(v[i]);
  });
  return g;
}

// ---- layout --------------------------------------------------------------------

// How the kernels see an input [N, C, *]: "planes" (contiguous NCHW: (n, c) planes of
// S contiguous elements) or "rows" (channels_last, or S == 1: N*S rows of C channels).
struct Layout {
  int64_t N, C, S;
  bool rows;
  at::MemoryFormat fmt;
};

Layout layout_of(const at::Tensor& x) {
  Layout L;
  L.N = x.size(0);
  L.C = x.size(1);
  L.S = 1;
  for (int64_t d = 2; d < x.dim(); ++d) L.S *= x.size(d);
  L.fmt = at::MemoryFormat::Contiguous;
  if (x.dim() == 4 && x.suggest_memory_format() == at::MemoryFormat::ChannelsLast)
    L.fmt = at::MemoryFormat::ChannelsLast;
  else if (x.dim() == 5 && x.suggest_memory_format() == at::MemoryFormat::ChannelsLast3d)
    L.fmt = at::MemoryFormat::ChannelsLast3d;
  L.rows = L.fmt != at::MemoryFormat::Contiguous || L.S == 1;
  return L;
}

at::Tensor in_layout(const at::Tensor& t, const Layout& L) { return t.contiguous(L.fmt); }

at::Tensor out_like(const at::Tensor& x, const Layout& L) {
  return poisoned(at::empty(x.sizes(), x.options().memory_format(L.fmt)));
}

// rows per block in the "rows" layout: ~kTile elements, at least 1 row (fixed by C alone)
inline int64_t rows_per_block(int64_t C) { return std::max<int64_t>(1, kTile / std::max<int64_t>(C, 1)); }

// ---- BatchNorm statistics ------------------------------------------------------

// mean[c], M2[c] (sum of squared deviations) of x over N*S per channel
template <typename scalar_t, typename acc_t>
void channel_stats(const scalar_t* x, const Layout& L, std::vector<double>& mean, std::vector<double>& m2) {
  const int64_t N = L.N, C = L.C, S = L.S;
  mean.assign(C, 0);
  m2.assign(C, 0);
  if (!L.rows) {
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
      std::vector<acc_t> buf;
      for (int64_t c = c0; c < c1; ++c) {
        Stat st;
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t* p = x + (n * C + c) * S;
          for (int64_t s0 = 0; s0 < S; s0 += kTile) {
            const int64_t len = std::min(kTile, S - s0);
            const acc_t* v = widen<scalar_t, acc_t>(p + s0, len, buf);
            const acc_t tm = vsum(v, len) / static_cast<acc_t>(len);
            st.merge(static_cast<double>(len), tm, vsqdev(v, len, tm));
          }
        }
        mean[c] = st.mean;
        m2[c] = st.m2;
      }
    });
    return;
  }
  // rows: blocks of R rows give per-channel (mean, M2) partials, merged in block order
  const int64_t M = N * S, R = rows_per_block(C), nb = (M + R - 1) / R;
  std::vector<acc_t> bmean(nb * C), bm2(nb * C);
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> buf, sum(C);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * R, r1 = std::min(M, r0 + R);
      acc_t* bmn = bmean.data() + b * C;
      acc_t* bq = bm2.data() + b * C;
      std::fill(sum.begin(), sum.end(), acc_t(0));
      for (int64_t r = r0; r < r1; ++r) {
        const acc_t* v = widen<scalar_t, acc_t>(x + r * C, C, buf);
        at::vec::map2([](auto a, auto b) { return a + b; }, sum.data(), sum.data(), v, C);
      }
      const acc_t inv = acc_t(1) / static_cast<acc_t>(r1 - r0);
      for (int64_t c = 0; c < C; ++c) bmn[c] = sum[c] * inv;
      std::fill(bq, bq + C, acc_t(0));
      for (int64_t r = r0; r < r1; ++r) {
        const acc_t* v = widen<scalar_t, acc_t>(x + r * C, C, buf);
        at::vec::map3([](auto q, auto a, auto m) { return q + (a - m) * (a - m); }, bq, bq, v, bmn, C);
      }
    }
  });
  // Chan's merge, block after block: the counts are the same for every channel, so the
  // divisions are per block and the channel loop is plain multiply-adds (vectorized)
  double n = 0;
  for (int64_t b = 0; b < nb; ++b) {
    const double cnt = static_cast<double>(std::min(M, (b + 1) * R) - b * R), tot = n + cnt;
    const double f1 = cnt / tot, f2 = n * cnt / tot;
    const acc_t* bm = bmean.data() + b * C;
    const acc_t* bq = bm2.data() + b * C;
    double* mp = mean.data();
    double* qp = m2.data();
    for (int64_t c = 0; c < C; ++c) {
      const double d = static_cast<double>(bm[c]) - mp[c];
      mp[c] += d * f1;
      qp[c] += static_cast<double>(bq[c]) + d * d * f2;
    }
    n = tot;
  }
}

// y = x*a[c] + b[c]
template <typename scalar_t, typename acc_t>
void channel_affine(const scalar_t* x, scalar_t* y, const Layout& L, const std::vector<acc_t>& a,
                    const std::vector<acc_t>& b) {
  const int64_t N = L.N, C = L.C, S = L.S;
  if (!L.rows) {
    at::parallel_for(0, N * C, std::max<int64_t>(1, kTile / std::max<int64_t>(S, 1)), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t c = p % C;
        for (int64_t s0 = 0; s0 < S; s0 += kTile) {
          const int64_t len = std::min(kTile, S - s0);
          axpb_span(x + p * S + s0, len, a[c], b[c], y + p * S + s0);
        }
      }
    });
    return;
  }
  const int64_t M = N * S, R = rows_per_block(C);
  at::parallel_for(0, M, R, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) axpb_row(x + r * C, C, a.data(), b.data(), y + r * C);
  });
}

// sum_dy[c] = sum(dy), sum_dyx[c] = sum(dy*(x - mean[c]))
template <typename scalar_t, typename acc_t>
void channel_grad_sums(const scalar_t* dy, const scalar_t* x, const Layout& L, const std::vector<acc_t>& mean,
                       std::vector<double>& sdy, std::vector<double>& sdyx) {
  const int64_t N = L.N, C = L.C, S = L.S;
  sdy.assign(C, 0);
  sdyx.assign(C, 0);
  if (!L.rows) {
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
      std::vector<acc_t> b1, b2;
      for (int64_t c = c0; c < c1; ++c) {
        double s1 = 0, s2 = 0;
        for (int64_t n = 0; n < N; ++n) {
          const int64_t off = (n * C + c) * S;
          for (int64_t s0 = 0; s0 < S; s0 += kTile) {
            const int64_t len = std::min(kTile, S - s0);
            const acc_t* g = widen<scalar_t, acc_t>(dy + off + s0, len, b1);
            const acc_t* v = widen<scalar_t, acc_t>(x + off + s0, len, b2);
            s1 += vsum(g, len);
            s2 += vdotdev(g, v, len, mean[c]);
          }
        }
        sdy[c] = s1;
        sdyx[c] = s2;
      }
    });
    return;
  }
  const int64_t M = N * S, R = rows_per_block(C), nb = (M + R - 1) / R;
  std::vector<acc_t> p1(nb * C), p2(nb * C);
  at::parallel_for(0, nb, 1, [&](int64_t bb0, int64_t bb1) {
    std::vector<acc_t> b1, b2;
    for (int64_t b = bb0; b < bb1; ++b) {
      acc_t* q1 = p1.data() + b * C;
      acc_t* q2 = p2.data() + b * C;
      std::fill(q1, q1 + C, acc_t(0));
      std::fill(q2, q2 + C, acc_t(0));
      for (int64_t r = b * R, re = std::min(M, (b + 1) * R); r < re; ++r) {
        const acc_t* g = widen<scalar_t, acc_t>(dy + r * C, C, b1);
        const acc_t* v = widen<scalar_t, acc_t>(x + r * C, C, b2);
        at::vec::map2([](auto q, auto gv) { return q + gv; }, q1, q1, g, C);
        at::vec::map4([](auto q, auto gv, auto xv, auto mv) { return q + gv * (xv - mv); }, q2, q2, g, v,
                      mean.data(), C);
      }
    }
  });
  // block partials summed in block order (channel loop innermost: vectorized)
  for (int64_t b = 0; b < nb; ++b) {
    const acc_t* a1 = p1.data() + b * C;
    const acc_t* a2 = p2.data() + b * C;
    for (int64_t c = 0; c < C; ++c) {
      sdy[c] += a1[c];
      sdyx[c] += a2[c];
    }
  }
}

// dx = k1[c]*dy + k2[c]*x + k3[c]
template <typename scalar_t, typename acc_t>
void channel_dx(const scalar_t* dy, const scalar_t* x, scalar_t* dx, const Layout& L, const std::vector<acc_t>& k1,
                const std::vector<acc_t>& k2, const std::vector<acc_t>& k3) {
  const int64_t N = L.N, C = L.C, S = L.S;
  if (!L.rows) {
    at::parallel_for(0, N * C, std::max<int64_t>(1, kTile / std::max<int64_t>(S, 1)), [&](int64_t q0, int64_t q1) {
      for (int64_t p = q0; p < q1; ++p) {
        const int64_t c = p % C;
        for (int64_t s0 = 0; s0 < S; s0 += kTile) {
          const int64_t len = std::min(kTile, S - s0);
          dx_span(dy + p * S + s0, x + p * S + s0, len, k1[c], k2[c], k3[c], dx + p * S + s0);
        }
      }
    });
    return;
  }
  const int64_t M = N * S, R = rows_per_block(C);
  at::parallel_for(0, M, R, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      dx_row(dy + r * C, x + r * C, C, k1.data(), k2.data(), k3.data(), dx + r * C);
  });
}

void check_input(const at::Tensor& input, const char* op) {
  TORCH_CHECK(input.dim() >= 2, op, ": input: expected a tensor of at least 2 dimensions [N, C, *], got ",
              input.dim(), "-D input of size ", input.sizes());
  check_float(input, "input");
}

void check_channel_param(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& input,
                         int64_t C) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == C, name, ": expected a 1-D tensor of size ", C,
              " (the input's channels), got one of size ", t->sizes());
  check_same_device(*t, name, input, "input");
  const auto pt = t->scalar_type();
  TORCH_CHECK(pt == input.scalar_type() || pt == at::kFloat || pt == at::kDouble, name, ": expected dtype ",
              input.scalar_type(), " (the dtype of input) or float32, got ", pt);
}

// ---- ops -----------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_fwd(const at::Tensor& input,
                                                              const std::optional<at::Tensor>& weight,
                                                              const std::optional<at::Tensor>& bias,
                                                              const std::optional<at::Tensor>& running_mean,
                                                              const std::optional<at::Tensor>& running_var,
                                                              bool training, double momentum, double eps) {
  check_input(input, "batch_norm");
  const Layout L = layout_of(input);
  const int64_t C = L.C;
  check_channel_param(weight, "weight", input, C);
  check_channel_param(bias, "bias", input, C);
  check_channel_param(running_mean, "running_mean", input, C);
  check_channel_param(running_var, "running_var", input, C);
  const bool has_rm = running_mean.has_value() && running_mean->defined();
  const bool has_rv = running_var.has_value() && running_var->defined();
  TORCH_CHECK(training || (has_rm && has_rv),
              "batch_norm: running_mean and running_var must be given when training is false");
  TORCH_CHECK(!training || has_rm == has_rv, "batch_norm: running_mean and running_var: give both or neither");
  const at::Tensor x = in_layout(input, L);
  at::Tensor y = out_like(x, L);
  const auto st = stat_dtype(input.scalar_type());
  at::Tensor save_mean = new_output({C}, input.options().dtype(st));
  at::Tensor save_invstd = new_output({C}, input.options().dtype(st));
  const int64_t count = L.N * L.S;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "batch_norm_fwd", [&] {
    using acc_t = acc_of<scalar_t>;
    std::vector<acc_t> mean(C), invstd(C);
    if (training) {
      std::vector<double> m, q;
      if (count > 0) channel_stats<scalar_t, acc_t>(x.data_ptr<scalar_t>(), L, m, q);
      else m.assign(C, NAN), q.assign(C, NAN);
      for (int64_t c = 0; c < C; ++c) {
        mean[c] = static_cast<acc_t>(m[c]);
        invstd[c] = static_cast<acc_t>(1.0 / std::sqrt(q[c] / static_cast<double>(count) + eps));
      }
      if (has_rm && count > 0) {
        // the running update, in the running stats' own dtype (unbiased variance)
        const double unb = count > 1 ? 1.0 / static_cast<double>(count - 1) : NAN;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, running_mean->scalar_type(), "bn_running", [&] {
          TORCH_CHECK(running_mean->is_contiguous() && running_var->is_contiguous() &&
                          running_var->scalar_type() == running_mean->scalar_type(),
                      "batch_norm: running_mean and running_var: expected contiguous tensors of one dtype");
          scalar_t* rm = running_mean->data_ptr<scalar_t>();
          scalar_t* rv = running_var->data_ptr<scalar_t>();
          for (int64_t c = 0; c < C; ++c) {
            rm[c] = static_cast<scalar_t>((1 - momentum) * static_cast<double>(rm[c]) + momentum * m[c]);
            rv[c] = static_cast<scalar_t>((1 - momentum) * static_cast<double>(rv[c]) + momentum * q[c] * unb);
          }
        });
      }
    } else {
      const std::vector<acc_t> rm = param<acc_t>(running_mean, C, 0), rv = param<acc_t>(running_var, C, 1);
      for (int64_t c = 0; c < C; ++c) {
        mean[c] = rm[c];
        invstd[c] = static_cast<acc_t>(1.0 / std::sqrt(static_cast<double>(rv[c]) + eps));
      }
    }
    const std::vector<acc_t> w = param<acc_t>(weight, C, 1), b = param<acc_t>(bias, C, 0);
    std::vector<acc_t> a(C), sh(C);
    for (int64_t c = 0; c < C; ++c) {
      a[c] = invstd[c] * w[c];
      sh[c] = b[c] - mean[c] * a[c];
    }
    if (count > 0) channel_affine<scalar_t, acc_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), L, a, sh);
    using st_t = std::conditional_t<std::is_same_v<acc_t, double>, double, float>;
    std::copy(mean.begin(), mean.end(), save_mean.data_ptr<st_t>());
    std::copy(invstd.begin(), invstd.end(), save_invstd.data_ptr<st_t>());
  });
  return {y, save_mean, save_invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_bwd(const at::Tensor& grad_output, const at::Tensor& input,
                                                              const std::optional<at::Tensor>& weight,
                                                              const at::Tensor& save_mean,
                                                              const at::Tensor& save_invstd, bool training,
                                                              std::array<bool, 3> output_mask) {
  check_input(input, "batch_norm_bwd");
  TORCH_CHECK(grad_output.sizes() == input.sizes(), "batch_norm_bwd: grad_output: expected size ", input.sizes(),
              ", got ", grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), "batch_norm_bwd: grad_output: expected dtype ",
              input.scalar_type(), ", got ", grad_output.scalar_type());
  const Layout L = layout_of(input);
  const int64_t C = L.C, count = L.N * L.S;
  check_channel_param(weight, "weight", input, C);
  TORCH_CHECK(save_mean.numel() == C && save_invstd.numel() == C,
              "batch_norm_bwd: save_mean, save_invstd: expected ", C, " elements");
  const at::Tensor x = in_layout(input, L), dy = in_layout(grad_output, L);
  at::Tensor dx, dw, db;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "batch_norm_bwd", [&] {
    using acc_t = acc_of<scalar_t>;
    const std::vector<acc_t> mean = param<acc_t>(save_mean, C, 0), invstd = param<acc_t>(save_invstd, C, 1);
    const std::vector<acc_t> w = param<acc_t>(weight, C, 1);
    std::vector<double> sdy(C, 0), sdyx(C, 0);
    if ((training && output_mask[0]) || output_mask[1] || output_mask[2]) {
      if (count > 0)
        channel_grad_sums<scalar_t, acc_t>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), L, mean, sdy, sdyx);
    }
    if (output_mask[0]) {
      dx = out_like(x, L);
      std::vector<acc_t> k1(C), k2(C, 0), k3(C, 0);
      for (int64_t c = 0; c < C; ++c) {
        const double is = invstd[c], wc = w[c];
        k1[c] = static_cast<acc_t>(is * wc);
        if (training) {
          const double inv_n = 1.0 / static_cast<double>(count);
          const double kk = -is * wc * is * is * sdyx[c] * inv_n;
          k2[c] = static_cast<acc_t>(kk);
          k3[c] = static_cast<acc_t>(-is * wc * sdy[c] * inv_n - static_cast<double>(mean[c]) * kk);
        }
      }
      if (count > 0)
        channel_dx<scalar_t, acc_t>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), L, k1,
                                    k2, k3);
    }
    const at::Tensor& pl = (weight.has_value() && weight->defined()) ? *weight : input;
    if (output_mask[1]) {
      std::vector<double> g(C);
      for (int64_t c = 0; c < C; ++c) g[c] = sdyx[c] * static_cast<double>(invstd[c]);
      dw = param_grad(g, pl);
    }
    if (output_mask[2]) db = param_grad(sdy, pl);
  });
  auto empty = [&] { return at::empty({0}, input.options()); };
  return {output_mask[0] ? dx : empty(), output_mask[1] ? dw : empty(), output_mask[2] ? db : empty()};
}

// ---- GroupNorm -------------------------------------------------------------------

void check_groups(const at::Tensor& input, int64_t G) {
  TORCH_CHECK(G > 0, "group_norm: num_groups: expected a positive number, got ", G);
  TORCH_CHECK(input.size(1) % G == 0, "Expected number of channels in input to be divisible by num_groups, but got "
              "input of shape ", input.sizes(), " and num_groups=", G);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_fwd(const at::Tensor& input,
                                                              const std::optional<at::Tensor>& weight,
                                                              const std::optional<at::Tensor>& bias,
                                                              int64_t num_groups, double eps) {
  check_input(input, "group_norm");
  check_groups(input, num_groups);
  const Layout L0 = layout_of(input);
  const int64_t N = L0.N, C = L0.C, S = L0.S, G = num_groups, Cg = C / G, span = Cg * S;
  check_channel_param(weight, "weight", input, C);
  check_channel_param(bias, "bias", input, C);
  // the kernel walks contiguous (n, g) spans; a channels_last input is made contiguous
  // and its output handed back channels_last (torch's rule: the input's format)
  const at::Tensor x = input.contiguous();
  at::Tensor y = poisoned(at::empty(x.sizes(), x.options()));
  const auto st = stat_dtype(input.scalar_type());
  at::Tensor mean_t = new_output({N, G}, input.options().dtype(st));
  at::Tensor rstd_t = new_output({N, G}, input.options().dtype(st));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "group_norm_fwd", [&] {
    using acc_t = acc_of<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    acc_t* mp = mean_t.data_ptr<acc_t>();
    acc_t* rp = rstd_t.data_ptr<acc_t>();
    const std::vector<acc_t> w = param<acc_t>(weight, C, 1), b = param<acc_t>(bias, C, 0);
    at::parallel_for(0, N * G, 1, [&](int64_t q0, int64_t q1) {
      std::vector<acc_t> buf;
      for (int64_t q = q0; q < q1; ++q) {
        const scalar_t* p = xp + q * span;
        Stat s;
        for (int64_t s0 = 0; s0 < span; s0 += kTile) {
          const int64_t len = std::min(kTile, span - s0);
          const acc_t* v = widen<scalar_t, acc_t>(p + s0, len, buf);
          const acc_t tm = vsum(v, len) / static_cast<acc_t>(len);
          s.merge(static_cast<double>(len), tm, vsqdev(v, len, tm));
        }
        const acc_t mean = static_cast<acc_t>(s.mean);
        const acc_t rstd = static_cast<acc_t>(1.0 / std::sqrt(s.m2 / static_cast<double>(span) + eps));
        mp[q] = span > 0 ? mean : acc_t(NAN);
        rp[q] = span > 0 ? rstd : acc_t(NAN);
        const int64_t g = q % G;
        for (int64_t cc = 0; cc < Cg; ++cc) {
          const int64_t c = g * Cg + cc;
          const acc_t a = rstd * w[c], sh = b[c] - mean * a;
          const int64_t off = q * span + cc * S;
          for (int64_t s0 = 0; s0 < S; s0 += kTile) {
            const int64_t len = std::min(kTile, S - s0);
            axpb_span(xp + off + s0, len, a, sh, yp + off + s0);
          }
        }
      }
    });
  });
  if (L0.fmt != at::MemoryFormat::Contiguous) y = y.contiguous(L0.fmt);
  return {y, mean_t, rstd_t};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_bwd(const at::Tensor& grad_output, const at::Tensor& input,
                                                              const std::optional<at::Tensor>& weight,
                                                              const at::Tensor& mean, const at::Tensor& rstd,
                                                              int64_t num_groups, std::array<bool, 3> output_mask) {
  check_input(input, "group_norm_bwd");
  check_groups(input, num_groups);
  TORCH_CHECK(grad_output.sizes() == input.sizes(), "group_norm_bwd: grad_output: expected size ", input.sizes(),
              ", got ", grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), "group_norm_bwd: grad_output: expected dtype ",
              input.scalar_type(), ", got ", grad_output.scalar_type());
  const Layout L0 = layout_of(input);
  const int64_t N = L0.N, C = L0.C, S = L0.S, G = num_groups, Cg = C / G, span = Cg * S;
  check_channel_param(weight, "weight", input, C);
  TORCH_CHECK(mean.numel() == N * G && rstd.numel() == N * G, "group_norm_bwd: mean, rstd: expected ", N * G,
              " elements");
  const at::Tensor x = input.contiguous(), dy = grad_output.contiguous();
  at::Tensor dx, dw, db;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "group_norm_bwd", [&] {
    using acc_t = acc_of<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = dy.data_ptr<scalar_t>();
    const at::Tensor mc = mean.contiguous(), rc = rstd.contiguous();
    const acc_t* mp = mc.data_ptr<acc_t>();
    const acc_t* rp = rc.data_ptr<acc_t>();
    const std::vector<acc_t> w = param<acc_t>(weight, C, 1);
    // per (n, c): ds = sum(dy*(x - mean_g)), dbs = sum(dy) (centred: no cancellation)
    std::vector<double> ds(N * C), dbs(N * C);
    at::parallel_for(0, N * C, std::max<int64_t>(1, kTile / std::max<int64_t>(S, 1)), [&](int64_t p0, int64_t p1) {
      std::vector<acc_t> b1, b2;
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n = p / C, g = (p % C) / Cg;
        const acc_t m = mp[n * G + g];
        double s1 = 0, s2 = 0;
        for (int64_t s0 = 0; s0 < S; s0 += kTile) {
          const int64_t len = std::min(kTile, S - s0);
          const acc_t* gv = widen<scalar_t, acc_t>(gp + p * S + s0, len, b1);
          const acc_t* v = widen<scalar_t, acc_t>(xp + p * S + s0, len, b2);
          s1 += vdotdev(gv, v, len, m);
          s2 += vsum(gv, len);
        }
        ds[p] = s1;
        dbs[p] = s2;
      }
    });
    if (output_mask[0]) {
      dx = poisoned(at::empty(x.sizes(), x.options()));
      scalar_t* dxp = dx.data_ptr<scalar_t>();
      at::parallel_for(0, N * G, 1, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t n = q / G, g = q % G;
          const double m = mp[q], r = rp[q];
          // xhat = (x - m) r; dxhat = dy w; dx = r (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
          double s_g = 0, s_gx = 0;  // sum(dy w), sum(dy w (x - m))
          for (int64_t cc = 0; cc < Cg; ++cc) {
            const int64_t c = g * Cg + cc;
            s_g += dbs[n * C + c] * w[c];
            s_gx += ds[n * C + c] * w[c];
          }
          const double inv = 1.0 / static_cast<double>(span);
          const double k2 = -r * r * r * s_gx * inv;
          const double k3 = -r * s_g * inv - m * k2;
          for (int64_t cc = 0; cc < Cg; ++cc) {
            const int64_t c = g * Cg + cc;
            const int64_t off = q * span + cc * S;
            const acc_t k1 = static_cast<acc_t>(r * w[c]);
            for (int64_t s0 = 0; s0 < S; s0 += kTile) {
              const int64_t len = std::min(kTile, S - s0);
              dx_span(gp + off + s0, xp + off + s0, len, k1, static_cast<acc_t>(k2), static_cast<acc_t>(k3),
                      dxp + off + s0);
            }
          }
        }
      });
      if (L0.fmt != at::MemoryFormat::Contiguous) dx = dx.contiguous(L0.fmt);
    }
    const at::Tensor& pl = (weight.has_value() && weight->defined()) ? *weight : input;
    if (output_mask[1] || output_mask[2]) {
      std::vector<double> gw(C, 0), gb(C, 0);
      for (int64_t c = 0; c < C; ++c) {
        const int64_t g = c / Cg;
        for (int64_t n = 0; n < N; ++n) {
          gw[c] += ds[n * C + c] * static_cast<double>(rp[n * G + g]);
          gb[c] += dbs[n * C + c];
        }
      }
      if (output_mask[1]) dw = param_grad(gw, pl);
      if (output_mask[2]) db = param_grad(gb, pl);
    }
  });
  auto empty = [&] { return at::empty({0}, input.options()); };
  return {output_mask[0] ? dx : empty(), output_mask[1] ? dw : empty(), output_mask[2] ? db : empty()};
}

}  // namespace
}  // namespace mte

TORCH_LIBRARY_IMPL(minitorch_ext, CPU, m) {
  m.impl("batch_norm_fwd", &mte::batch_norm_fwd);
  m.impl("batch_norm_bwd", &mte::batch_norm_bwd);
  m.impl("group_norm_fwd", &mte::group_norm_fwd);
  m.impl("group_norm_bwd", &mte::group_norm_bwd);
}
