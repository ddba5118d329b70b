// Pooling on CUDA: max_pool2d (with int64 indices), avg_pool2d, adaptive_avg_pool2d,
// forward and backward, for CUDA tensors (schemas: csrc/ops.cpp; the CPU kernels of
// pool_cpu.cpp are the reference semantics, followed element for element).
// float32, float64, bfloat16, float16; float math (double for float64).
//
// Forward: one thread per output element, reading its window straight from the input
// through the input's four strides (any layout); the output (and the indices) are
// written in the input's suggested memory format (contiguous or channels_last), the
// linear thread index running in that format's memory order, so the stores of a warp
// are contiguous.
//   max: the window is scanned row-major from its first in-bounds element; an element
//     replaces the running max when `v > max || isnan(v)` (ties keep the first, a NaN
//     window reports its last NaN); the index is ih*W+iw in the (n, c) plane.
//   avg: the window clipped to the padded input gives the count_include_pad divisor,
//     clipped to the input the summed elements and the other divisor;
//     divisor_override replaces both.
//   adaptive avg: rows [floor(o*H/Ho), ceil((o+1)*H/Ho)), likewise columns.
// Backward, gather form (deterministic, no atomics):
//   avg / adaptive avg: one thread per input element, summing go/divisor over the output
//     windows that contain it, in output order (the CPU kernel's order of additions).
//   max: the schema gives no window geometry, so "the outputs whose index is this
//     input" cannot be enumerated from the input side. One block owns one (n, c) plane
//     and walks its outputs in chunks of 256: the first thread of each distinct index
//     in a chunk sums that index's gradients in output order and adds the sum to a
//     float accumulator of the plane (owned by the block: no other writer); chunks go in
//     order. The result is the same run to run. An index outside [0, H*W) sets a flag
//     that the host turns into the CPU kernel's error (one device sync).
// Memory traffic: the forward reads each input element once per window holding it
// (from L1/L2 after the first) and writes the outputs once; the backward reads the
// grad_output elements of each input's windows and writes grad_input once (max: reads
// grad_output and indices once, writes a float plane and grad_input once).
// Build size: 4 dtypes x 6 kernels = 24 (nvcc 13.0, sm_90: 38-92 registers, 0 bytes
// spilled); ~67 s of CPU on the 2-core build machine, about the house headers' own cost.
// Not measured on a GPU yet: the tests (tests/test_pool_cuda.py) run on the lent device.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

#include "common/alloc.h"
#include "common/dtype_traits_cuda.cuh"

namespace {

using mte::cuda_traits::Bf16;
using mte::cuda_traits::F32;
using mte::cuda_traits::F64;
using mte::cuda_traits::Fp16;

template <class F>
void with_traits(at::ScalarType t, F&& f) {
  if (!mte::cuda_traits::for_float_traits(t, f)) TORCH_CHECK(false, "pool (CUDA): unsupported dtype ", t);
}

constexpr int kThreads = 256;
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
unsigned blocks_for(int64_t n) { return static_cast<unsigned>(std::max<int64_t>(1, ceil_div(n, kThreads))); }

struct Str {
  int64_t n, c, h, w;
};
Str str_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

struct Geo {
  int64_t N, C, H, W, Ho, Wo;
  int64_t kH = 1, kW = 1, sH = 1, sW = 1, pH = 0, pW = 0, dH = 1, dW = 1;
};

// Linear index e over [N, C, h, w] in memory order of the layout (cl: (n, y, x, c)).
__device__ __forceinline__ void unflat(int64_t e, int64_t C, int64_t h, int64_t w, bool cl, int64_t& n,
                                       int64_t& c, int64_t& y, int64_t& x) {
  if (cl) {
    c = e % C; e /= C;
    x = e % w; e /= w;
    y = e % h; n = e / h;
  } else {
    x = e % w; e /= w;
    y = e % h; e /= h;
    c = e % C; n = e / C;
  }
}

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
__device__ __forceinline__ int64_t ceil_div_dev(int64_t a, int64_t b) { return (a + b - 1) / b; }  // a >= 0

__device__ __forceinline__ int64_t ad_start(int64_t o, int64_t out, int64_t in) {
  return (o / out) * in + ((o % out) * in) / out;
}
__device__ __forceinline__ int64_t ad_end(int64_t o, int64_t out, int64_t in) { return 1 + ((o + 1) * in - 1) / out; }

// ---- max pool --------------------------------------------------------------------

template <class Tr>
__global__ void __launch_bounds__(kThreads) max_fwd_kernel(const typename Tr::S* x, Str xs, Geo g, bool cl,
                                                           typename Tr::S* y, int64_t* ind, Str ys,
                                                           int64_t total) {
  using A = typename Tr::A;
  const int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= total) return;
  int64_t n, c, oh, ow;
  unflat(e, g.C, g.Ho, g.Wo, cl, n, c, oh, ow);
  int64_t ih0 = oh * g.sH - g.pH;
  const int64_t ih1 = imin(ih0 + (g.kH - 1) * g.dH + 1, g.H);
  while (ih0 < 0) ih0 += g.dH;
  int64_t iw0 = ow * g.sW - g.pW;
  const int64_t iw1 = imin(iw0 + (g.kW - 1) * g.dW + 1, g.W);
  while (iw0 < 0) iw0 += g.dW;
  const typename Tr::S* xp = x + n * xs.n + c * xs.c;
  int64_t mi = ih0 * g.W + iw0;
  A mv = -std::numeric_limits<A>::infinity();
  for (int64_t ih = ih0; ih < ih1; ih += g.dH)
    for (int64_t iw = iw0; iw < iw1; iw += g.dW) {
      const A v = Tr::load(xp[ih * xs.h + iw * xs.w]);
      if (v > mv || v != v) { mv = v; mi = ih * g.W + iw; }
    }
  const int64_t o = n * ys.n + c * ys.c + oh * ys.h + ow * ys.w;
  y[o] = Tr::store(mv);
  ind[o] = mi;
}

// One block per (n, c) plane, see the header. acc: [N*C, H*W] float workspace.
template <class Tr>
__global__ void __launch_bounds__(kThreads) max_bwd_kernel(const typename Tr::S* go, Str gs, const int64_t* id,
                                                           Str is, Geo g, typename Tr::A* acc,
                                                           typename Tr::S* gi, Str gis, int* bad) {
  using A = typename Tr::A;
  __shared__ int64_t sidx[kThreads];
  __shared__ A sval[kThreads];
  const int64_t p = blockIdx.x, n = p / g.C, c = p - n * g.C;
  const int64_t HW = g.H * g.W, HWo = g.Ho * g.Wo;
  const int t = static_cast<int>(threadIdx.x);
  A* pl = acc + p * HW;
  for (int64_t i = t; i < HW; i += kThreads) pl[i] = A(0);
  bool seen_bad = false;
  for (int64_t base = 0; base < HWo; base += kThreads) {
    __syncthreads();  // the previous chunk's readers and writers are done (and pl is zeroed)
    const int64_t o = base + t;
    int64_t my = -1;
    A val = A(0);
    if (o < HWo) {
      const int64_t oh = o / g.Wo, ow = o - oh * g.Wo;
      my = id[n * is.n + c * is.c + oh * is.h + ow * is.w];
      val = Tr::load(go[n * gs.n + c * gs.c + oh * gs.h + ow * gs.w]);
      if (my < 0 || my >= HW) { seen_bad = true; my = -1; }
    }
    sidx[t] = my;
    sval[t] = val;
    __syncthreads();
    if (my >= 0) {
      bool first = true;
      for (int u = 0; u < t; ++u)
        if (sidx[u] == my) { first = false; break; }
      if (first) {
        A sum = A(0);
        for (int u = t; u < kThreads; ++u)
          if (sidx[u] == my) sum += sval[u];
        pl[my] += sum;
      }
    }
  }
  if (seen_bad) *bad = 1;
  __syncthreads();
  for (int64_t i = t; i < HW; i += kThreads) {
    const int64_t ih = i / g.W, iw = i - ih * g.W;
    gi[n * gis.n + c * gis.c + ih * gis.h + iw * gis.w] = Tr::store(pl[i]);
  }
}

// ---- avg pool --------------------------------------------------------------------

struct AvgOpt {
  bool count_include_pad;
  bool has_div;
  int64_t div;
};

__device__ __forceinline__ int64_t avg_window(const Geo& g, const AvgOpt& o, int64_t oh, int64_t ow, int64_t& ih0,
                                              int64_t& ih1, int64_t& iw0, int64_t& iw1) {
  ih0 = oh * g.sH - g.pH;
  iw0 = ow * g.sW - g.pW;
  ih1 = imin(ih0 + g.kH, g.H + g.pH);
  iw1 = imin(iw0 + g.kW, g.W + g.pW);
  const int64_t pool = (ih1 - ih0) * (iw1 - iw0);
  ih0 = imax(ih0, 0), iw0 = imax(iw0, 0);
  ih1 = imin(ih1, g.H), iw1 = imin(iw1, g.W);
  if (ih0 >= ih1 || iw0 >= iw1) return 0;
  if (o.has_div) return o.div;
  return o.count_include_pad ? pool : (ih1 - ih0) * (iw1 - iw0);
}

template <class Tr>
__global__ void __launch_bounds__(kThreads) avg_fwd_kernel(const typename Tr::S* x, Str xs, Geo g, AvgOpt op,
                                                           bool cl, typename Tr::S* y, Str ys, int64_t total) {
  using A = typename Tr::A;
  const int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= total) return;
  int64_t n, c, oh, ow;
  unflat(e, g.C, g.Ho, g.Wo, cl, n, c, oh, ow);
  int64_t ih0, ih1, iw0, iw1;
  const int64_t div = avg_window(g, op, oh, ow, ih0, ih1, iw0, iw1);
  A r = A(0);
  if (div != 0) {
    const typename Tr::S* xp = x + n * xs.n + c * xs.c;
    A sum = A(0);
    for (int64_t ih = ih0; ih < ih1; ++ih)
      for (int64_t iw = iw0; iw < iw1; ++iw) sum += Tr::load(xp[ih * xs.h + iw * xs.w]);
    r = sum / static_cast<A>(div);
  }
  y[n * ys.n + c * ys.c + oh * ys.h + ow * ys.w] = Tr::store(r);
}

// One thread per input element: the outputs whose window [oh*sH - pH, +kH) holds ih.
template <class Tr>
__global__ void __launch_bounds__(kThreads) avg_bwd_kernel(const typename Tr::S* go, Str gs, Geo g, AvgOpt op,
                                                           bool cl, typename Tr::S* gi, Str gis, int64_t total) {
  using A = typename Tr::A;
  const int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= total) return;
  int64_t n, c, ih, iw;
  unflat(e, g.C, g.H, g.W, cl, n, c, ih, iw);
  // oh*sH - pH <= ih < oh*sH - pH + kH
  const int64_t ah = ih + g.pH - g.kH + 1, aw = iw + g.pW - g.kW + 1;
  const int64_t oh0 = imax(0, ah <= 0 ? 0 : ceil_div_dev(ah, g.sH));
  const int64_t oh1 = imin(g.Ho - 1, (ih + g.pH) / g.sH);
  const int64_t ow0 = imax(0, aw <= 0 ? 0 : ceil_div_dev(aw, g.sW));
  const int64_t ow1 = imin(g.Wo - 1, (iw + g.pW) / g.sW);
  const typename Tr::S* gp = go + n * gs.n + c * gs.c;
  A sum = A(0);
  for (int64_t oh = oh0; oh <= oh1; ++oh)
    for (int64_t ow = ow0; ow <= ow1; ++ow) {
      int64_t ih0, ih1, iw0, iw1;
      const int64_t div = avg_window(g, op, oh, ow, ih0, ih1, iw0, iw1);
      if (div == 0 || ih < ih0 || ih >= ih1 || iw < iw0 || iw >= iw1) continue;
      sum += Tr::load(gp[oh * gs.h + ow * gs.w]) / static_cast<A>(div);
    }
  gi[n * gis.n + c * gis.c + ih * gis.h + iw * gis.w] = Tr::store(sum);
}

// ---- adaptive avg pool -----------------------------------------------------------

template <class Tr>
__global__ void __launch_bounds__(kThreads) adaptive_fwd_kernel(const typename Tr::S* x, Str xs, Geo g, bool cl,
                                                                typename Tr::S* y, Str ys, int64_t total) {
  using A = typename Tr::A;
  const int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= total) return;
  int64_t n, c, oh, ow;
  unflat(e, g.C, g.Ho, g.Wo, cl, n, c, oh, ow);
  const int64_t ih0 = ad_start(oh, g.Ho, g.H), ih1 = ad_end(oh, g.Ho, g.H);
  const int64_t iw0 = ad_start(ow, g.Wo, g.W), iw1 = ad_end(ow, g.Wo, g.W);
  const typename Tr::S* xp = x + n * xs.n + c * xs.c;
  A sum = A(0);
  for (int64_t ih = ih0; ih < ih1; ++ih)
    for (int64_t iw = iw0; iw < iw1; ++iw) sum += Tr::load(xp[ih * xs.h + iw * xs.w]);
  y[n * ys.n + c * ys.c + oh * ys.h + ow * ys.w] = Tr::store(sum / A(ih1 - ih0) / A(iw1 - iw0));
}

template <class Tr>
__global__ void __launch_bounds__(kThreads) adaptive_bwd_kernel(const typename Tr::S* go, Str gs, Geo g, bool cl,
                                                                typename Tr::S* gi, Str gis, int64_t total) {
  using A = typename Tr::A;
  const int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= total) return;
  int64_t n, c, ih, iw;
  unflat(e, g.C, g.H, g.W, cl, n, c, ih, iw);
  // the windows holding ih start at or after floor(ih*Ho/H) - 1 and end before ceil((ih+1)*Ho/H) + 1;
  // every candidate is checked against its window
  const int64_t oh0 = imax(0, (ih * g.Ho) / g.H - 1), oh1 = imin(g.Ho, ceil_div_dev((ih + 1) * g.Ho, g.H) + 1);
  const int64_t ow0 = imax(0, (iw * g.Wo) / g.W - 1), ow1 = imin(g.Wo, ceil_div_dev((iw + 1) * g.Wo, g.W) + 1);
  const typename Tr::S* gp = go + n * gs.n + c * gs.c;
  A sum = A(0);
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    const int64_t h0 = ad_start(oh, g.Ho, g.H), h1 = ad_end(oh, g.Ho, g.H);
    if (ih < h0 || ih >= h1) continue;
    for (int64_t ow = ow0; ow < ow1; ++ow) {
      const int64_t w0 = ad_start(ow, g.Wo, g.W), w1 = ad_end(ow, g.Wo, g.W);
      if (iw < w0 || iw >= w1) continue;
      sum += Tr::load(gp[oh * gs.h + ow * gs.w]) / A(h1 - h0) / A(w1 - w0);
    }
  }
  gi[n * gis.n + c * gis.c + ih * gis.h + iw * gis.w] = Tr::store(sum);
}

// ---- host side: checks (as pool_cpu.cpp) -----------------------------------------

int64_t out_size(int64_t in, int64_t k, int64_t pad, int64_t stride, int64_t dil, bool ceil) {
  const int64_t num = in + 2 * pad - dil * (k - 1) - 1 + (ceil ? stride - 1 : 0);
  int64_t out = (num >= 0 ? num / stride : -((-num + stride - 1) / stride)) + 1;
  if (ceil && (out - 1) * stride >= in + pad) --out;
  return out;
}

void check_input(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": input: expected a 4-D tensor [N, C, H, W], got ", x.dim(), "-D of size ",
              x.sizes());
  const auto st = x.scalar_type();
  TORCH_CHECK_NOT_IMPLEMENTED(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf, op,
                              ": input: not implemented for '", c10::toString(st),
                              "' (expected float32, float64, bfloat16 or float16)");
  TORCH_CHECK(x.is_cuda(), op, ": input: expected a CUDA tensor, got one on ", x.device());
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

bool channels_last(const at::Tensor& x) { return x.suggest_memory_format() == at::MemoryFormat::ChannelsLast; }

at::Tensor alloc4(int64_t N, int64_t C, int64_t h, int64_t w, bool cl, const at::TensorOptions& o) {
  return cl ? mte::new_output({N, h, w, C}, o).permute({0, 3, 1, 2}) : mte::new_output({N, C, h, w}, o);
}

template <class T>
const T* cptr(const at::Tensor& t) { return static_cast<const T*>(t.const_data_ptr()); }
template <class T>
T* mptr(at::Tensor& t) { return static_cast<T*>(t.data_ptr()); }

// ---- the ops -----------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> max_pool2d_fwd_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                       at::IntArrayRef stride, at::IntArrayRef padding,
                                                       at::IntArrayRef dilation, bool ceil_mode) {
  const Geo g = make_geo(input, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d_fwd");
  c10::cuda::CUDAGuard guard(input.device());
  const bool cl = channels_last(input);
  at::Tensor y = alloc4(g.N, g.C, g.Ho, g.Wo, cl, input.options());
  at::Tensor ind = alloc4(g.N, g.C, g.Ho, g.Wo, cl, input.options().dtype(at::kLong));
  const int64_t total = y.numel();
  if (total == 0) return {y, ind};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  with_traits(input.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    using S = typename Tr::S;
    max_fwd_kernel<Tr><<<blocks_for(total), kThreads, 0, stream>>>(cptr<S>(input), str_of(input), g, cl,
                                                                   mptr<S>(y), mptr<int64_t>(ind), str_of(y), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, ind};
}

at::Tensor max_pool2d_bwd_cuda(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& indices) {
  check_input(input, "max_pool2d_bwd");
  TORCH_CHECK(indices.scalar_type() == at::kLong && indices.sizes() == grad_output.sizes(),
              "max_pool2d_bwd: indices: expected an int64 tensor of grad_output's shape ", grad_output.sizes(),
              ", got ", indices.scalar_type(), " of shape ", indices.sizes());
  check_grad(grad_output, input, grad_output.dim() == 4 ? grad_output.size(2) : -1,
             grad_output.dim() == 4 ? grad_output.size(3) : -1, "max_pool2d_bwd");
  TORCH_CHECK(indices.device() == input.device(), "max_pool2d_bwd: indices: expected a tensor on ", input.device(),
              ", got one on ", indices.device());
  c10::cuda::CUDAGuard guard(input.device());
  const bool cl = channels_last(input);
  Geo g;
  g.N = input.size(0), g.C = input.size(1), g.H = input.size(2), g.W = input.size(3);
  g.Ho = grad_output.size(2), g.Wo = grad_output.size(3);
  at::Tensor gi = alloc4(g.N, g.C, g.H, g.W, cl, input.options());
  if (gi.numel() == 0) return gi;
  const auto acc_dtype = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor acc = at::empty({g.N * g.C, g.H * g.W}, input.options().dtype(acc_dtype));
  at::Tensor bad = at::zeros({1}, input.options().dtype(at::kInt));
  TORCH_CHECK(g.N * g.C <= 2147483647LL, "max_pool2d_bwd: too many planes for one launch");
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  with_traits(input.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    using S = typename Tr::S;
    using A = typename Tr::A;
    max_bwd_kernel<Tr><<<static_cast<unsigned>(g.N * g.C), kThreads, 0, stream>>>(
        cptr<S>(grad_output), str_of(grad_output), cptr<int64_t>(indices), str_of(indices), g, mptr<A>(acc),
        mptr<S>(gi), str_of(gi), mptr<int>(bad));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  TORCH_CHECK(bad.item<int>() == 0, "max_pool2d_bwd: indices: found an index outside [0, H*W) = [0, ", g.H * g.W,
              ")");
  return gi;
}

Geo avg_geo(const at::Tensor& input, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p, bool ceil,
            const std::optional<int64_t>& div, const char* op) {
  TORCH_CHECK(!div.has_value() || *div != 0, op, ": divisor must be not zero");
  const int64_t one[2] = {1, 1};
  return make_geo(input, k, s, p, at::IntArrayRef(one, 2), ceil, op);
}

AvgOpt avg_opt(bool count_include_pad, const std::optional<int64_t>& d) {
  return {count_include_pad, d.has_value(), d.has_value() ? *d : 0};
}

at::Tensor avg_pool2d_fwd_cuda(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                               std::optional<int64_t> divisor_override) {
  const Geo g = avg_geo(input, kernel_size, stride, padding, ceil_mode, divisor_override, "avg_pool2d_fwd");
  c10::cuda::CUDAGuard guard(input.device());
  const bool cl = channels_last(input);
  at::Tensor y = alloc4(g.N, g.C, g.Ho, g.Wo, cl, input.options());
  const int64_t total = y.numel();
  if (total == 0) return y;
  const AvgOpt op = avg_opt(count_include_pad, divisor_override);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  with_traits(input.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    using S = typename Tr::S;
    avg_fwd_kernel<Tr><<<blocks_for(total), kThreads, 0, stream>>>(cptr<S>(input), str_of(input), g, op, cl,
                                                                   mptr<S>(y), str_of(y), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor avg_pool2d_bwd_cuda(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                               bool count_include_pad, std::optional<int64_t> divisor_override) {
  const Geo g = avg_geo(input, kernel_size, stride, padding, ceil_mode, divisor_override, "avg_pool2d_bwd");
  check_grad(grad_output, input, g.Ho, g.Wo, "avg_pool2d_bwd");
  c10::cuda::CUDAGuard guard(input.device());
  const bool cl = channels_last(input);
  at::Tensor gi = alloc4(g.N, g.C, g.H, g.W, cl, input.options());
  const int64_t total = gi.numel();
  if (total == 0) return gi;
  const AvgOpt op = avg_opt(count_include_pad, divisor_override);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  with_traits(input.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    using S = typename Tr::S;
    avg_bwd_kernel<Tr><<<blocks_for(total), kThreads, 0, stream>>>(cptr<S>(grad_output), str_of(grad_output), g,
                                                                   op, cl, mptr<S>(gi), str_of(gi), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gi;
}

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

at::Tensor adaptive_avg_pool2d_fwd_cuda(const at::Tensor& input, at::IntArrayRef output_size) {
  const Geo g = adaptive_geo(input, output_size, "adaptive_avg_pool2d_fwd");
  c10::cuda::CUDAGuard guard(input.device());
  const bool cl = channels_last(input);
  at::Tensor y = alloc4(g.N, g.C, g.Ho, g.Wo, cl, input.options());
  const int64_t total = y.numel();
  if (total == 0) return y;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  with_traits(input.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    using S = typename Tr::S;
    adaptive_fwd_kernel<Tr><<<blocks_for(total), kThreads, 0, stream>>>(cptr<S>(input), str_of(input), g, cl,
                                                                        mptr<S>(y), str_of(y), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor adaptive_avg_pool2d_bwd_cuda(const at::Tensor& grad_output, const at::Tensor& input) {
  check_input(input, "adaptive_avg_pool2d_bwd");
  TORCH_CHECK(grad_output.dim() == 4, "adaptive_avg_pool2d_bwd: grad_output: expected a 4-D tensor, got ",
              grad_output.sizes());
  const Geo g = adaptive_geo(input, {grad_output.size(2), grad_output.size(3)}, "adaptive_avg_pool2d_bwd");
  check_grad(grad_output, input, g.Ho, g.Wo, "adaptive_avg_pool2d_bwd");
  c10::cuda::CUDAGuard guard(input.device());
  const bool cl = channels_last(input);
  at::Tensor gi = alloc4(g.N, g.C, g.H, g.W, cl, input.options());
  const int64_t total = gi.numel();
  if (total == 0) return gi;
  if (grad_output.numel() == 0) return gi.zero_();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  with_traits(input.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    using S = typename Tr::S;
    adaptive_bwd_kernel<Tr><<<blocks_for(total), kThreads, 0, stream>>>(cptr<S>(grad_output), str_of(grad_output),
                                                                        g, cl, mptr<S>(gi), str_of(gi), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gi;
}

}  // namespace

TORCH_LIBRARY_IMPL(minitorch_ext, CUDA, m) {
  m.impl("max_pool2d_fwd", &max_pool2d_fwd_cuda);
  m.impl("max_pool2d_bwd", &max_pool2d_bwd_cuda);
  m.impl("avg_pool2d_fwd", &avg_pool2d_fwd_cuda);
  m.impl("avg_pool2d_bwd", &avg_pool2d_bwd_cuda);
  m.impl("adaptive_avg_pool2d_fwd", &adaptive_avg_pool2d_fwd_cuda);
  m.impl("adaptive_avg_pool2d_bwd", &adaptive_avg_pool2d_bwd_cuda);
}
