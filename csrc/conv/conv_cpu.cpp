// CPU kernels of the conv family: conv_fwd and conv_bwd (schemas and contract:
// csrc/ops.cpp), 2-D on [N, C, H, W] tensors (1-D is H == 1: Python reshapes),
// all products on the GEMM core of gemm.h. No ATen convolution/matmul call.
//
// Geometry (Axis). Along each spatial axis the padded input is a "virtual"
// line of ext = (out-1)*stride + (k-1)*dil + 1 positions; vmap[r] says which
// input element virtual position r reads (-1: a zero). Output o, tap t reads
// vmap[o*stride + t*dil]. The table absorbs every padding mode (zeros: -1;
// reflect / replicate / circular: the mirrored, clamped or wrapped index, so
// no padded copy of the input is ever made) and the input dilation ("lhs
// dilation": position r reads input r/s when s divides r, else zero) that turns
// grad-input into a forward conv. Tables are O(ext) ints, built per call.
//
// Kernels (the path is chosen per call; each is bitwise repeatable for any
// thread count):
//   fwd_nhwc   channels_last output. Implicit GEMM through gemm_packed_a:
//              out[P = N*Ho*Wo, Og] = Patches[P, K] . Wr[K, Og], K = (kh, kw, c)
//              with c fastest; the APacker writes each MR-pixel strip of the
//              A block straight from the input (a run of Cg contiguous channels
//              per tap), so no im2col matrix exists; Wr is the weight reordered
//              once to [O, kh, kw, Cg] (read through strides as B). Bias and
//              activation in the core's epilogue; the output rows are the NHWC
//              pixels as they lie (ldo = O, a column offset per group).
//              Traffic: input read ~once per NC = 4096 output channels (i.e.
//              once), patches re-read from L1/L2 per tap, output written once.
//   fwd_nchw   contiguous output. Per (image, tile of TQ output pixels): the
//              tile's patch columns [K, TQ] (K = (c, kh, kw)) gathered into a
//              thread-local buffer of <= ~1 MB (in T: bfloat16 stays exact),
//              then out[Og, TQ] = W[Og, K] . tile (B panels packed from it by the
//              core; bias per row in the epilogue), written straight into the
//              NCHW rows (ldo = Ho*Wo). One task per tile, across threads.
//              Traffic: one write + one read of each tile (K/Og of the FMAs).
//   gemm_1x1   1x1, stride 1, no padding: the activations are the GEMM operand
//              as they lie: NHWC out[P, Og] = X[P, Cg] . W^T; NCHW per image
//              out[Og, HW] = W[Og, Cg] . X[Cg, HW]. Nothing is copied.
//   depthwise  groups == in_channels (Cg == 1, out = k*in): direct kernel. Per
//              (image, channel) plane the padded plane is built once (Acc type,
//              through vmap: every padding mode), then each output row is a sum
//              of kh*kw shifted rows scaled by one weight: vectorised along the
//              output row (at::vec FMAs) for stride 1. Traffic: input read once,
//              output written once; the plane stays in L1/L2.
//   grad_input as a forward conv of grad_output with the flipped, transposed
//              weight W'[c, o, kh-1-i, kw-1-j] (per group), stride 1, dilation d,
//              input dilation = stride, pad (k-1)*d - p: the same kernels above
//              (gather formulation: every output written by one task, no
//              scatter, no atomics). Padding modes other than zeros: the
//              gradient of the padded input is computed, then folded back
//              through vmap (each plane by one task, in a fixed order).
//   grad_weight GEMM reduced over P = N*Ho*Wo: gw^T[K, Og] = Patches^T[K, P] .
//              go[P, Og]; the APacker builds MR-row strips of Patches^T straight
//              from the input; go is read as [P, O] (channels_last view). P is cut
//              into S fixed slots (S depends on the sizes only, never on the
//              thread count), each slot a single-threaded GEMM into its own
//              partial; partials are summed in slot order, which makes the result
//              bitwise the same for 1 and 2 threads. bfloat16: x and go widened
//              to float once, float partials, one rounding at the end.
//              Depthwise: direct, one task per output channel (fixed order).
//   grad_bias  per-channel sums of go, each channel by one task in a fixed order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "common/act.h"
#include "common/alloc.h"
#include "common/checks.h"
#include "common/vec_reduce.h"
#include "gemm/gemm.h"

namespace mte {
namespace {

using at::vec::Vectorized;
using gemm::Acc;

enum class PadMode { Zeros, Reflect, Replicate, Circular };

PadMode parse_pad_mode(c10::string_view s) {
  if (s == "zeros") return PadMode::Zeros;
  if (s == "reflect") return PadMode::Reflect;
  if (s == "replicate") return PadMode::Replicate;
  if (s == "circular") return PadMode::Circular;
  TORCH_CHECK_VALUE(false, "padding_mode must be one of 'zeros', 'reflect', 'replicate' or 'circular', but got "
                    "padding_mode='", std::string(s), "'");
}

// One spatial axis (see the header).
struct Axis {
  int64_t in = 0, out = 0, k = 1, stride = 1, dil = 1;
  bool identity = false;  // stride 1, no padding, no input dilation, k == 1, out == in
  std::vector<int64_t> vmap;
  int64_t ext() const { return out > 0 ? (out - 1) * stride + (k - 1) * dil + 1 : 0; }
  int64_t at(int64_t o, int64_t t) const { return vmap[o * stride + t * dil]; }
};

Axis make_axis(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t pad, int64_t dil, int64_t lhs,
               PadMode mode) {
  Axis a;
  a.in = in; a.out = out; a.k = k; a.stride = stride; a.dil = dil;
  a.identity = k == 1 && stride == 1 && pad == 0 && lhs == 1 && out == in;
  const int64_t n = a.ext();
  a.vmap.resize(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) {
    int64_t v = r - pad;
    if (lhs > 1) {
      if (((v % lhs) + lhs) % lhs != 0) { a.vmap[r] = -1; continue; }
      v = v >= 0 ? v / lhs : -((-v) / lhs);
    }
    if (v >= 0 && v < in) { a.vmap[r] = v; continue; }
    int64_t m = -1;
    if (in > 0) switch (mode) {
      case PadMode::Zeros: m = -1; break;
      case PadMode::Reflect: {
        if (in == 1) { m = 0; break; }
        const int64_t period = 2 * (in - 1);
        int64_t u = ((v % period) + period) % period;
        m = u < in ? u : period - u;
        break;
      }
      case PadMode::Replicate: m = v < 0 ? 0 : in - 1; break;
      case PadMode::Circular: m = ((v % in) + in) % in; break;
    }
    a.vmap[r] = m;
  }
  return a;
}

// A [N, C, H, W] tensor's data and strides.
template <typename T>
struct Img {
  const T* p;
  int64_t sN, sC, sH, sW;
};
template <typename T>
Img<T> img(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

bool is_cl(const at::Tensor& t) { return t.dim() == 4 && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast; }

// A new [N, C, H, W] output, NCHW or channels_last (poisoned under the checker).
at::Tensor new_out4(int64_t N, int64_t C, int64_t H, int64_t W, bool cl, const at::TensorOptions& o) {
  if (!cl) return new_output({N, C, H, W}, o);
  return new_output({N, H, W, C}, o).permute({0, 3, 1, 2});
}

template <typename T>
struct TlsBuf {
  std::vector<T> v;
  T* get(size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
  }
};
template <typename T>
T* tls(size_t n, int slot) {
  thread_local TlsBuf<T> b[4];
  return b[slot].get(n);
}

template <typename T>
inline Acc<T> ld(const T* p) { return static_cast<Acc<T>>(*p); }

// ---- forward, channels_last: implicit GEMM with the patches packed as A ------------------

template <typename T>
struct NhwcPatchCtx {
  Img<T> x;
  const Axis* ah;
  const Axis* aw;
  int64_t Ho, Wo, kw, Cg, c0;
};

// A rows = output pixels, A cols = K = (i, j, c), c fastest: strips of MR pixels.
template <typename T>
void pack_nhwc_patches(const void* vctx, int64_t i0, int64_t mc, int64_t p0, int64_t kc, Acc<T>* dst) {
  using A = Acc<T>;
  constexpr int64_t MR = gemm::Blocking<A>::MR;
  const auto& c = *static_cast<const NhwcPatchCtx<T>*>(vctx);
  const int64_t HW = c.Ho * c.Wo;
  for (int64_t s = 0; s < mc; s += MR) {
    A* d = dst + s * kc;
    int64_t n[MR], oh[MR], ow[MR];
    bool valid[MR];
    for (int64_t r = 0; r < MR; ++r) {
      valid[r] = s + r < mc;
      const int64_t p = i0 + s + r;
      n[r] = valid[r] ? p / HW : 0;
      const int64_t rem = valid[r] ? p % HW : 0;
      oh[r] = rem / c.Wo;
      ow[r] = rem % c.Wo;
    }
    int64_t k = p0, kk = 0;
    while (kk < kc) {
      const int64_t tap = k / c.Cg, ch = k % c.Cg, i = tap / c.kw, j = tap % c.kw;
      const int64_t run = std::min(c.Cg - ch, kc - kk);
      for (int64_t r = 0; r < MR; ++r) {
        const T* src = nullptr;
        if (valid[r]) {
          const int64_t ih = c.ah->at(oh[r], i), iw = c.aw->at(ow[r], j);
          if (ih >= 0 && iw >= 0) src = c.x.p + n[r] * c.x.sN + ih * c.x.sH + iw * c.x.sW + (c.c0 + ch) * c.x.sC;
        }
        A* dd = d + kk * MR + r;
        if (src) {
          const int64_t sc = c.x.sC;
          for (int64_t q = 0; q < run; ++q) dd[q * MR] = static_cast<A>(src[q * sc]);
        } else {
          for (int64_t q = 0; q < run; ++q) dd[q * MR] = A(0);
        }
      }
      kk += run;
      k += run;
    }
  }
}

template <typename T>
void fwd_nhwc(const at::Tensor& x, const at::Tensor& w, const T* bias, const Axis& ah, const Axis& aw, int64_t G,
              Act act, double slope, at::Tensor& out) {
  const int64_t N = x.size(0), Co = w.size(0), Cg = w.size(1), kh = w.size(2), kw = w.size(3);
  const int64_t Og = Co / G, K = Cg * kh * kw, Ho = ah.out, Wo = aw.out, P = N * Ho * Wo;
  const auto wr = w.permute({0, 2, 3, 1}).contiguous();  // [O, kh, kw, Cg]: B(k, o) = wr[o*K + k]
  const T* W = wr.data_ptr<T>();
  T* O = out.data_ptr<T>();  // channels_last: row p at p*Co
  for (int64_t g = 0; g < G; ++g) {
    NhwcPatchCtx<T> ctx{img<T>(x), &ah, &aw, Ho, Wo, kw, Cg, g * Cg};
    gemm::APacker<T> ap{&pack_nhwc_patches<T>, &ctx};
    gemm::Epilogue<T> ep;
    ep.bias = bias ? bias + g * Og : nullptr;
    ep.bias_dim = 1;
    ep.act = act;
    ep.slope = slope;
    gemm::gemm_packed_a<T>(P, Og, K, ap, gemm::Mat<T>{W + g * Og * K, 1, K}, O + g * Og, Co, ep);
  }
}

// ---- forward, NCHW: per-tile patch columns, GEMM with the weight as A -----------------------

template <typename T>
void fwd_nchw(const at::Tensor& x, const at::Tensor& w, const T* bias, const Axis& ah, const Axis& aw, int64_t G,
              Act act, double slope, at::Tensor& out) {
  const int64_t N = x.size(0), Co = w.size(0), Cg = w.size(1), kh = w.size(2), kw = w.size(3);
  const int64_t Og = Co / G, K = Cg * kh * kw, Ho = ah.out, Wo = aw.out, HW = Ho * Wo;
  const auto wc = w.contiguous();  // [O, Cg*kh*kw], K = (c, i, j)
  const T* W = wc.data_ptr<T>();
  T* O = out.data_ptr<T>();
  const Img<T> X = img<T>(x);
  constexpr int64_t NR = gemm::Blocking<Acc<T>>::NR;
  int64_t TQ = std::max<int64_t>(NR, ((int64_t(1) << 18) / std::max<int64_t>(K, 1)) / NR * NR);
  TQ = std::min(TQ, (HW + NR - 1) / NR * NR);
  const int64_t ntile = (HW + TQ - 1) / TQ;
  const int64_t tasks = G * N * ntile;
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    T* buf = tls<T>(static_cast<size_t>(K * TQ), 0);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / (N * ntile), n = (t / ntile) % N, tile = t % ntile;
      const int64_t q0 = tile * TQ, tq = std::min(TQ, HW - q0);
      // gather the patch columns: row k = (c, i, j), column = output pixel q0 + q
      for (int64_t c = 0; c < Cg; ++c) {
        const T* xc = X.p + n * X.sN + (g * Cg + c) * X.sC;
        for (int64_t i = 0; i < kh; ++i)
          for (int64_t j = 0; j < kw; ++j) {
            T* row = buf + ((c * kh + i) * kw + j) * tq;
            int64_t q = 0, oh = q0 / Wo, ow = q0 % Wo;
            while (q < tq) {
              const int64_t seg = std::min(Wo - ow, tq - q);
              const int64_t ih = ah.at(oh, i);
              if (ih < 0) {
                for (int64_t e = 0; e < seg; ++e) row[q + e] = T(0);
              } else {
                const T* xr = xc + ih * X.sH;
                const int64_t* cm = aw.vmap.data() + j * aw.dil;
                const int64_t st = aw.stride;
                for (int64_t e = 0; e < seg; ++e) {
                  const int64_t iw = cm[(ow + e) * st];
                  row[q + e] = iw >= 0 ? xr[iw * X.sW] : T(0);
                }
              }
              q += seg;
              ow = 0;
              ++oh;
            }
          }
      }
      gemm::Epilogue<T> ep;
      ep.bias = bias ? bias + g * Og : nullptr;
      ep.bias_dim = 0;
      ep.act = act;
      ep.slope = slope;
      gemm::gemm<T>(Og, tq, K, gemm::Mat<T>{W + g * Og * K, K, 1}, gemm::Mat<T>{buf, tq, 1},
                    O + (n * Co + g * Og) * HW + q0, HW, ep, /*allow_threads=*/false);
    }
  });
}

// ---- 1x1, stride 1, no padding: plain GEMMs on the activations as they lie -------------------

template <typename T>
bool gemm_1x1(const at::Tensor& x, const at::Tensor& w, const T* bias, int64_t G, Act act, double slope,
              at::Tensor& out, bool cl) {
  const int64_t N = x.size(0), H = x.size(2), Wd = x.size(3), Co = w.size(0), Cg = w.size(1), Og = Co / G;
  const Img<T> X = img<T>(x);
  const auto wc = w.contiguous();  // [O, Cg]
  const T* W = wc.data_ptr<T>();
  T* O = out.data_ptr<T>();
  if (cl) {  // pixels uniformly strided: X[P, C] with rs = sW
    if (!(X.sH == Wd * X.sW || H == 1) || !(X.sN == H * X.sH || N == 1)) return false;
    const int64_t P = N * H * Wd;
    for (int64_t g = 0; g < G; ++g) {
      gemm::Epilogue<T> ep;
      ep.bias = bias ? bias + g * Og : nullptr;
      ep.bias_dim = 1;
      ep.act = act;
      ep.slope = slope;
      gemm::gemm<T>(P, Og, Cg, gemm::Mat<T>{X.p + g * Cg * X.sC, X.sW, X.sC}, gemm::Mat<T>{W + g * Og * Cg, 1, Cg},
                    O + g * Og, Co, ep);
    }
    return true;
  }
  if (!(X.sW == 1 || Wd == 1) || !(X.sH == Wd || H == 1)) return false;  // each plane contiguous
  const int64_t HW = H * Wd;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < G; ++g) {
      gemm::Epilogue<T> ep;
      ep.bias = bias ? bias + g * Og : nullptr;
      ep.bias_dim = 0;
      ep.act = act;
      ep.slope = slope;
      gemm::gemm<T>(Og, HW, Cg, gemm::Mat<T>{W + g * Og * Cg, Cg, 1},
                    gemm::Mat<T>{X.p + n * X.sN + g * Cg * X.sC, X.sC, 1}, O + (n * Co + g * Og) * HW, HW, ep);
    }
  return true;
}

// ---- depthwise: direct, one padded plane per (image, channel) ------------------------------------

// The padded plane of input channel c of image n through the axis tables, in Acc.
template <typename T>
void build_plane(const Img<T>& X, int64_t n, int64_t c, const Axis& ah, const Axis& aw, Acc<T>* pl) {
  using A = Acc<T>;
  const int64_t Hp = ah.ext(), Wp = aw.ext();
  const T* xc = X.p + n * X.sN + c * X.sC;
  for (int64_t r = 0; r < Hp; ++r) {
    A* d = pl + r * Wp;
    const int64_t ih = ah.vmap[r];
    if (ih < 0) {
      std::fill(d, d + Wp, A(0));
      continue;
    }
    const T* xr = xc + ih * X.sH;
    for (int64_t q = 0; q < Wp; ++q) {
      const int64_t iw = aw.vmap[q];
      d[q] = iw >= 0 ? static_cast<A>(xr[iw * X.sW]) : A(0);
    }
  }
}

template <typename T>
void fwd_depthwise(const at::Tensor& x, const at::Tensor& w, const T* bias, const Axis& ah, const Axis& aw,
                   Act act, double slope, at::Tensor& out) {
  using A = Acc<T>;
  using V = Vectorized<A>;
  constexpr int64_t VW = V::size();
  const int64_t N = x.size(0), C = x.size(1), Co = w.size(0), kh = w.size(2), kw = w.size(3), M = Co / C;
  const int64_t Ho = ah.out, Wo = aw.out, Hp = ah.ext(), Wp = aw.ext();
  const Img<T> X = img<T>(x);
  const auto wc = w.contiguous();
  const T* Wt = wc.data_ptr<T>();
  T* O = out.data_ptr<T>();
  const int64_t oN = out.stride(0), oC = out.stride(1), oH = out.stride(2), oW = out.stride(3);
  const A sl = static_cast<A>(slope);
  at::parallel_for(0, N * C, 1, [&](int64_t t0, int64_t t1) {
    A* pl = tls<A>(static_cast<size_t>(Hp * Wp), 1);
    A* acc = tls<A>(static_cast<size_t>(Wo + VW), 2);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / C, c = t % C;
      build_plane<T>(X, n, c, ah, aw, pl);
      for (int64_t m = 0; m < M; ++m) {
        const int64_t o = c * M + m;
        const T* wo = Wt + o * kh * kw;
        const A b = bias ? static_cast<A>(bias[o]) : A(0);
        for (int64_t oh = 0; oh < Ho; ++oh) {
          std::fill(acc, acc + Wo, b);
          for (int64_t i = 0; i < kh; ++i) {
            const A* row = pl + (oh * ah.stride + i * ah.dil) * Wp;
            for (int64_t j = 0; j < kw; ++j) {
              const A wt = static_cast<A>(wo[i * kw + j]);
              const A* src = row + j * aw.dil;
              if (aw.stride == 1) {
                const V wvv(wt);
                int64_t q = 0;
                for (; q + VW <= Wo; q += VW)
                  at::vec::fmadd(wvv, V::loadu(src + q), V::loadu(acc + q)).store(acc + q);
                for (; q < Wo; ++q) acc[q] += wt * src[q];
              } else {
                const int64_t st = aw.stride;
                for (int64_t q = 0; q < Wo; ++q) acc[q] += wt * src[q * st];
              }
            }
          }
          T* orow = O + n * oN + o * oC + oh * oH;
          for (int64_t q = 0; q < Wo; ++q) orow[q * oW] = static_cast<T>(act_scalar<A>(act, acc[q], sl));
        }
      }
    }
  });
}

// ---- the forward dispatcher ----------------------------------------------------------------------

template <typename T>
void conv_core(const at::Tensor& x, const at::Tensor& w, const T* bias, const Axis& ah, const Axis& aw, int64_t G,
               Act act, double slope, at::Tensor& out, bool cl) {
  const int64_t N = x.size(0), Ci = x.size(1), Co = w.size(0), Cg = w.size(1);
  if (N == 0 || Co == 0 || ah.out == 0 || aw.out == 0) return;
  if (Cg == 1 && G == Ci) return fwd_depthwise<T>(x, w, bias, ah, aw, act, slope, out);
  if (ah.identity && aw.identity && gemm_1x1<T>(x, w, bias, G, act, slope, out, cl)) return;
  if (cl) return fwd_nhwc<T>(x, w, bias, ah, aw, G, act, slope, out);
  return fwd_nchw<T>(x, w, bias, ah, aw, G, act, slope, out);
}

// ---- checks ----------------------------------------------------------------------------------------

void check_dtype(const at::Tensor& t, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s != at::kHalf, name, ": float16 is not supported by the CPU kernel (use float32, float64 or "
              "bfloat16)");
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kBFloat16, name,
              ": expected a floating point tensor (float32, float64 or bfloat16), got ", s);
}

struct Params {
  int64_t sh, sw, pt, pb, pl, pr, dh, dw, G;
  PadMode mode;
};

Params parse_params(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                    c10::string_view padding_mode) {
  TORCH_CHECK(stride.size() == 2, "conv: expected stride to have 2 values (H, W), got ", stride);
  TORCH_CHECK(dilation.size() == 2, "conv: expected dilation to have 2 values (H, W), got ", dilation);
  TORCH_CHECK(padding.size() == 2 || padding.size() == 4,
              "conv: expected padding to have 2 values (H, W) or 4 (top, bottom, left, right), got ", padding);
  Params p;
  p.sh = stride[0]; p.sw = stride[1];
  p.dh = dilation[0]; p.dw = dilation[1];
  if (padding.size() == 2) { p.pt = p.pb = padding[0]; p.pl = p.pr = padding[1]; }
  else { p.pt = padding[0]; p.pb = padding[1]; p.pl = padding[2]; p.pr = padding[3]; }
  p.G = groups;
  p.mode = parse_pad_mode(padding_mode);
  TORCH_CHECK(p.sh > 0 && p.sw > 0, "non-positive stride is not supported");
  TORCH_CHECK(p.dh > 0 && p.dw > 0, "dilation should be greater than zero, but got ", dilation);
  TORCH_CHECK(p.pt >= 0 && p.pb >= 0 && p.pl >= 0 && p.pr >= 0, "negative padding is not supported");
  TORCH_CHECK(groups > 0, "non-positive groups is not supported");
  return p;
}

void check_conv(const at::Tensor& input, const at::Tensor& weight, const Params& p) {
  check_dtype(input, "input");
  check_dtype(weight, "weight");
  TORCH_CHECK(input.dim() == 4, "conv: expected a 4-D input [N, C, H, W], got a ", input.dim(),
              "-D tensor of size ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, "conv: expected a 4-D weight [O, C/groups, kH, kW], got a ", weight.dim(),
              "-D tensor of size ", weight.sizes());
  check_same_device(weight, "weight", input, "input");
  TORCH_CHECK(input.dtype() == weight.dtype(), "Input type (", input.scalar_type(), ") and weight type (",
              weight.scalar_type(), ") should be the same");
  TORCH_CHECK(weight.size(0) % p.G == 0, "Given groups=", p.G, ", expected weight to be divisible by ", p.G,
              " at dimension 0, but got weight of size ", weight.sizes(), " instead");
  TORCH_CHECK(input.size(1) == weight.size(1) * p.G, "Given groups=", p.G, ", weight of size ", weight.sizes(),
              ", expected input", input.sizes(), " to have ", weight.size(1) * p.G, " channels, but got ",
              input.size(1), " channels instead");
  const int64_t Hp = input.size(2) + p.pt + p.pb, Wp = input.size(3) + p.pl + p.pr;
  const int64_t eh = p.dh * (weight.size(2) - 1) + 1, ew = p.dw * (weight.size(3) - 1) + 1;
  TORCH_CHECK(Hp >= eh && Wp >= ew, "Calculated padded input size per channel: (", Hp, " x ", Wp,
              "). Kernel size: (", eh, " x ", ew, "). Kernel size can't be greater than actual input size");
  if (p.mode == PadMode::Reflect)
    TORCH_CHECK(p.pt < input.size(2) && p.pb < input.size(2) && p.pl < input.size(3) && p.pr < input.size(3),
                "padding_mode='reflect': padding size should be less than the corresponding input dimension, but "
                "got padding (", p.pt, ", ", p.pb, ", ", p.pl, ", ", p.pr, ") for input ", input.sizes());
  if (p.mode == PadMode::Circular)
    TORCH_CHECK(p.pt <= input.size(2) && p.pb <= input.size(2) && p.pl <= input.size(3) && p.pr <= input.size(3),
                "padding_mode='circular': padding value causes wrapping around more than once (padding (", p.pt,
                ", ", p.pb, ", ", p.pl, ", ", p.pr, ") for input ", input.sizes(), ")");
}

bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// ---- conv_fwd -----------------------------------------------------------------------------------------

at::Tensor conv_fwd(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                    c10::string_view padding_mode, c10::string_view act_name) {
  const Act act = parse_act(act_name);
  const Params p = parse_params(stride, padding, dilation, groups, padding_mode);
  check_conv(input, weight, p);
  const int64_t N = input.size(0), H = input.size(2), W = input.size(3), Co = weight.size(0);
  const int64_t kh = weight.size(2), kw = weight.size(3);
  at::Tensor bias_c;
  if (present(bias)) {
    check_same_device(*bias, "bias", input, "input");
    TORCH_CHECK(bias->dtype() == input.dtype(), "Input type (", input.scalar_type(), ") and bias type (",
                bias->scalar_type(), ") should be the same");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == Co, "Given weight of size ", weight.sizes(),
                ", expected bias to be 1-dimensional with ", Co, " elements, but got bias of size ", bias->sizes(),
                " instead");
    bias_c = bias->contiguous();
  }
  const int64_t Ho = (H + p.pt + p.pb - p.dh * (kh - 1) - 1) / p.sh + 1;
  const int64_t Wo = (W + p.pl + p.pr - p.dw * (kw - 1) - 1) / p.sw + 1;
  const bool cl = is_cl(input) || is_cl(weight);
  auto out = new_out4(N, Co, Ho, Wo, cl, input.options());
  const Axis ah = make_axis(H, Ho, kh, p.sh, p.pt, p.dh, 1, p.mode);
  const Axis aw = make_axis(W, Wo, kw, p.sw, p.pl, p.dw, 1, p.mode);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "conv_fwd_cpu", [&] {
    conv_core<scalar_t>(input, weight, bias_c.defined() ? bias_c.data_ptr<scalar_t>() : nullptr, ah, aw, p.G, act,
                        0.01, out, cl);
  });
  return out;
}

// ---- grad_weight -----------------------------------------------------------------------------------------

template <typename T>
struct PatchTCtx {
  Img<T> x;
  const Axis* ah;
  const Axis* aw;
  int64_t Ho, Wo, kh, kw, Cg, c0, q0;
  bool c_fast;  // K = (i, j, c) with c fastest; else (c, i, j)
};

// A rows = K (the patch index), A cols = output pixels q0 + [p0, p0+kc).
template <typename T>
void pack_patches_t(const void* vctx, int64_t i0, int64_t mc, int64_t p0, int64_t kc, Acc<T>* dst) {
  using A = Acc<T>;
  constexpr int64_t MR = gemm::Blocking<A>::MR;
  const auto& c = *static_cast<const PatchTCtx<T>*>(vctx);
  const int64_t HW = c.Ho * c.Wo;
  for (int64_t s = 0; s < mc; s += MR) {
    A* d = dst + s * kc;
    int64_t coff[MR], ti[MR], tj[MR];
    bool valid[MR];
    for (int64_t r = 0; r < MR; ++r) {
      valid[r] = s + r < mc;
      const int64_t k = valid[r] ? i0 + s + r : 0;
      int64_t ch, tap;
      if (c.c_fast) { ch = k % c.Cg; tap = k / c.Cg; }
      else { ch = k / (c.kh * c.kw); tap = k % (c.kh * c.kw); }
      ti[r] = tap / c.kw;
      tj[r] = tap % c.kw;
      coff[r] = (c.c0 + ch) * c.x.sC;
    }
    const int64_t q = c.q0 + p0;
    int64_t n = q / HW, oh = (q % HW) / c.Wo, ow = q % c.Wo;
    for (int64_t qq = 0; qq < kc; ++qq) {
      const T* base = c.x.p + n * c.x.sN;
      A* dd = d + qq * MR;
#pragma GCC unroll 8
      for (int64_t r = 0; r < MR; ++r) {
        A v = A(0);
        if (valid[r]) {
          const int64_t ih = c.ah->at(oh, ti[r]), iw = c.aw->at(ow, tj[r]);
          if (ih >= 0 && iw >= 0) v = static_cast<A>(base[coff[r] + ih * c.x.sH + iw * c.x.sW]);
        }
        dd[r] = v;
      }
      if (++ow == c.Wo) {
        ow = 0;
        if (++oh == c.Ho) { oh = 0; ++n; }
      }
    }
  }
}

// gw [Co, Cg, kh, kw] in F (float or double) from x and go (both F, go channels_last [P, Co] rows).
template <typename F>
void grad_weight_gemm(const at::Tensor& x, const at::Tensor& go_cl, const Axis& ah, const Axis& aw, int64_t G,
                      int64_t kh, int64_t kw, F* gw) {
  const int64_t N = x.size(0), Ci = x.size(1), Co = go_cl.size(1), Cg = Ci / G, Og = Co / G;
  const int64_t Ho = ah.out, Wo = aw.out, P = N * Ho * Wo, K = Cg * kh * kw;
  const F* GO = go_cl.data_ptr<F>();
  const bool c_fast = is_cl(x);
  // slots: fixed by the sizes alone (never by the thread count)
  const double work = 2.0 * double(P) * double(K) * double(Og) * double(G);
  const int64_t S = std::max<int64_t>(1, std::min<int64_t>({4, P / 64, static_cast<int64_t>(work / 2e6)}));
  std::vector<F> part(static_cast<size_t>(S * K * Og));
  for (int64_t g = 0; g < G; ++g) {
    auto slot = [&](int64_t s) {
      const int64_t q0 = P * s / S, q1 = P * (s + 1) / S;
      F* dst = part.data() + s * K * Og;
      if (q1 <= q0) { std::fill(dst, dst + K * Og, F(0)); return; }
      PatchTCtx<F> ctx{img<F>(x), &ah, &aw, Ho, Wo, kh, kw, Cg, g * Cg, q0, c_fast};
      gemm::APacker<F> ap{&pack_patches_t<F>, &ctx};
      const gemm::Epilogue<F> plain;
      gemm::gemm_packed_a<F>(K, Og, q1 - q0, ap, gemm::Mat<F>{GO + q0 * Co + g * Og, Co, 1}, dst, Og, plain,
                             /*allow_threads=*/S == 1);
    };
    if (S == 1) slot(0);
    else at::parallel_for(0, S, 1, [&](int64_t s0, int64_t s1) { for (int64_t s = s0; s < s1; ++s) slot(s); });
    // sum the partials in slot order, transposed into [o, c, i, j]
    at::parallel_for(0, K, 256, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        int64_t ch, tap;
        if (c_fast) { ch = k % Cg; tap = k / Cg; } else { ch = k / (kh * kw); tap = k % (kh * kw); }
        for (int64_t o = 0; o < Og; ++o) {
          F v = part[k * Og + o];
          for (int64_t s = 1; s < S; ++s) v += part[(s * K + k) * Og + o];
          gw[((g * Og + o) * Cg + ch) * kh * kw + tap] = v;
        }
      }
    });
  }
}

// Depthwise grad_weight, direct: one task per output channel, images and rows in order.
template <typename F>
void grad_weight_depthwise(const at::Tensor& x, const at::Tensor& go, const Axis& ah, const Axis& aw, int64_t kh,
                           int64_t kw, F* gw) {
  using V = Vectorized<F>;
  constexpr int64_t VW = V::size();
  const int64_t N = x.size(0), C = x.size(1), Co = go.size(1), M = Co / C, Ho = ah.out, Wo = aw.out;
  const int64_t Hp = ah.ext(), Wp = aw.ext(), KK = kh * kw;
  const Img<F> X = img<F>(x);
  const Img<F> GO = img<F>(go);
  at::parallel_for(0, Co, 1, [&](int64_t o0, int64_t o1) {
    F* pl = tls<F>(static_cast<size_t>(Hp * Wp), 1);
    F* grow = tls<F>(static_cast<size_t>(Wo + VW), 2);
    std::vector<V> acc(static_cast<size_t>(KK));
    // the columns past the last full vector (all of them when Wo < the vector width) are
    // summed in double: one chain over N*Ho*(Wo % VW) products, float would drift
    std::vector<double> tail(static_cast<size_t>(KK));
    for (int64_t o = o0; o < o1; ++o) {
      const int64_t c = o / M;
      for (auto& a : acc) a = V(F(0));
      std::fill(tail.begin(), tail.end(), 0.0);
      for (int64_t n = 0; n < N; ++n) {
        build_plane<F>(X, n, c, ah, aw, pl);
        for (int64_t oh = 0; oh < Ho; ++oh) {
          const F* gr = GO.p + n * GO.sN + o * GO.sC + oh * GO.sH;
          for (int64_t q = 0; q < Wo; ++q) grow[q] = gr[q * GO.sW];
          for (int64_t i = 0; i < kh; ++i) {
            const F* row = pl + (oh * ah.stride + i * ah.dil) * Wp;
            for (int64_t j = 0; j < kw; ++j) {
              const F* src = row + j * aw.dil;
              V a = acc[i * kw + j];
              double t = tail[i * kw + j];
              if (aw.stride == 1) {
                int64_t q = 0;
                for (; q + VW <= Wo; q += VW) a = at::vec::fmadd(V::loadu(grow + q), V::loadu(src + q), a);
                for (; q < Wo; ++q) t += static_cast<double>(grow[q]) * static_cast<double>(src[q]);
              } else {
                const int64_t st = aw.stride;
                for (int64_t q = 0; q < Wo; ++q) t += static_cast<double>(grow[q]) * static_cast<double>(src[q * st]);
              }
              acc[i * kw + j] = a;
              tail[i * kw + j] = t;
            }
          }
        }
      }
      for (int64_t e = 0; e < KK; ++e) gw[o * KK + e] = static_cast<F>(static_cast<double>(hsum(acc[e])) + tail[e]);
    }
  });
}

// grad_bias: per-channel sums of go in a fixed order.
template <typename T>
void grad_bias(const at::Tensor& go, T* gb) {
  using A = Acc<T>;
  const int64_t N = go.size(0), Co = go.size(1), H = go.size(2), W = go.size(3);
  const Img<T> G = img<T>(go);
  at::parallel_for(0, Co, 1, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      A tot = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t h = 0; h < H; ++h) {
          const T* r = G.p + n * G.sN + o * G.sC + h * G.sH;
          A part = 0;
          for (int64_t w = 0; w < W; ++w) part += static_cast<A>(r[w * G.sW]);
          tot += part;
        }
      gb[o] = static_cast<T>(tot);
    }
  });
}

// Fold the gradient of the padded input back onto the input (padding modes other than zeros).
template <typename T>
void fold_padded(const at::Tensor& gp, const Axis& vh, const Axis& vw, at::Tensor& gi) {
  using A = Acc<T>;
  const int64_t N = gi.size(0), C = gi.size(1), H = gi.size(2), W = gi.size(3);
  const int64_t Hp = gp.size(2), Wp = gp.size(3);
  const Img<T> P = img<T>(gp);
  T* O = gi.data_ptr<T>();
  const int64_t oN = gi.stride(0), oC = gi.stride(1), oH = gi.stride(2), oW = gi.stride(3);
  at::parallel_for(0, N * C, 1, [&](int64_t t0, int64_t t1) {
    A* acc = tls<A>(static_cast<size_t>(H * W), 3);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / C, c = t % C;
      std::fill(acc, acc + H * W, A(0));
      for (int64_t r = 0; r < Hp; ++r) {
        const int64_t ih = vh.vmap[r];
        if (ih < 0) continue;
        const T* pr = P.p + n * P.sN + c * P.sC + r * P.sH;
        for (int64_t q = 0; q < Wp; ++q) {
          const int64_t iw = vw.vmap[q];
          if (iw >= 0) acc[ih * W + iw] += static_cast<A>(pr[q * P.sW]);
        }
      }
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) O[n * oN + c * oC + h * oH + w * oW] = static_cast<T>(acc[h * W + w]);
    }
  });
}

// W'[g*Cg + c, o, i, j] = W[g*Og + o, c, kh-1-i, kw-1-j]
at::Tensor flip_transpose_weight(const at::Tensor& w, int64_t G) {
  const int64_t Co = w.size(0), Cg = w.size(1), kh = w.size(2), kw = w.size(3), Og = Co / G;
  auto wt = at::empty({G * Cg, Og, kh, kw}, w.options());
  const auto wc = w.contiguous();
  const int64_t es = w.element_size();
  const char* src = static_cast<const char*>(wc.data_ptr());
  char* dst = static_cast<char*>(wt.data_ptr());
  for (int64_t g = 0; g < G; ++g)
    for (int64_t o = 0; o < Og; ++o)
      for (int64_t c = 0; c < Cg; ++c)
        for (int64_t i = 0; i < kh; ++i)
          for (int64_t j = 0; j < kw; ++j)
            std::memcpy(dst + ((((g * Cg + c) * Og + o) * kh + i) * kw + j) * es,
                        src + ((((g * Og + o) * Cg + c) * kh + (kh - 1 - i)) * kw + (kw - 1 - j)) * es, es);
  return wt;
}

// Strided grad_input without the zeros of the input dilation: the output rows
// ih = rh + s*t of one phase rh only meet the taps i' with (rh + i'*d - pad) % s == 0,
// which form a sub-kernel (every step-th tap, step = s/gcd(s,d)) read with
// dilation d/gcd(s,d) from go: a plain stride-1 conv per phase (sh*sw of them),
// each written into its rows and columns of gi. No wasted FMAs on zeros.
struct Phase {
  int64_t first = 0, taps = 0, step = 1, dil = 1, pad = 0, out = 0;
};
Phase make_phase(int64_t r, int64_t in_go, int64_t out_total, int64_t k, int64_t s, int64_t d, int64_t pad_begin) {
  Phase ph;
  ph.out = out_total > r ? (out_total - r + s - 1) / s : 0;
  const int64_t g = std::gcd(s, d);
  ph.step = s / g;
  ph.dil = d / g;
  ph.first = -1;
  for (int64_t i = 0; i < std::min(k, ph.step); ++i) {
    const int64_t v = r + i * d - pad_begin;
    if (((v % s) + s) % s == 0) { ph.first = i; break; }
  }
  if (ph.first < 0) { ph.taps = 0; return ph; }
  ph.taps = (k - ph.first + ph.step - 1) / ph.step;
  const int64_t v0 = r + ph.first * d - pad_begin;  // divisible by s
  const int64_t u0 = v0 >= 0 ? v0 / s : -((-v0) / s);
  ph.pad = -u0;
  (void)in_go;
  return ph;
}

template <typename T>
void grad_input_phases(const at::Tensor& go, const at::Tensor& wt, const Params& p, int64_t H, int64_t W,
                       at::Tensor& gi, bool cl) {
  const int64_t N = go.size(0), Ci = wt.size(0), kh = wt.size(2), kw = wt.size(3);
  const int64_t Ho = go.size(2), Wo = go.size(3);
  for (int64_t rh = 0; rh < p.sh; ++rh)
    for (int64_t rw = 0; rw < p.sw; ++rw) {
      const Phase ph = make_phase(rh, Ho, H, kh, p.sh, p.dh, p.dh * (kh - 1) - p.pt);
      const Phase pw = make_phase(rw, Wo, W, kw, p.sw, p.dw, p.dw * (kw - 1) - p.pl);
      if (ph.out == 0 || pw.out == 0) continue;
      auto dst = gi.slice(2, rh, H, p.sh).slice(3, rw, W, p.sw);
      if (ph.taps == 0 || pw.taps == 0) { dst.zero_(); continue; }
      const auto sub = wt.slice(2, ph.first, kh, ph.step).slice(3, pw.first, kw, pw.step).contiguous();
      const Axis bh = make_axis(Ho, ph.out, ph.taps, 1, ph.pad, ph.dil, 1, PadMode::Zeros);
      const Axis bw = make_axis(Wo, pw.out, pw.taps, 1, pw.pad, pw.dil, 1, PadMode::Zeros);
      auto tmp = new_out4(N, Ci, ph.out, pw.out, cl, go.options());
      conv_core<T>(go, sub, nullptr, bh, bw, p.G, Act::None, 0.0, tmp, cl);
      dst.copy_(tmp);
    }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_bwd(const at::Tensor& grad_output, const at::Tensor& input,
                                                        const at::Tensor& weight, at::IntArrayRef stride,
                                                        at::IntArrayRef padding, at::IntArrayRef dilation,
                                                        int64_t groups, c10::string_view padding_mode,
                                                        std::array<bool, 3> output_mask) {
  const Params p = parse_params(stride, padding, dilation, groups, padding_mode);
  check_conv(input, weight, p);
  const int64_t N = input.size(0), Ci = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Co = weight.size(0), Cg = weight.size(1), kh = weight.size(2), kw = weight.size(3);
  const int64_t Ho = (H + p.pt + p.pb - p.dh * (kh - 1) - 1) / p.sh + 1;
  const int64_t Wo = (W + p.pl + p.pr - p.dw * (kw - 1) - 1) / p.sw + 1;
  check_same_device(grad_output, "grad_output", input, "input");
  TORCH_CHECK(grad_output.dtype() == input.dtype(), "grad_output: expected dtype ", input.dtype(), ", got ",
              grad_output.dtype());
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == N && grad_output.size(1) == Co &&
                  grad_output.size(2) == Ho && grad_output.size(3) == Wo,
              "grad_output: expected size [", N, ", ", Co, ", ", Ho, ", ", Wo, "] (the conv's output), got ",
              grad_output.sizes());
  const auto opts = input.options();
  const bool cl = is_cl(input) || is_cl(weight);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor gi = output_mask[0] ? new_out4(N, Ci, H, W, cl, opts) : at::empty({0}, opts);
  at::Tensor gw = output_mask[1] ? new_output(weight.sizes(), opts) : at::empty({0}, opts);
  at::Tensor gb = output_mask[2] ? new_output({Co}, opts) : at::empty({0}, opts);
  if (N == 0) {  // an empty batch: zero weight and bias gradients
    if (output_mask[1]) gw.zero_();
    if (output_mask[2]) gb.zero_();
    return {gi, gw, gb};
  }
  const auto go = grad_output.contiguous(fmt);
  const Axis ah = make_axis(H, Ho, kh, p.sh, p.pt, p.dh, 1, p.mode);
  const Axis aw = make_axis(W, Wo, kw, p.sw, p.pl, p.dw, 1, p.mode);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "conv_bwd_cpu", [&] {
    using T = scalar_t;
    if (output_mask[0]) {
      const auto wt = flip_transpose_weight(weight, p.G);
      if (p.mode == PadMode::Zeros && (p.sh > 1 || p.sw > 1)) {
        grad_input_phases<T>(go, wt, p, H, W, gi, cl);
      } else if (p.mode == PadMode::Zeros) {
        const Axis bh = make_axis(Ho, H, kh, 1, p.dh * (kh - 1) - p.pt, p.dh, p.sh, PadMode::Zeros);
        const Axis bw = make_axis(Wo, W, kw, 1, p.dw * (kw - 1) - p.pl, p.dw, p.sw, PadMode::Zeros);
        conv_core<T>(go, wt, nullptr, bh, bw, p.G, Act::None, 0.0, gi, cl);
      } else {
        const int64_t Hp = H + p.pt + p.pb, Wp = W + p.pl + p.pr;
        const Axis bh = make_axis(Ho, Hp, kh, 1, p.dh * (kh - 1), p.dh, p.sh, PadMode::Zeros);
        const Axis bw = make_axis(Wo, Wp, kw, 1, p.dw * (kw - 1), p.dw, p.sw, PadMode::Zeros);
        auto gp = new_out4(N, Ci, Hp, Wp, cl, opts);
        conv_core<T>(go, wt, nullptr, bh, bw, p.G, Act::None, 0.0, gp, cl);
        // padded position r reads input vmap[r] (stride 1, k 1 view of the forward's padding)
        const Axis vh = make_axis(H, Hp, 1, 1, p.pt, 1, 1, p.mode);
        const Axis vw = make_axis(W, Wp, 1, 1, p.pl, 1, 1, p.mode);
        fold_padded<T>(gp, vh, vw, gi);
      }
    }
    if (output_mask[1]) {
      const bool depthwise = Cg == 1 && p.G == Ci;
      using F = Acc<T>;
      at::Tensor xf = input, gof = go;
      if constexpr (!std::is_same_v<T, F>) {
        xf = input.to(c10::CppTypeToScalarType<F>::value);
        gof = go.to(c10::CppTypeToScalarType<F>::value);
      }
      at::Tensor gwf = std::is_same_v<T, F> ? gw : at::empty(weight.sizes(), opts.dtype(c10::CppTypeToScalarType<F>::value));
      if (depthwise) {
        grad_weight_depthwise<F>(xf, gof, ah, aw, kh, kw, gwf.data_ptr<F>());
      } else {
        const auto go_cl = gof.contiguous(at::MemoryFormat::ChannelsLast);
        grad_weight_gemm<F>(xf, go_cl, ah, aw, p.G, kh, kw, gwf.data_ptr<F>());
      }
      if constexpr (!std::is_same_v<T, F>) {
        const F* s = gwf.data_ptr<F>();
        T* d = gw.data_ptr<T>();
        for (int64_t e = 0; e < gw.numel(); ++e) d[e] = static_cast<T>(s[e]);
      }
    }
    if (output_mask[2]) grad_bias<T>(go, gb.data_ptr<T>());
  });
  return {gi, gw, gb};
}

}  // namespace
}  // namespace mte

TORCH_LIBRARY_IMPL(minitorch_ext, CPU, m) {
  m.impl("conv_fwd", &mte::conv_fwd);
  m.impl("conv_bwd", &mte::conv_bwd);
}
