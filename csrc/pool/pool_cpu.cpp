// Pooling on the CPU: max_pool2d (with int64 indices), avg_pool2d, adaptive_avg_pool2d,
// forward and backward (schemas in csrc/ops.cpp; 1-D pools are these with H = 1).
//
// Semantics are torch's, element for element:
//   max: the window is scanned row-major (ih outer, iw inner) from its first in-bounds
//     element, and an element replaces the running max when `v > max || isnan(v)`, so
//     ties keep the first position and a NaN window reports its last NaN; the index is
//     the flat ih*W+iw inside the (n, c) plane. Backward adds grad_output[o] to
//     grad_input[indices[o]].
//   avg: the window [ih0, ih0+kH) x [iw0, iw0+kW) clipped to the padded input gives the
//     count_include_pad divisor, clipped to the input the summed elements and the
//     other divisor; divisor_override replaces both; sum / divisor.
//   adaptive avg: rows [floor(o*H/Ho), ceil((o+1)*H/Ho)), the same for columns; sum / kh / kw.
//
// Layouts. The output (and grad_input) keep the input's suggested memory format.
//   NCHW: one task per (n, c) plane. The forward vectorizes along the output row: for
//     the columns whose window lies inside the row, one vector holds V neighbouring
//     outputs, and each window tap is one load of V inputs (stride 1: a plain load;
//     stride 2: two loads and a deinterleave; larger strides: a gather into L1), so the
//     row-major tap order, and with it torch's indices and rounding, is kept exactly;
//     the border columns take the scalar loop. bfloat16 planes are widened to float
//     once into an L2-resident buffer.
//   NHWC (channels_last): one task per output row (n, oh) forward, per (n, channel
//     block) backward; vectors run along C, the unit-stride direction, so every tap is
//     a plain load and the index is the same for all lanes.
//   Backward scatters by the indices (max) or by the windows (avg) without atomics: a
//     task owns its plane (NCHW) or its image's channel block (NHWC), so the result is
//     deterministic and independent of the thread count. bfloat16 accumulates in a float
//     buffer of the owned region and is rounded once.
// Memory traffic: the forward reads the input once (each input row stays in L1/L2 while
//   the <= kH output rows that need it are made) and writes the output (and indices)
//   once; the backward reads grad_output (and indices) once and writes grad_input once.
// The trick: keeping torch's tap order inside each lane makes the vector kernel
//   bitwise torch's (values, indices, NaN handling) while it moves V outputs per
//   instruction; ownership instead of atomics makes the backward repeatable.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "common/alloc.h"

namespace mte {
namespace {

using at::vec::Vectorized;

template <typename T>
using acc_type = std::conditional_t<std::is_same_v<T, double>, double, float>;
// index lanes the size of the accumulator lanes (bit masks are shared)
template <typename A>
using lane_idx = std::conditional_t<std::is_same_v<A, double>, int64_t, int32_t>;

template <typename scalar_t>
inline Vectorized<acc_type<scalar_t>> load_acc(const scalar_t* p) {
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    Vectorized<float> v;
    at::vec::load_to_float(p, v);
    return v;
  } else {
    return Vectorized<scalar_t>::loadu(p);
  }
}

template <typename scalar_t>
inline void store_acc(const Vectorized<acc_type<scalar_t>>& v, scalar_t* p) {
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    float tmp[Vectorized<float>::size()];
    v.store(tmp);
    at::vec::convert(tmp, p, Vectorized<float>::size());
  } else {
    v.store(p);
  }
}

template <typename I>
inline void store_idx(const Vectorized<I>& v, int64_t* p) {
  if constexpr (std::is_same_v<I, int64_t>) {
    v.store(p);
  } else {
    I tmp[Vectorized<I>::size()];
    v.store(tmp);
    for (int64_t l = 0; l < Vectorized<I>::size(); ++l) p[l] = tmp[l];
  }
}

// Partial vectors (the last C % V channels of a channels_last pixel) through an L1 buffer.
template <typename scalar_t>
inline Vectorized<acc_type<scalar_t>> load_acc_n(const scalar_t* p, int64_t n) {
  using A = acc_type<scalar_t>;
  A tmp[Vectorized<A>::size()] = {};
  for (int64_t l = 0; l < n; ++l) tmp[l] = static_cast<A>(p[l]);
  return Vectorized<A>::loadu(tmp);
}

template <typename scalar_t>
inline void store_acc_n(const Vectorized<acc_type<scalar_t>>& v, scalar_t* p, int64_t n) {
  using A = acc_type<scalar_t>;
  A tmp[Vectorized<A>::size()];
  v.store(tmp);
  for (int64_t l = 0; l < n; ++l) p[l] = static_cast<scalar_t>(tmp[l]);
}

template <typename I>
inline void store_idx_n(const Vectorized<I>& v, int64_t* p, int64_t n) {
  I tmp[Vectorized<I>::size()];
  v.store(tmp);
  for (int64_t l = 0; l < n; ++l) p[l] = tmp[l];
}

// ---- geometry ---------------------------------------------------------------------

struct Geo {
  int64_t N, C, H, W, Ho, Wo;
  int64_t kH = 1, kW = 1, sH = 1, sW = 1, pH = 0, pW = 0, dH = 1, dW = 1;
};

// torch's pooling_output_shape: floor or ceil division, and under ceil_mode the last
// window must start inside the input or its left padding.
int64_t out_size(int64_t in, int64_t k, int64_t pad, int64_t stride, int64_t dil, bool ceil) {
  const int64_t num = in + 2 * pad - dil * (k - 1) - 1 + (ceil ? stride - 1 : 0);
  int64_t out = (num >= 0 ? num / stride : -((-num + stride - 1) / stride)) + 1;
  if (ceil && (out - 1) * stride >= in + pad) --out;
  return out;
}

inline int64_t ad_start(int64_t o, int64_t out, int64_t in) { return (o / out) * in + ((o % out) * in) / out; }
inline int64_t ad_end(int64_t o, int64_t out, int64_t in) { return 1 + ((o + 1) * in - 1) / out; }

void check_input(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": input: expected a 4-D tensor [N, C, H, W], got ", x.dim(), "-D of size ",
              x.sizes());
  const auto st = x.scalar_type();
  TORCH_CHECK_NOT_IMPLEMENTED(st == at::kFloat || st == at::kDouble || st == at::kBFloat16, op,
                              ": input: not implemented for '", c10::toString(st),
                              "' (expected float32, float64 or bfloat16)");
  TORCH_CHECK(x.device().is_cpu(), op, ": input: expected a CPU tensor, got one on ", x.device());
  for (int64_t d = 1; d < 4; ++d)
    TORCH_CHECK(x.size(d) > 0, op, ": input: expected non-zero sizes for C, H and W, got ", x.sizes());
}

void check_window(at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p, at::IntArrayRef d, const char* op) {
  TORCH_CHECK(k.size() == 2 && s.size() == 2 && p.size() == 2 && d.size() == 2, op,
              ": kernel_size, stride, padding and dilation must have 2 elements each");
  TORCH_CHECK(k[0] > 0 && k[1] > 0, op, ": kernel size should be greater than zero, but got kH: ", k[0], " kW: ",
              k[1]);
  TORCH_CHECK(s[0] > 0 && s[1] > 0, op, ": stride should be greater than zero, but got dH: ", s[0], " dW: ", s[1]);
  TORCH_CHECK(d[0] > 0 && d[1] > 0, op, ": dilation should be greater than zero, but got dilationH: ", d[0],
              " dilationW: ", d[1]);
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(p[i] >= 0, op, ": pad must be non-negative, but got pad: ", p[i]);
    TORCH_CHECK(p[i] <= ((k[i] - 1) * d[i] + 1) / 2, op,
                ": pad should be at most half of effective kernel size, but got pad=", p[i], ", kernel_size=", k[i],
                " and dilation=", d[i]);
  }
}

Geo make_geo(const at::Tensor& x, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p, at::IntArrayRef d,
             bool ceil, const char* op) {
  check_input(x, op);
  check_window(k, s, p, d, op);
  Geo g;
  g.N = x.size(0), g.C = x.size(1), g.H = x.size(2), g.W = x.size(3);
  g.kH = k[0], g.kW = k[1], g.sH = s[0], g.sW = s[1], g.pH = p[0], g.pW = p[1], g.dH = d[0], g.dW = d[1];
  g.Ho = out_size(g.H, g.kH, g.pH, g.sH, g.dH, ceil);
  g.Wo = out_size(g.W, g.kW, g.pW, g.sW, g.dW, ceil);
  TORCH_CHECK(g.Ho >= 1 && g.Wo >= 1, op, ": Given input size: (", g.C, "x", g.H, "x", g.W,
              "). Calculated output size: (", g.C, "x", g.Ho, "x", g.Wo, "). Output size is too small");
  return g;
}

bool channels_last(const at::Tensor& x) { return x.suggest_memory_format() == at::MemoryFormat::ChannelsLast; }

// An [N, C, h, w] tensor in the given layout (channels_last: allocated as [N, h, w, C]).
at::Tensor alloc4(int64_t N, int64_t C, int64_t h, int64_t w, bool cl, const at::TensorOptions& o, bool zero) {
  at::Tensor t = cl ? new_output({N, h, w, C}, o).permute({0, 3, 1, 2}) : new_output({N, C, h, w}, o);
  if (zero) t.zero_();
  return t;
}

// ---- the NCHW row kernels -----------------------------------------------------------

// The columns [ow_a, ow_b) whose whole window (plus `extra` elements read past it by
// the stride-2 vector load) lies inside [0, W).
inline void interior(int64_t W, int64_t Wo, int64_t k, int64_t s, int64_t p, int64_t d, int64_t extra,
                     int64_t& a, int64_t& b) {
  a = std::min(Wo, (p + s - 1) / s);
  const int64_t num = W - 1 - extra + p - (k - 1) * d;
  b = num < 0 ? 0 : std::min(Wo, num / s + 1);
  if (b < a) b = a;
}

// V inputs row[0], row[s], ..., row[(V-1)s] as a vector (s == 2 reads 2V elements).
template <typename A>
inline Vectorized<A> load_strided(const A* row, int64_t s) {
  using V = Vectorized<A>;
  if (s == 1) return V::loadu(row);
  if (s == 2) return at::vec::deinterleave2(V::loadu(row), V::loadu(row + V::size())).first;
  A tmp[V::size()];
  for (int64_t l = 0; l < V::size(); ++l) tmp[l] = row[l * s];
  return V::loadu(tmp);
}

// One max-pool plane: X (H*W, acc type) -> Y (Ho*Wo), Ind (Ho*Wo).
template <typename scalar_t, typename A>
void max_plane(const A* X, scalar_t* Y, int64_t* Ind, const Geo& g) {
  using V = Vectorized<A>;
  using I = lane_idx<A>;
  using VI = Vectorized<I>;
  constexpr int64_t L = V::size();
  int64_t ow_a, ow_b;
  interior(g.W, g.Wo, g.kW, g.sW, g.pW, g.dW, g.sW == 2 ? 1 : 0, ow_a, ow_b);
  const bool vec_ok = g.H * g.W < (int64_t(1) << 30);  // lane indices are int32 for float
  const VI lanes = VI::arange(I(0), I(g.sW));
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    int64_t ih0 = oh * g.sH - g.pH;
    const int64_t ih1 = std::min(ih0 + (g.kH - 1) * g.dH + 1, g.H);
    while (ih0 < 0) ih0 += g.dH;
    scalar_t* y = Y + oh * g.Wo;
    int64_t* ind = Ind + oh * g.Wo;
    auto scalar_col = [&](int64_t ow) {
      int64_t iw0 = ow * g.sW - g.pW;
      const int64_t iw1 = std::min(iw0 + (g.kW - 1) * g.dW + 1, g.W);
      while (iw0 < 0) iw0 += g.dW;
      int64_t mi = ih0 * g.W + iw0;
      A mv = -std::numeric_limits<A>::infinity();
      for (int64_t ih = ih0; ih < ih1; ih += g.dH)
        for (int64_t iw = iw0; iw < iw1; iw += g.dW) {
          const int64_t idx = ih * g.W + iw;
          const A v = X[idx];
          if (v > mv || std::isnan(v)) { mv = v; mi = idx; }
        }
      y[ow] = static_cast<scalar_t>(mv);
      ind[ow] = mi;
    };
    int64_t ow = 0;
    for (; ow < ow_a; ++ow) scalar_col(ow);
    if (vec_ok) {
      for (; ow + L <= ow_b; ow += L) {
        const int64_t iw0 = ow * g.sW - g.pW;
        V mv(-std::numeric_limits<A>::infinity());
        VI mi = VI(I(ih0 * g.W + iw0)) + lanes;
        for (int64_t ih = ih0; ih < ih1; ih += g.dH) {
          const A* row = X + ih * g.W;
          for (int64_t kw = 0; kw < g.kW; ++kw) {
            const int64_t iw = iw0 + kw * g.dW;
            const V v = load_strided(row + iw, g.sW);
            const V m = (v > mv) | v.isnan();
            mv = V::blendv(mv, v, m);
            mi = VI::blendv(mi, VI(I(ih * g.W + iw)) + lanes, at::vec::cast<I>(m));
          }
        }
        store_acc<scalar_t>(mv, y + ow);
        store_idx(mi, ind + ow);
      }
    }
    for (; ow < g.Wo; ++ow) scalar_col(ow);
  }
}

struct AvgOpt {
  bool count_include_pad;
  std::optional<int64_t> divisor_override;
};

// The window of output (oh, ow) clipped to the input, and its divisor (0: empty window).
inline int64_t avg_window(const Geo& g, const AvgOpt& o, int64_t oh, int64_t ow, int64_t& ih0, int64_t& ih1,
                          int64_t& iw0, int64_t& iw1) {
  ih0 = oh * g.sH - g.pH;
  iw0 = ow * g.sW - g.pW;
  ih1 = std::min(ih0 + g.kH, g.H + g.pH);
  iw1 = std::min(iw0 + g.kW, g.W + g.pW);
  const int64_t pool = (ih1 - ih0) * (iw1 - iw0);
  ih0 = std::max<int64_t>(ih0, 0), iw0 = std::max<int64_t>(iw0, 0);
  ih1 = std::min(ih1, g.H), iw1 = std::min(iw1, g.W);
  if (ih0 >= ih1 || iw0 >= iw1) return 0;
  if (o.divisor_override) return *o.divisor_override;
  return o.count_include_pad ? pool : (ih1 - ih0) * (iw1 - iw0);
}

template <typename scalar_t, typename A>
void avg_plane(const A* X, scalar_t* Y, const Geo& g, const AvgOpt& o) {
  using V = Vectorized<A>;
  constexpr int64_t L = V::size();
  int64_t ow_a, ow_b;
  interior(g.W, g.Wo, g.kW, g.sW, g.pW, 1, g.sW == 2 ? 1 : 0, ow_a, ow_b);
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    scalar_t* y = Y + oh * g.Wo;
    auto scalar_col = [&](int64_t ow) {
      int64_t ih0, ih1, iw0, iw1;
      const int64_t div = avg_window(g, o, oh, ow, ih0, ih1, iw0, iw1);
      if (div == 0) { y[ow] = scalar_t(0); return; }
      A sum = 0;
      for (int64_t ih = ih0; ih < ih1; ++ih)
        for (int64_t iw = iw0; iw < iw1; ++iw) sum += X[ih * g.W + iw];
      y[ow] = static_cast<scalar_t>(sum / static_cast<A>(div));
    };
    int64_t ow = 0;
    for (; ow < ow_a; ++ow) scalar_col(ow);
    if (ow + L <= ow_b) {
      // the interior columns share the row range and the divisor
      int64_t ih0, ih1, iw0, iw1;
      const int64_t div = avg_window(g, o, oh, ow, ih0, ih1, iw0, iw1);
      const V vdiv(static_cast<A>(div));
      for (; ow + L <= ow_b; ow += L) {
        const int64_t iws = ow * g.sW - g.pW;
        V sum(A(0));
        for (int64_t ih = ih0; ih < ih1; ++ih) {
          const A* row = X + ih * g.W + iws;
          for (int64_t kw = 0; kw < g.kW; ++kw) sum = sum + load_strided(row + kw, g.sW);
        }
        store_acc<scalar_t>(div == 0 ? V(A(0)) : sum / vdiv, y + ow);
      }
    }
    for (; ow < g.Wo; ++ow) scalar_col(ow);
  }
}

template <typename A>
inline A row_sum(const A* p, int64_t n) {
  using V = Vectorized<A>;
  constexpr int64_t L = V::size();
  if (n < L) {
    A s = 0;
    for (int64_t i = 0; i < n; ++i) s += p[i];
    return s;
  }
  V acc(A(0));
  int64_t i = 0;
  for (; i + L <= n; i += L) acc = acc + V::loadu(p + i);
  A s = at::vec::vec_reduce_all<A>([](const V& a, const V& b) { return a + b; }, acc);
  for (; i < n; ++i) s += p[i];
  return s;
}

template <typename scalar_t, typename A>
void adaptive_plane(const A* X, scalar_t* Y, const Geo& g) {
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    const int64_t ih0 = ad_start(oh, g.Ho, g.H), ih1 = ad_end(oh, g.Ho, g.H);
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      const int64_t iw0 = ad_start(ow, g.Wo, g.W), iw1 = ad_end(ow, g.Wo, g.W);
      A sum = 0;
      for (int64_t ih = ih0; ih < ih1; ++ih) sum += row_sum(X + ih * g.W + iw0, iw1 - iw0);
      Y[oh * g.Wo + ow] = static_cast<scalar_t>(sum / A(ih1 - ih0) / A(iw1 - iw0));
    }
  }
}

// f(plane index, acc-type plane pointer) over all N*C planes of a contiguous x; bfloat16
// planes are widened into a per-task buffer first.
template <typename scalar_t, typename F>
void for_planes_in(const at::Tensor& x, F f) {
  using A = acc_type<scalar_t>;
  const int64_t planes = x.size(0) * x.size(1), HW = x.size(2) * x.size(3);
  const scalar_t* X = x.data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, HW));
  at::parallel_for(0, planes, grain, [&](int64_t b, int64_t e) {
    std::vector<A> buf;
    for (int64_t p = b; p < e; ++p) {
      if constexpr (std::is_same_v<scalar_t, A>) {
        f(p, X + p * HW);
      } else {
        buf.resize(HW);
        at::vec::convert(X + p * HW, buf.data(), HW);
        f(p, buf.data());
      }
    }
  });
}

// Backward helper, NCHW: f(plane, acc-type zeroed plane G, written to grad_input after).
template <typename scalar_t, typename F>
void for_planes_out(at::Tensor& gi, F f) {
  using A = acc_type<scalar_t>;
  const int64_t planes = gi.size(0) * gi.size(1), HW = gi.size(2) * gi.size(3);
  scalar_t* GI = gi.data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, HW));
  at::parallel_for(0, planes, grain, [&](int64_t b, int64_t e) {
    std::vector<A> buf;
    for (int64_t p = b; p < e; ++p) {
      if constexpr (std::is_same_v<scalar_t, A>) {
        std::fill(GI + p * HW, GI + (p + 1) * HW, A(0));
        f(p, GI + p * HW);
      } else {
        buf.assign(HW, A(0));
        f(p, buf.data());
        at::vec::convert(buf.data(), GI + p * HW, HW);
      }
    }
  });
}

// Backward helper, NHWC: tasks (n, channel block [c0, c1)); f(n, c0, c1, G, ps) where
// G[(ih*W + iw)*ps + (c - c0)] is the zeroed acc-type gradient of pixel (ih, iw).
template <typename scalar_t, typename F>
void for_blocks_out(at::Tensor& gi, F f) {
  using A = acc_type<scalar_t>;
  const int64_t N = gi.size(0), C = gi.size(1), HW = gi.size(2) * gi.size(3);
  constexpr int64_t L = Vectorized<A>::size();
  // blocks of whole vectors, at most 64 channels, at least 2 tasks per thread when possible
  int64_t cb = std::min<int64_t>(C, 64);
  const int64_t want = 2 * at::get_num_threads();
  while (cb > L && N * ((C + cb - 1) / cb) < want) cb = std::max<int64_t>(L, (cb / 2 + L - 1) / L * L);
  const int64_t nb = (C + cb - 1) / cb;
  scalar_t* GI = gi.data_ptr<scalar_t>();  // [N, H, W, C] in memory
  at::parallel_for(0, N * nb, 1, [&](int64_t b, int64_t e) {
    std::vector<A> buf;
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / nb, c0 = (t % nb) * cb, c1 = std::min(C, c0 + cb), w = c1 - c0;
      scalar_t* base = GI + n * HW * C + c0;
      if constexpr (std::is_same_v<scalar_t, A>) {
        for (int64_t p = 0; p < HW; ++p) std::fill(base + p * C, base + p * C + w, A(0));
        f(n, c0, c1, base, C);
      } else {
        buf.assign(HW * w, A(0));
        f(n, c0, c1, buf.data(), w);
        for (int64_t p = 0; p < HW; ++p) at::vec::convert(buf.data() + p * w, base + p * C, w);
      }
    }
  });
}

// ---- max pool ------------------------------------------------------------------------

template <typename scalar_t>
void max_fwd_nhwc(const at::Tensor& x, at::Tensor& y, at::Tensor& ind, const Geo& g) {
  using A = acc_type<scalar_t>;
  using V = Vectorized<A>;
  using I = lane_idx<A>;
  using VI = Vectorized<I>;
  constexpr int64_t L = V::size();
  const scalar_t* X = x.data_ptr<scalar_t>();
  scalar_t* Y = y.data_ptr<scalar_t>();
  int64_t* IND = ind.data_ptr<int64_t>();
  const int64_t C = g.C, Cvt = (g.H * g.W < (int64_t(1) << 30)) ? C : 0;  // int32 lane indices
  at::parallel_for(0, g.N * g.Ho, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / g.Ho, oh = t % g.Ho;
      int64_t ih0 = oh * g.sH - g.pH;
      const int64_t ih1 = std::min(ih0 + (g.kH - 1) * g.dH + 1, g.H);
      while (ih0 < 0) ih0 += g.dH;
      const scalar_t* xn = X + n * g.H * g.W * C;
      for (int64_t ow = 0; ow < g.Wo; ++ow) {
        int64_t iw0 = ow * g.sW - g.pW;
        const int64_t iw1 = std::min(iw0 + (g.kW - 1) * g.dW + 1, g.W);
        while (iw0 < 0) iw0 += g.dW;
        scalar_t* y = Y + ((n * g.Ho + oh) * g.Wo + ow) * C;
        int64_t* id = IND + ((n * g.Ho + oh) * g.Wo + ow) * C;
        const int64_t first = ih0 * g.W + iw0;
        int64_t c = 0;
        for (; c < Cvt; c += L) {
          const int64_t n_c = std::min(L, C - c);  // < L: the tail, through a buffer
          V mv(-std::numeric_limits<A>::infinity());
          VI mi(static_cast<I>(first));
          for (int64_t ih = ih0; ih < ih1; ih += g.dH)
            for (int64_t iw = iw0; iw < iw1; iw += g.dW) {
              const scalar_t* q = xn + (ih * g.W + iw) * C + c;
              const V v = n_c == L ? load_acc(q) : load_acc_n(q, n_c);
              const V m = (v > mv) | v.isnan();
              mv = V::blendv(mv, v, m);
              mi = VI::blendv(mi, VI(static_cast<I>(ih * g.W + iw)), at::vec::cast<I>(m));
            }
          if (n_c == L) {
            store_acc<scalar_t>(mv, y + c);
            store_idx(mi, id + c);
          } else {
            store_acc_n<scalar_t>(mv, y + c, n_c);
            store_idx_n(mi, id + c, n_c);
          }
        }
        for (; c < C; ++c) {
          A mv = -std::numeric_limits<A>::infinity();
          int64_t mi = first;
          for (int64_t ih = ih0; ih < ih1; ih += g.dH)
            for (int64_t iw = iw0; iw < iw1; iw += g.dW) {
              const A v = static_cast<A>(xn[(ih * g.W + iw) * C + c]);
              if (v > mv || std::isnan(v)) { mv = v; mi = ih * g.W + iw; }
            }
          y[c] = static_cast<scalar_t>(mv);
          id[c] = mi;
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_fwd(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, bool ceil_mode) {
  const Geo g = make_geo(input, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d_fwd");
  const bool cl = channels_last(input);
  const at::Tensor x = input.contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  at::Tensor y = alloc4(g.N, g.C, g.Ho, g.Wo, cl, x.options(), false);
  at::Tensor ind = alloc4(g.N, g.C, g.Ho, g.Wo, cl, x.options().dtype(at::kLong), false);
  if (g.N == 0) return {y, ind};
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "max_pool2d_fwd", [&] {
    if (cl) {
      max_fwd_nhwc<scalar_t>(x, y, ind, g);
    } else {
      scalar_t* Y = y.data_ptr<scalar_t>();
      int64_t* IND = ind.data_ptr<int64_t>();
      const int64_t HWo = g.Ho * g.Wo;
      for_planes_in<scalar_t>(x, [&](int64_t p, const acc_type<scalar_t>* X) {
        max_plane<scalar_t>(X, Y + p * HWo, IND + p * HWo, g);
      });
    }
  });
  return {y, ind};
}

void check_grad(const at::Tensor& go, const at::Tensor& input, int64_t Ho, int64_t Wo, const char* op) {
  TORCH_CHECK(go.dim() == 4 && go.size(0) == input.size(0) && go.size(1) == input.size(1) && go.size(2) == Ho &&
                  go.size(3) == Wo,
              op, ": grad_output: expected shape [", input.size(0), ", ", input.size(1), ", ", Ho, ", ", Wo,
              "], got ", go.sizes());
  TORCH_CHECK(go.scalar_type() == input.scalar_type(), op, ": grad_output: expected dtype ", input.scalar_type(),
              " (the dtype of input), got ", go.scalar_type());
  TORCH_CHECK(go.device() == input.device(), op, ": grad_output: expected a tensor on ", input.device(),
              ", got one on ", go.device());
}

at::Tensor max_pool2d_bwd(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& indices) {
  check_input(input, "max_pool2d_bwd");
  TORCH_CHECK(indices.scalar_type() == at::kLong && indices.sizes() == grad_output.sizes(),
              "max_pool2d_bwd: indices: expected an int64 tensor of grad_output's shape ", grad_output.sizes(),
              ", got ", indices.scalar_type(), " of shape ", indices.sizes());
  check_grad(grad_output, input, grad_output.dim() == 4 ? grad_output.size(2) : -1,
             grad_output.dim() == 4 ? grad_output.size(3) : -1, "max_pool2d_bwd");
  const bool cl = channels_last(input);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor go = grad_output.contiguous(fmt), id = indices.contiguous(fmt);
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3), HW = H * W;
  const int64_t Ho = go.size(2), Wo = go.size(3), HWo = Ho * Wo;
  at::Tensor gi = alloc4(N, C, H, W, cl, input.options(), false);
  if (N == 0) return gi;
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "max_pool2d_bwd", [&] {
    using A = acc_type<scalar_t>;
    const scalar_t* GO = go.data_ptr<scalar_t>();
    const int64_t* ID = id.data_ptr<int64_t>();
    if (!cl) {
      for_planes_out<scalar_t>(gi, [&](int64_t p, A* G) {
        const scalar_t* gop = GO + p * HWo;
        const int64_t* idp = ID + p * HWo;
        for (int64_t o = 0; o < HWo; ++o) {
          const int64_t i = idp[o];
          if (static_cast<uint64_t>(i) >= static_cast<uint64_t>(HW)) { bad = true; continue; }
          G[i] += static_cast<A>(gop[o]);
        }
      });
    } else {
      for_blocks_out<scalar_t>(gi, [&](int64_t n, int64_t c0, int64_t c1, A* G, int64_t ps) {
        for (int64_t o = 0; o < HWo; ++o) {
          const scalar_t* gop = GO + (n * HWo + o) * C;
          const int64_t* idp = ID + (n * HWo + o) * C;
          for (int64_t c = c0; c < c1; ++c) {
            const int64_t i = idp[c];
            if (static_cast<uint64_t>(i) >= static_cast<uint64_t>(HW)) { bad = true; continue; }
            G[i * ps + (c - c0)] += static_cast<A>(gop[c]);
          }
        }
      });
    }
  });
  TORCH_CHECK(!bad.load(), "max_pool2d_bwd: indices: found an index outside [0, H*W) = [0, ", HW, ")");
  return gi;
}

// ---- avg pool ------------------------------------------------------------------------

template <typename scalar_t>
void avg_fwd_nhwc(const at::Tensor& x, at::Tensor& y, const Geo& g, const AvgOpt& o) {
  using A = acc_type<scalar_t>;
  using V = Vectorized<A>;
  constexpr int64_t L = V::size();
  const scalar_t* X = x.data_ptr<scalar_t>();
  scalar_t* Y = y.data_ptr<scalar_t>();
  const int64_t C = g.C, Cv = C / L * L;
  at::parallel_for(0, g.N * g.Ho, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / g.Ho, oh = t % g.Ho;
      const scalar_t* xn = X + n * g.H * g.W * C;
      for (int64_t ow = 0; ow < g.Wo; ++ow) {
        int64_t ih0, ih1, iw0, iw1;
        const int64_t div = avg_window(g, o, oh, ow, ih0, ih1, iw0, iw1);
        scalar_t* y = Y + ((n * g.Ho + oh) * g.Wo + ow) * C;
        if (div == 0) {
          std::fill(y, y + C, scalar_t(0));
          continue;
        }
        const A d = static_cast<A>(div);
        int64_t c = 0;
        for (; c < Cv; c += L) {
          V sum(A(0));
          for (int64_t ih = ih0; ih < ih1; ++ih)
            for (int64_t iw = iw0; iw < iw1; ++iw) sum = sum + load_acc(xn + (ih * g.W + iw) * C + c);
          store_acc<scalar_t>(sum / V(d), y + c);
        }
        if (c < C) {  // the tail as one partial vector
          const int64_t n_c = C - c;
          V sum(A(0));
          for (int64_t ih = ih0; ih < ih1; ++ih)
            for (int64_t iw = iw0; iw < iw1; ++iw) sum = sum + load_acc_n(xn + (ih * g.W + iw) * C + c, n_c);
          store_acc_n<scalar_t>(sum / V(d), y + c, n_c);
          c = C;
        }
        for (; c < C; ++c) {
          A sum = 0;
          for (int64_t ih = ih0; ih < ih1; ++ih)
            for (int64_t iw = iw0; iw < iw1; ++iw) sum += static_cast<A>(xn[(ih * g.W + iw) * C + c]);
          y[c] = static_cast<scalar_t>(sum / d);
        }
      }
    }
  });
}

Geo avg_geo(const at::Tensor& input, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p, bool ceil,
            const std::optional<int64_t>& div, const char* op) {
  TORCH_CHECK(!div.has_value() || *div != 0, op, ": divisor must be not zero");
  const int64_t one[2] = {1, 1};
  return make_geo(input, k, s, p, at::IntArrayRef(one, 2), ceil, op);
}

at::Tensor avg_pool2d_fwd(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                          std::optional<int64_t> divisor_override) {
  const Geo g = avg_geo(input, kernel_size, stride, padding, ceil_mode, divisor_override, "avg_pool2d_fwd");
  const AvgOpt o{count_include_pad, divisor_override};
  const bool cl = channels_last(input);
  const at::Tensor x = input.contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  at::Tensor y = alloc4(g.N, g.C, g.Ho, g.Wo, cl, x.options(), false);
  if (g.N == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "avg_pool2d_fwd", [&] {
    if (cl) {
      avg_fwd_nhwc<scalar_t>(x, y, g, o);
    } else {
      scalar_t* Y = y.data_ptr<scalar_t>();
      const int64_t HWo = g.Ho * g.Wo;
      for_planes_in<scalar_t>(x, [&](int64_t p, const acc_type<scalar_t>* X) {
        avg_plane<scalar_t>(X, Y + p * HWo, g, o);
      });
    }
  });
  return y;
}

at::Tensor avg_pool2d_bwd(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef kernel_size,
                          at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                          std::optional<int64_t> divisor_override) {
  const Geo g = avg_geo(input, kernel_size, stride, padding, ceil_mode, divisor_override, "avg_pool2d_bwd");
  const AvgOpt o{count_include_pad, divisor_override};
  check_grad(grad_output, input, g.Ho, g.Wo, "avg_pool2d_bwd");
  const bool cl = channels_last(input);
  const at::Tensor go = grad_output.contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  at::Tensor gi = alloc4(g.N, g.C, g.H, g.W, cl, input.options(), false);
  if (g.N == 0) return gi;
  const int64_t HWo = g.Ho * g.Wo, C = g.C;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "avg_pool2d_bwd", [&] {
    using A = acc_type<scalar_t>;
    using V = Vectorized<A>;
    constexpr int64_t L = V::size();
    const scalar_t* GO = go.data_ptr<scalar_t>();
    if (!cl) {
      for_planes_out<scalar_t>(gi, [&](int64_t p, A* G) {
        const scalar_t* gop = GO + p * HWo;
        for (int64_t oh = 0; oh < g.Ho; ++oh)
          for (int64_t ow = 0; ow < g.Wo; ++ow) {
            int64_t ih0, ih1, iw0, iw1;
            const int64_t div = avg_window(g, o, oh, ow, ih0, ih1, iw0, iw1);
            if (div == 0) continue;
            const A d = static_cast<A>(gop[oh * g.Wo + ow]) / static_cast<A>(div);
            for (int64_t ih = ih0; ih < ih1; ++ih)
              for (int64_t iw = iw0; iw < iw1; ++iw) G[ih * g.W + iw] += d;
          }
      });
    } else {
      for_blocks_out<scalar_t>(gi, [&](int64_t n, int64_t c0, int64_t c1, A* G, int64_t ps) {
        const int64_t w = c1 - c0, wv = w / L * L;
        for (int64_t oh = 0; oh < g.Ho; ++oh)
          for (int64_t ow = 0; ow < g.Wo; ++ow) {
            int64_t ih0, ih1, iw0, iw1;
            const int64_t div = avg_window(g, o, oh, ow, ih0, ih1, iw0, iw1);
            if (div == 0) continue;
            const A dv = static_cast<A>(div);
            const scalar_t* gop = GO + ((n * g.Ho + oh) * g.Wo + ow) * C + c0;
            int64_t c = 0;
            for (; c < wv; c += L) {
              const V d = load_acc(gop + c) / V(dv);
              for (int64_t ih = ih0; ih < ih1; ++ih)
                for (int64_t iw = iw0; iw < iw1; ++iw) {
                  A* q = G + (ih * g.W + iw) * ps + c;
                  (V::loadu(q) + d).store(q);
                }
            }
            for (; c < w; ++c) {
              const A d = static_cast<A>(gop[c]) / dv;
              for (int64_t ih = ih0; ih < ih1; ++ih)
                for (int64_t iw = iw0; iw < iw1; ++iw) G[(ih * g.W + iw) * ps + c] += d;
            }
          }
      });
    }
  });
  return gi;
}

// ---- adaptive avg pool ---------------------------------------------------------------

Geo adaptive_geo(const at::Tensor& input, at::IntArrayRef output_size, const char* op) {
  check_input(input, op);
  TORCH_CHECK(output_size.size() == 2, op, ": output_size must be 2");
  TORCH_CHECK(output_size[0] >= 0 && output_size[1] >= 0, op,
              ": elements of output_size must be greater than or equal to 0 but received {", output_size[0], ", ",
              output_size[1], "}");
  Geo g;
  g.N = input.size(0), g.C = input.size(1), g.H = input.size(2), g.W = input.size(3);
  g.Ho = output_size[0], g.Wo = output_size[1];
  return g;
}

at::Tensor adaptive_avg_pool2d_fwd(const at::Tensor& input, at::IntArrayRef output_size) {
  const Geo g = adaptive_geo(input, output_size, "adaptive_avg_pool2d_fwd");
  const bool cl = channels_last(input);
  const at::Tensor x = input.contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  at::Tensor y = alloc4(g.N, g.C, g.Ho, g.Wo, cl, x.options(), false);
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "adaptive_avg_pool2d_fwd", [&] {
    using A = acc_type<scalar_t>;
    using V = Vectorized<A>;
    constexpr int64_t L = V::size();
    scalar_t* Y = y.data_ptr<scalar_t>();
    if (!cl) {
      const int64_t HWo = g.Ho * g.Wo;
      for_planes_in<scalar_t>(x, [&](int64_t p, const A* X) { adaptive_plane<scalar_t>(X, Y + p * HWo, g); });
      return;
    }
    const scalar_t* X = x.data_ptr<scalar_t>();
    const int64_t C = g.C, Cv = C / L * L;
    at::parallel_for(0, g.N * g.Ho, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t n = t / g.Ho, oh = t % g.Ho;
        const int64_t ih0 = ad_start(oh, g.Ho, g.H), ih1 = ad_end(oh, g.Ho, g.H);
        const scalar_t* xn = X + n * g.H * g.W * C;
        for (int64_t ow = 0; ow < g.Wo; ++ow) {
          const int64_t iw0 = ad_start(ow, g.Wo, g.W), iw1 = ad_end(ow, g.Wo, g.W);
          const A kh = A(ih1 - ih0), kw = A(iw1 - iw0);
          scalar_t* y = Y + ((n * g.Ho + oh) * g.Wo + ow) * C;
          int64_t c = 0;
          for (; c + 4 * L <= Cv; c += 4 * L) {  // four accumulators: the adds overlap
            V s0(A(0)), s1(A(0)), s2(A(0)), s3(A(0));
            for (int64_t ih = ih0; ih < ih1; ++ih)
              for (int64_t iw = iw0; iw < iw1; ++iw) {
                const scalar_t* q = xn + (ih * g.W + iw) * C + c;
                s0 = s0 + load_acc(q), s1 = s1 + load_acc(q + L), s2 = s2 + load_acc(q + 2 * L),
                s3 = s3 + load_acc(q + 3 * L);
              }
            store_acc<scalar_t>(s0 / V(kh) / V(kw), y + c);
            store_acc<scalar_t>(s1 / V(kh) / V(kw), y + c + L);
            store_acc<scalar_t>(s2 / V(kh) / V(kw), y + c + 2 * L);
            store_acc<scalar_t>(s3 / V(kh) / V(kw), y + c + 3 * L);
          }
          for (; c < Cv; c += L) {
            V s(A(0));
            for (int64_t ih = ih0; ih < ih1; ++ih)
              for (int64_t iw = iw0; iw < iw1; ++iw) s = s + load_acc(xn + (ih * g.W + iw) * C + c);
            store_acc<scalar_t>(s / V(kh) / V(kw), y + c);
          }
          for (; c < C; ++c) {
            A s = 0;
            for (int64_t ih = ih0; ih < ih1; ++ih)
              for (int64_t iw = iw0; iw < iw1; ++iw) s += static_cast<A>(xn[(ih * g.W + iw) * C + c]);
            y[c] = static_cast<scalar_t>(s / kh / kw);
          }
        }
      }
    });
  });
  return y;
}

at::Tensor adaptive_avg_pool2d_bwd(const at::Tensor& grad_output, const at::Tensor& input) {
  check_input(input, "adaptive_avg_pool2d_bwd");
  TORCH_CHECK(grad_output.dim() == 4, "adaptive_avg_pool2d_bwd: grad_output: expected a 4-D tensor, got ",
              grad_output.sizes());
  const Geo g = adaptive_geo(input, {grad_output.size(2), grad_output.size(3)}, "adaptive_avg_pool2d_bwd");
  check_grad(grad_output, input, g.Ho, g.Wo, "adaptive_avg_pool2d_bwd");
  const bool cl = channels_last(input);
  const at::Tensor go = grad_output.contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  at::Tensor gi = alloc4(g.N, g.C, g.H, g.W, cl, input.options(), false);
  if (gi.numel() == 0) return gi;
  if (go.numel() == 0) return gi.zero_();
  const int64_t HWo = g.Ho * g.Wo, C = g.C;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "adaptive_avg_pool2d_bwd", [&] {
    using A = acc_type<scalar_t>;
    using V = Vectorized<A>;
    constexpr int64_t L = V::size();
    const scalar_t* GO = go.data_ptr<scalar_t>();
    if (!cl) {
      for_planes_out<scalar_t>(gi, [&](int64_t p, A* G) {
        const scalar_t* gop = GO + p * HWo;
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          const int64_t ih0 = ad_start(oh, g.Ho, g.H), ih1 = ad_end(oh, g.Ho, g.H);
          for (int64_t ow = 0; ow < g.Wo; ++ow) {
            const int64_t iw0 = ad_start(ow, g.Wo, g.W), iw1 = ad_end(ow, g.Wo, g.W);
            const A d = static_cast<A>(gop[oh * g.Wo + ow]) / A(ih1 - ih0) / A(iw1 - iw0);
            for (int64_t ih = ih0; ih < ih1; ++ih)
              for (int64_t iw = iw0; iw < iw1; ++iw) G[ih * g.W + iw] += d;
          }
        }
      });
    } else {
      for_blocks_out<scalar_t>(gi, [&](int64_t n, int64_t c0, int64_t c1, A* G, int64_t ps) {
        const int64_t w = c1 - c0, wv = w / L * L;
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          const int64_t ih0 = ad_start(oh, g.Ho, g.H), ih1 = ad_end(oh, g.Ho, g.H);
          for (int64_t ow = 0; ow < g.Wo; ++ow) {
            const int64_t iw0 = ad_start(ow, g.Wo, g.W), iw1 = ad_end(ow, g.Wo, g.W);
            const A kh = A(ih1 - ih0), kw = A(iw1 - iw0);
            const scalar_t* gop = GO + ((n * g.Ho + oh) * g.Wo + ow) * C + c0;
            int64_t c = 0;
            for (; c < wv; c += L) {
              const V d = load_acc(gop + c) / V(kh) / V(kw);
              for (int64_t ih = ih0; ih < ih1; ++ih)
                for (int64_t iw = iw0; iw < iw1; ++iw) {
                  A* q = G + (ih * g.W + iw) * ps + c;
                  (V::loadu(q) + d).store(q);
                }
            }
            for (; c < w; ++c) {
              const A d = static_cast<A>(gop[c]) / kh / kw;
              for (int64_t ih = ih0; ih < ih1; ++ih)
                for (int64_t iw = iw0; iw < iw1; ++iw) G[(ih * g.W + iw) * ps + c] += d;
            }
          }
        }
      });
    }
  });
  return gi;
}

}  // namespace
}  // namespace mte

TORCH_LIBRARY_IMPL(minitorch_ext, CPU, m) {
  m.impl("max_pool2d_fwd", &mte::max_pool2d_fwd);
  m.impl("max_pool2d_bwd", &mte::max_pool2d_bwd);
  m.impl("avg_pool2d_fwd", &mte::avg_pool2d_fwd);
  m.impl("avg_pool2d_bwd", &mte::avg_pool2d_bwd);
  m.impl("adaptive_avg_pool2d_fwd", &mte::adaptive_avg_pool2d_fwd);
  m.impl("adaptive_avg_pool2d_bwd", &mte::adaptive_avg_pool2d_bwd);
}
