// Cross-entropy / NLL loss on the CPU, fused: log-softmax, the loss and its input
// gradient in one kernel per row (ce_fwd), and the in-place scaling of that saved
// gradient by grad_output (ce_bwd). Schemas and semantics in csrc/ops.cpp.
//
// Math (torch's definitions; row i, classes c, logits x, lse = log sum_c exp(x_c),
// p = softmax(x), weights w (1 without weight), W = sum_c w_c, eps = label_smoothing):
//   class index t:  loss_i = (1-eps) w_t (lse - x_t) + eps/C * sum_c w_c (lse - x_c)
//                   dloss_i/dx_j = p_j ((1-eps) w_t + eps/C W) - eps/C w_j - [j=t] (1-eps) w_t
//                   ignore_index rows: loss 0, gradient 0.
//                   mean: / sum over non-ignored rows of w_t (torch's nll_loss and the
//                   smoothing term share this denominator).
//   probabilities P: q = (1-eps) P + eps/C;  loss_i = sum_c w_c q_c (lse - x_c)
//   (computed as sums of (lse - m) and (m - x_c), m the row max: non-negative terms only)
//                   dloss_i/dx_j = p_j sum_c w_c q_c - w_j q_j;  mean: / (N*D).
//   nll_loss (log_input): loss_i = -w_t x_t, gradient -w_t at t; mean: / sum w_t.
//
// Algorithm. The input is [N, C, D] with any strides; a row is one (n, d) pair.
//   Rows with unit class stride (the (N, C) case): per row, pass 1 the max m (then, for
//   smoothing or probabilities, the weighted sums of m - x), pass 2 sum exp(x - m), which
//   also stores exp(x - max) in the gradient row, pass 3 turns that row in place into
//   the gradient: e * (coef / sum) - (the smoothing / target terms). The row (widened
//   to float once for bfloat16) stays in L1/L2 between the passes. at::vec lanes,
//   float32 math for float32/bfloat16, float64 for float64 (the lanes and the tails of
//   the row sums are added in double, and so is the loss); one rounding on store
//   (bfloat16 rows are widened and the gradient narrowed with vector conversions).
//   exp is Sleef's 1-ulp one: a 2-ulp exp doubled the gradient's error on peaked rows.
//   Any other layout ((N, C, d1, ...) inputs, transposed inputs): tiles of up to 16
//   consecutive rows walked class by class, so the unit-stride direction (d, or n
//   for a transposed (N, C)) is the inner loop; the same passes (the row sums in
//   double), exp recomputed in the gradient pass instead of buffering a C x 16 tile.
//   The mean's denominator (and the target range check, IndexError as torch's) comes
//   from a prepass over the [N, D] targets, before the row loop, so the gradient can
//   be scaled for the reduction inside the forward pass.
//   Reduction: rows are cut into chunks whose size depends only on C; each chunk's
//   loss is summed in order (double), the chunk sums then in order: the result does
//   not depend on the thread count (bitwise repeatable), and no atomics.
// Memory traffic: forward reads the input once and writes the gradient once (plus the
//   [N, D] targets / losses); backward reads and writes the gradient once, and is
//   skipped for grad_output == 1 (loss.backward()). No softmax / log-softmax tensor is
//   ever stored: native torch writes log_softmax (forward) and three input-sized
//   tensors in backward.
// The trick: computing the gradient while the row is cache-resident (Liger-Kernel's
//   fused cross-entropy) turns ~6 passes over an input-sized tensor into 2.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/alloc.h"
#include "common/vec_reduce.h"

// at::vec's bfloat16 helpers trip GCC's maybe-uninitialized analysis (as in act_cpu.cpp)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace mte {
namespace {

using at::vec::Vectorized;

template <typename T>
using acc_type = std::conditional_t<std::is_same_v<T, double>, double, float>;

constexpr int64_t kTile = 16;  // rows per tile on the strided path

// bfloat16 -> float, vectorized (at::vec::convert has no vector path for this direction)
template <typename scalar_t, typename A>
inline void to_acc(const scalar_t* src, A* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    using VB = Vectorized<at::BFloat16>;
    constexpr int64_t W = VB::size();
    int64_t i = 0;
    for (; i + W <= n; i += W) {
      auto ab = at::vec::convert_bfloat16_float(VB::loadu(src + i));
      std::get<0>(ab).store(dst + i);
      std::get<1>(ab).store(dst + i + W / 2);
    }
    for (; i < n; ++i) dst[i] = static_cast<A>(src[i]);
  } else {
    at::vec::convert(src, dst, n);
  }
}

// Sleef's 1-ulp exp: exp_u20 (2 ulp) was ~20% faster here but doubled the gradient's error
// against float64 on peaked rows (p_j near 1), past native torch's own error
// lanes summed in double, lane 0 first (a fixed order)
template <typename A>
inline double hsum_d(const Vectorized<A>& v) {
  constexpr int64_t W = Vectorized<A>::size();
  A buf[W];
  v.store(buf);
  double s = 0;
  for (int64_t k = 0; k < W; ++k) s += static_cast<double>(buf[k]);
  return s;
}

template <typename A>
inline Vectorized<A> vexp(const Vectorized<A>& v) {
  return v.exp();
}

struct Params {
  int64_t N, C, D;
  int64_t sN, sC, sD;  // input strides
  int64_t reduction;   // 0 none, 1 mean, 2 sum
  int64_t ignore_index;
  double eps;
  bool log_input, prob, grad;
};

// ---- the unit-class-stride row kernel -----------------------------------------------

template <typename scalar_t>
struct RowKernel {
  using A = acc_type<scalar_t>;
  using V = Vectorized<A>;
  static constexpr int64_t W = V::size();

  const Params& P;
  const A* w;        // [C] or nullptr
  A wsum;            // sum of w (C without weight)
  A scale;           // 1/denominator for mean, 1 otherwise

  // one row: x (C elements, unit stride), target t or probabilities p (unit stride),
  // gradient row g (unit stride, nullptr when not computing), scratch buffers (float
  // copies for bfloat16). Returns the row's loss (unscaled).
  A run(const scalar_t* xin, int64_t t, const scalar_t* pin, scalar_t* gout, A* xbuf, A* gbuf, A* pbuf) const {
    const int64_t C = P.C;
    const A* x;
    if constexpr (std::is_same_v<scalar_t, A>) {
      x = xin;
    } else {
      to_acc(xin, xbuf, C);
      x = xbuf;
    }
    const A eps = static_cast<A>(P.eps);
    const A epsC = eps / static_cast<A>(C);
    if (P.log_input) {  // nll_loss: a gather
      const A wt = w ? w[t] : A(1);
      if (gout) {
        A* g = std::is_same_v<scalar_t, A> ? reinterpret_cast<A*>(gout) : gbuf;
        int64_t j = 0;
        for (; j + W <= C; j += W) V(A(0)).store(g + j);
        for (; j < C; ++j) g[j] = A(0);
        g[t] = -wt * scale;
        if constexpr (!std::is_same_v<scalar_t, A>) at::vec::convert(gbuf, gout, C);
      }
      return -wt * x[t];
    }
    const A* p = nullptr;
    if (P.prob) {
      if constexpr (std::is_same_v<scalar_t, A>) {
        p = pin;
      } else {
        to_acc(pin, pbuf, C);
        p = pbuf;
      }
    }
    // pass 1: max, and the weighted sums the loss needs
    V vm(-std::numeric_limits<A>::infinity());
    int64_t j = 0;
    for (; j + W <= C; j += W) vm = at::vec::maximum(vm, V::loadu(x + j));
    A m = -std::numeric_limits<A>::infinity();
    {
      A buf[W];
      vm.store(buf);
      for (int64_t k = 0; k < W; ++k) m = (buf[k] > m || std::isnan(buf[k])) ? buf[k] : m;
      for (; j < C; ++j) m = (x[j] > m || std::isnan(x[j])) ? x[j] : m;
    }
    // the sums are taken of (m - x) >= 0, so the loss below is a sum of non-negative terms
    // (no cancellation; and none for an FMA contraction to expose)
    // lanes accumulate in A; the lanes and the tail are then summed in double
    double sx = 0, swq = 0, swqx = 0;  // sum w (m - x); sum w q; sum w q (m - x)
    const V vmx(m);
    if (P.prob) {
      const A one_m = A(1) - eps;
      V a(0), b(0);
      j = 0;
      for (; j + W <= C; j += W) {
        V q = V::loadu(p + j) * V(one_m) + V(epsC);
        if (w) q = q * V::loadu(w + j);
        a = a + q;
        b = at::vec::fmadd(q, vmx - V::loadu(x + j), b);
      }
      swq = hsum_d(a);
      swqx = hsum_d(b);
      for (; j < C; ++j) {
        A q = p[j] * one_m + epsC;
        if (w) q *= w[j];
        swq += q;
        swqx += static_cast<double>(q) * (m - x[j]);
      }
    } else if (eps != A(0)) {
      V a(0);
      j = 0;
      if (w) {
        for (; j + W <= C; j += W) a = at::vec::fmadd(V::loadu(w + j), vmx - V::loadu(x + j), a);
        sx = hsum_d(a);
        for (; j < C; ++j) sx += static_cast<double>(w[j]) * (m - x[j]);
      } else {
        for (; j + W <= C; j += W) a = a + (vmx - V::loadu(x + j));
        sx = hsum_d(a);
        for (; j < C; ++j) sx += m - x[j];
      }
    }
    // pass 2: sum exp(x - m), exp stored in the gradient row
    A* g = nullptr;
    if (gout) g = std::is_same_v<scalar_t, A> ? reinterpret_cast<A*>(gout) : gbuf;
    double s;
    {
      const V vmm(m);
      V acc(0);
      j = 0;
      if (g) {
        for (; j + W <= C; j += W) {
          const V e = vexp(V::loadu(x + j) - vmm);
          e.store(g + j);
          acc = acc + e;
        }
      } else {
        for (; j + W <= C; j += W) acc = acc + vexp(V::loadu(x + j) - vmm);
      }
      s = hsum_d(acc);
      for (; j < C; ++j) {
        const A e = std::exp(x[j] - m);
        if (g) g[j] = e;
        s += e;
      }
    }
    const double ls = std::log(s);  // lse - m
    A loss;
    A a, b = 0, ct = 0;
    if (P.prob) {
      loss = static_cast<A>(swq * ls + swqx);
      a = static_cast<A>(swq * static_cast<double>(scale) / s);
    } else {
      const A wt = w ? w[t] : A(1);
      const double e = P.eps, eC = e / static_cast<double>(C);
      const double nll = static_cast<double>(wt) * (ls + (static_cast<double>(m) - static_cast<double>(x[t])));
      loss = static_cast<A>(e != 0.0 ? (1.0 - e) * nll + eC * (static_cast<double>(wsum) * ls + sx) : nll);
      a = static_cast<A>(((1.0 - e) * wt + eC * wsum) * static_cast<double>(scale) / s);
      b = epsC * scale;
      ct = (A(1) - eps) * wt * scale;
    }
    if (!g) return loss;
    // pass 3: the gradient, in place over the exp row
    j = 0;
    const V va(a), vb(b);
    if (P.prob) {
      const A one_m = A(1) - eps;
      for (; j + W <= C; j += W) {
        V q = (V::loadu(p + j) * V(one_m) + V(epsC)) * V(scale);
        if (w) q = q * V::loadu(w + j);
        (V::loadu(g + j) * va - q).store(g + j);
      }
      for (; j < C; ++j) {
        A q = (p[j] * one_m + epsC) * scale;
        if (w) q *= w[j];
        g[j] = g[j] * a - q;
      }
    } else if (w && b != A(0)) {
      for (; j + W <= C; j += W) (V::loadu(g + j) * va - V::loadu(w + j) * vb).store(g + j);
      for (; j < C; ++j) g[j] = g[j] * a - w[j] * b;
      g[t] -= ct;
    } else {
      for (; j + W <= C; j += W) (V::loadu(g + j) * va - vb).store(g + j);
      for (; j < C; ++j) g[j] = g[j] * a - b;
      g[t] -= ct;
    }
    if constexpr (!std::is_same_v<scalar_t, A>) at::vec::convert(gbuf, gout, C);
    return loss;
  }
};

// ---- the driver ---------------------------------------------------------------------

template <typename scalar_t>
void ce_fwd_impl(const Params& P, const at::Tensor& input, const at::Tensor& target,
                 const std::optional<at::Tensor>& weight, at::Tensor& loss, at::Tensor& grad) {
  using A = acc_type<scalar_t>;
  const int64_t N = P.N, C = P.C, D = P.D, R = N * D;
  const scalar_t* x = input.const_data_ptr<scalar_t>();
  scalar_t* g = P.grad ? grad.mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* lo = P.reduction == 0 ? loss.mutable_data_ptr<scalar_t>() : nullptr;
  const int64_t* tg = P.prob ? nullptr : target.const_data_ptr<int64_t>();
  const scalar_t* pt = P.prob ? target.const_data_ptr<scalar_t>() : nullptr;

  std::vector<A> wv;
  A wsum = static_cast<A>(C);
  if (weight.has_value() && weight->defined()) {
    const at::Tensor wc = weight->contiguous();
    const scalar_t* wp = wc.const_data_ptr<scalar_t>();
    wv.resize(C);
    wsum = 0;
    for (int64_t c = 0; c < C; ++c) {
      wv[c] = static_cast<A>(wp[c]);
      wsum += wv[c];
    }
  }
  const A* w = wv.empty() ? nullptr : wv.data();

  // prepass: target range (torch's IndexError) and the mean's denominator
  double denom = static_cast<double>(R);
  if (!P.prob) {
    double tw = 0;
    for (int64_t r = 0; r < R; ++r) {
      const int64_t t = tg[r];
      if (t == P.ignore_index) continue;
      TORCH_CHECK_INDEX(t >= 0 && t < C, "Target ", t, " is out of bounds.");
      tw += w ? static_cast<double>(w[t]) : 1.0;
    }
    denom = tw;
  }
  const A scale = P.reduction == 1 ? static_cast<A>(1.0 / denom) : A(1);

  const bool rows_unit = D == 1 && (P.sC == 1 || C == 1);
  // chunks of rows: a size that depends on C only (thread-count independent sums)
  const int64_t chunk = rows_unit ? std::max<int64_t>(1, 8192 / std::max<int64_t>(C, 1))
                                  : kTile * std::max<int64_t>(1, 512 / std::max<int64_t>(C, 1));
  const int64_t nchunks = (R + chunk - 1) / chunk;
  std::vector<double> partial(nchunks, 0.0);
  const A eps = static_cast<A>(P.eps);
  const A epsC = eps / static_cast<A>(C);

  auto ignored = [&](int64_t r) { return !P.prob && tg[r] == P.ignore_index; };

  if (rows_unit) {
    RowKernel<scalar_t> K{P, w, wsum, scale};
    at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
      constexpr bool kWide = !std::is_same_v<scalar_t, A>;
      std::vector<A> xbuf(kWide ? C : 0), gbuf(kWide ? C : 0), pbuf(kWide && P.prob ? C : 0);
      for (int64_t ch = cb; ch < ce; ++ch) {
        double acc = 0;
        const int64_t r1 = std::min(R, (ch + 1) * chunk);
        for (int64_t r = ch * chunk; r < r1; ++r) {
          scalar_t* grow = g ? g + r * C : nullptr;
          A l;
          if (ignored(r)) {
            if (grow) std::fill(grow, grow + C, scalar_t(0));
            l = 0;
          } else {
            l = K.run(x + r * P.sN, P.prob ? 0 : tg[r], P.prob ? pt + r * C : nullptr, grow, xbuf.data(),
                      gbuf.data(), pbuf.data());
          }
          if (lo) lo[r] = static_cast<scalar_t>(l);
          acc += static_cast<double>(l);
        }
        partial[ch] = acc;
      }
    });
  } else {
    // strided path: tiles of kTile consecutive rows, classes in the outer loop
    at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
      // scalar code: the row sums accumulate in double (one add chain per row, no vector lanes to
      // spread the rounding over)
      int64_t xo[kTile], go[kTile], tt[kTile];
      A m[kTile], xt[kTile], los[kTile];
      double s[kTile], sx[kTile], swq[kTile], swqx[kTile];
      bool ign[kTile];
      for (int64_t ch = cb; ch < ce; ++ch) {
        double acc = 0;
        const int64_t r1 = std::min(R, (ch + 1) * chunk);
        for (int64_t r0 = ch * chunk; r0 < r1; r0 += kTile) {
          const int64_t T = std::min(kTile, r1 - r0);
          for (int64_t k = 0; k < T; ++k) {
            const int64_t r = r0 + k, n = r / D, d = r % D;
            xo[k] = n * P.sN + d * P.sD;
            go[k] = n * C * D + d;
            ign[k] = ignored(r);
            tt[k] = P.prob || ign[k] ? 0 : tg[r];
            m[k] = -std::numeric_limits<A>::infinity();
            s[k] = sx[k] = swq[k] = swqx[k] = 0;
          }
          auto X = [&](int64_t k, int64_t c) { return static_cast<A>(x[xo[k] + c * P.sC]); };
          auto Qd = [&](int64_t k, int64_t c) {  // q in double, for the sums
            const double q = static_cast<double>(pt[go[k] + c * D]) * (1.0 - P.eps) + P.eps / static_cast<double>(C);
            return w ? q * static_cast<double>(w[c]) : q;
          };
          auto Q = [&](int64_t k, int64_t c) {
            A q = static_cast<A>(pt[go[k] + c * D]) * (A(1) - eps) + epsC;
            return w ? q * w[c] : q;
          };
          if (P.log_input) {
            for (int64_t k = 0; k < T; ++k) {
              const A wt = w ? w[tt[k]] : A(1);
              los[k] = ign[k] ? A(0) : -wt * X(k, tt[k]);
              if (g) {
                for (int64_t c = 0; c < C; ++c) g[go[k] + c * D] = scalar_t(0);
                if (!ign[k]) g[go[k] + tt[k] * D] = static_cast<scalar_t>(-wt * scale);
              }
            }
          } else {
            for (int64_t c = 0; c < C; ++c) {
              for (int64_t k = 0; k < T; ++k) {
                const A v = X(k, c);
                m[k] = (v > m[k] || std::isnan(v)) ? v : m[k];
              }
            }
            for (int64_t c = 0; c < C; ++c) {
              for (int64_t k = 0; k < T; ++k) {
                const A v = X(k, c);
                s[k] += static_cast<double>(std::exp(v - m[k]));
                const double mx = static_cast<double>(m[k]) - static_cast<double>(v);  // >= 0
                if (P.prob) {
                  const double q = Qd(k, c);
                  swq[k] += q;
                  swqx[k] += q * mx;
                } else if (eps != A(0)) {
                  sx[k] += w ? static_cast<double>(w[c]) * mx : mx;
                }
              }
            }
            A a[kTile];
            for (int64_t k = 0; k < T; ++k) {
              const double ls = std::log(s[k]);  // lse - m
              if (P.prob) {
                los[k] = static_cast<A>(swq[k] * ls + swqx[k]);
                a[k] = static_cast<A>(swq[k] * static_cast<double>(scale) / s[k]);
              } else {
                const double wt = w ? static_cast<double>(w[tt[k]]) : 1.0;
                const double e = P.eps, eC = e / static_cast<double>(C);
                xt[k] = X(k, tt[k]);
                const double nll = wt * (ls + (static_cast<double>(m[k]) - static_cast<double>(xt[k])));
                los[k] = static_cast<A>(e != 0.0 ? (1.0 - e) * nll + eC * (static_cast<double>(wsum) * ls + sx[k])
                                                 : nll);
                a[k] = static_cast<A>(((1.0 - e) * wt + eC * static_cast<double>(wsum)) * static_cast<double>(scale) /
                                      s[k]);
              }
              if (ign[k]) los[k] = 0;
            }
            if (g) {
              const A b0 = epsC * scale;
              for (int64_t c = 0; c < C; ++c) {
                for (int64_t k = 0; k < T; ++k) {
                  A v;
                  if (ign[k]) {
                    v = 0;
                  } else {
                    const A e = std::exp(X(k, c) - m[k]);
                    if (P.prob) {
                      v = e * a[k] - Q(k, c) * scale;
                    } else {
                      v = e * a[k] - (w ? w[c] * b0 : b0);
                      if (c == tt[k]) v -= (A(1) - eps) * (w ? w[c] : A(1)) * scale;
                    }
                  }
                  g[go[k] + c * D] = static_cast<scalar_t>(v);
                }
              }
            }
          }
          for (int64_t k = 0; k < T; ++k) {
            if (lo) lo[r0 + k] = static_cast<scalar_t>(los[k]);
            acc += static_cast<double>(los[k]);
          }
        }
        partial[ch] = acc;
      }
    });
  }
  if (P.reduction != 0) {
    double tot = 0;
    for (int64_t ch = 0; ch < nchunks; ++ch) tot += partial[ch];
    if (P.reduction == 1) tot = tot / denom;  // 0 / 0 = NaN for an empty or all-ignored batch, as torch
    loss.fill_(static_cast<scalar_t>(static_cast<A>(tot)));
  }
}

void check_dtype(const at::Tensor& t, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK_NOT_IMPLEMENTED(st == at::kFloat || st == at::kDouble || st == at::kBFloat16,
                              "ce_fwd: ", name, ": not implemented for '", c10::toString(st),
                              "' (expected float32, float64 or bfloat16)");
}

std::tuple<at::Tensor, at::Tensor> ce_fwd(const at::Tensor& input, const at::Tensor& target,
                                          const std::optional<at::Tensor>& weight, int64_t reduction,
                                          int64_t ignore_index, double label_smoothing, bool log_input,
                                          bool compute_grad) {
  TORCH_CHECK(input.dim() == 3, "ce_fwd: input: expected a 3-D tensor [N, C, D], got ", input.dim(), "-D of size ",
              input.sizes());
  TORCH_CHECK(input.device().is_cpu(), "ce_fwd: input: expected a CPU tensor, got one on ", input.device());
  check_dtype(input, "input");
  TORCH_CHECK(reduction >= 0 && reduction <= 2, "ce_fwd: reduction: expected 0 (none), 1 (mean) or 2 (sum), got ",
              reduction);
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0,
              "label_smoothing must be between 0.0 and 1.0. Got: ", label_smoothing);
  const int64_t N = input.size(0), C = input.size(1), D = input.size(2);
  TORCH_CHECK(C > 0 || N * D == 0, "ce_fwd: input: expected at least one class, got size ", input.sizes());
  const bool prob = target.is_floating_point();
  TORCH_CHECK(target.device() == input.device(), "ce_fwd: target: expected a tensor on ", input.device(),
              ", got one on ", target.device());
  if (prob) {
    TORCH_CHECK(!log_input, "ce_fwd: target: nll_loss takes class indices (int64), got ", target.scalar_type());
    TORCH_CHECK(target.sizes() == input.sizes(), "ce_fwd: target: expected shape ", input.sizes(),
                " (the shape of input) for class probabilities, got ", target.sizes());
    TORCH_CHECK(target.scalar_type() == input.scalar_type(), "ce_fwd: target: expected dtype ",
                input.scalar_type(), " (the dtype of input), got ", target.scalar_type());
    TORCH_CHECK(ignore_index < 0, "ignore_index is not supported for floating point target");
  } else {
    TORCH_CHECK(target.scalar_type() == at::kLong, "expected target dtype to be Long, but got ",
                target.scalar_type());
    TORCH_CHECK(target.dim() == 2 && target.size(0) == N && target.size(1) == D, "ce_fwd: target: expected shape [",
                N, ", ", D, "] (input's [N, D]), got ", target.sizes());
  }
  if (weight.has_value() && weight->defined()) {
    TORCH_CHECK(weight->dim() == 1 && weight->numel() == C, "weight tensor should be defined either for all ", C,
                " classes or no classes but got weight tensor of shape: ", weight->sizes());
    TORCH_CHECK(weight->scalar_type() == input.scalar_type(), "expected scalar type ", input.scalar_type(),
                " but found ", weight->scalar_type());
    TORCH_CHECK(weight->device() == input.device(), "ce_fwd: weight: expected a tensor on ", input.device());
  }
  Params P{N, C, D, input.stride(0), input.stride(1), input.stride(2), reduction, ignore_index, label_smoothing,
           log_input, prob, compute_grad};
  const at::Tensor tgt = target.contiguous();
  at::Tensor loss = reduction == 0 ? new_output({N, D}, input.options()) : new_output({}, input.options());
  at::Tensor grad = compute_grad ? new_output({N, C, D}, input.options()) : at::empty({0}, input.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "ce_fwd", [&] {
    ce_fwd_impl<scalar_t>(P, input, tgt, weight, loss, grad);
  });
  return {loss, grad};
}

template <typename scalar_t>
void ce_bwd_impl(const at::Tensor& go, at::Tensor& grad, int64_t reduction) {
  using A = acc_type<scalar_t>;
  using V = Vectorized<A>;
  constexpr int64_t W = V::size();
  const int64_t N = grad.size(0), C = grad.size(1), D = grad.size(2);
  scalar_t* g = grad.mutable_data_ptr<scalar_t>();
  const scalar_t* gp = go.const_data_ptr<scalar_t>();
  // scale a run of n elements by f
  auto scale_run = [](scalar_t* p, int64_t n, A f) {
    int64_t j = 0;
    if constexpr (std::is_same_v<scalar_t, A>) {
      for (; j + W <= n; j += W) (V::loadu(p + j) * V(f)).store(p + j);
    } else {
      for (; j + W <= n; j += W) {
        V v;
        at::vec::load_to_float(p + j, v);
        A tmp[W];
        (v * V(f)).store(tmp);
        at::vec::convert(tmp, p + j, W);
      }
    }
    for (; j < n; ++j) p[j] = static_cast<scalar_t>(static_cast<A>(p[j]) * f);
  };
  if (reduction != 0) {
    const A f = static_cast<A>(gp[0]);
    if (f == A(1)) return;
    const int64_t n = grad.numel();
    at::parallel_for(0, n, 32768, [&](int64_t b, int64_t e) { scale_run(g + b, e - b, f); });
    return;
  }
  if (D == 1) {
    at::parallel_for(0, N, std::max<int64_t>(1, 32768 / std::max<int64_t>(C, 1)), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) scale_run(g + r * C, C, static_cast<A>(gp[r]));
    });
    return;
  }
  at::parallel_for(0, N * C, std::max<int64_t>(1, 32768 / D), [&](int64_t b, int64_t e) {
    for (int64_t nc = b; nc < e; ++nc) {
      const int64_t n = nc / C;
      scalar_t* p = g + nc * D;
      const scalar_t* f = gp + n * D;
      for (int64_t d = 0; d < D; ++d) p[d] = static_cast<scalar_t>(static_cast<A>(p[d]) * static_cast<A>(f[d]));
    }
  });
}

void ce_bwd(const at::Tensor& grad_output, const at::Tensor& grad_input, int64_t reduction) {
  TORCH_CHECK(grad_input.dim() == 3 && grad_input.is_contiguous(),
              "ce_bwd: grad_input: expected the contiguous [N, C, D] gradient saved by ce_fwd, got size ",
              grad_input.sizes());
  TORCH_CHECK(grad_input.device().is_cpu(), "ce_bwd: grad_input: expected a CPU tensor");
  check_dtype(grad_input, "grad_input");
  TORCH_CHECK(grad_output.scalar_type() == grad_input.scalar_type(), "ce_bwd: grad_output: expected dtype ",
              grad_input.scalar_type(), " (the dtype of grad_input), got ", grad_output.scalar_type());
  if (reduction == 0) {
    TORCH_CHECK(grad_output.dim() == 2 && grad_output.size(0) == grad_input.size(0) &&
                    grad_output.size(1) == grad_input.size(2),
                "ce_bwd: grad_output: expected shape [", grad_input.size(0), ", ", grad_input.size(2),
                "] for reduction 'none', got ", grad_output.sizes());
  } else {
    TORCH_CHECK(grad_output.numel() == 1, "ce_bwd: grad_output: expected a scalar for reduction mean/sum, got ",
                grad_output.sizes());
  }
  const at::Tensor go = grad_output.contiguous();
  at::Tensor g = grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, g.scalar_type(), "ce_bwd", [&] {
    ce_bwd_impl<scalar_t>(go, g, reduction);
  });
}

}  // namespace
}  // namespace mte

TORCH_LIBRARY_IMPL(minitorch_ext, CPU, m) {
  m.impl("ce_fwd", &mte::ce_fwd);
  m.impl("ce_bwd", &mte::ce_bwd);
}
