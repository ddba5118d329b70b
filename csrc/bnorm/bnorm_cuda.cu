// BatchNorm and GroupNorm (InstanceNorm: G == C) on CUDA, forward and backward (schemas:
// csrc/ops.cpp; bnorm_cpu.cpp is the reference semantics). float32, float64, bfloat16,
// float16 activations, float math (double for float64); weight/bias/running stats of the
// input's dtype or float32 (read and written through a runtime dtype tag: no template
// fan-out over parameter dtypes).
//
// Algorithm.
//   Statistics (BatchNorm: one block per channel over the N*S elements, read through the
//     input's strides; GroupNorm: one block per (n, g) over its contiguous span): every
//     thread keeps a Welford state (count, mean, M2) over a fixed strided subset, then
//     the 256 states are merged with Chan's formula in a fixed shared-memory tree.
//     Thread 0 writes mean / invstd and (BatchNorm, training) updates the running stats
//     with the unbiased variance.
//   Normalize / dx: one thread per element in memory order (coalesced), the per-channel
//     constants (mean, invstd, weight, bias, and in backward the two channel sums) read
//     from L1/L2.
//   Backward sums: one block per channel (BatchNorm) or per (n, c) (GroupNorm), a fixed
//     tree again; GroupNorm's dweight/dbias reduce the per-(n, c) sums over n in order.
// Memory traffic: training forward reads x twice and writes y once; backward reads x and
//   dy twice and writes dx once (the minimum for a batch statistic).
// The trick: no atomics anywhere (every sum has one fixed order: bitwise repeatable), and
//   Welford per thread + Chan per tree level gives the two-pass accuracy in one read.
// Known gap: BatchNorm statistics on channels_last read a channel with stride C (one
//   sector per element); a row-blocked partials pass (as bnorm_cpu.cpp's) would coalesce.
// Not measured on a GPU yet: tests/test_batchnorm_cuda.py runs on the lent device.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>

#include "common/alloc.h"
#include "common/dtype_traits_cuda.cuh"
#include "common/checks.h"

namespace {

using mte::cuda_traits::Bf16;
using mte::cuda_traits::F32;
using mte::cuda_traits::F64;
using mte::cuda_traits::Fp16;

template <class F>
void with_traits(at::ScalarType t, F&& f) {
  if (!mte::cuda_traits::for_float_traits(t, f)) TORCH_CHECK(false, "bnorm (CUDA): input: unsupported dtype ", t);
}

// a parameter vector of any float dtype, read/written by element (runtime tag)
struct PVec {
  void* p = nullptr;
  int tag = -1;  // 0 float, 1 double, 2 bf16, 3 half; -1 absent
};

PVec pvec(const std::optional<at::Tensor>& t) {
  PVec v;
  if (!t.has_value() || !t->defined()) return v;
  TORCH_CHECK(t->is_contiguous(), "bnorm (CUDA): expected contiguous per-channel tensors");
  v.p = t->data_ptr();
  switch (t->scalar_type()) {
    case at::kFloat: v.tag = 0; break;
    case at::kDouble: v.tag = 1; break;
    case at::kBFloat16: v.tag = 2; break;
    case at::kHalf: v.tag = 3; break;
    default: TORCH_CHECK(false, "bnorm (CUDA): unsupported parameter dtype ", t->scalar_type());
  }
  return v;
}

__device__ __forceinline__ double pget(PVec v, int64_t i, double dflt) {
  switch (v.tag) {
    case 0: return static_cast<const float*>(v.p)[i];
    case 1: return static_cast<const double*>(v.p)[i];
    case 2: return __bfloat162float(static_cast<const __nv_bfloat16*>(v.p)[i]);
    case 3: return __half2float(static_cast<const __half*>(v.p)[i]);
    default: return dflt;
  }
}

__device__ __forceinline__ void pset(PVec v, int64_t i, double x) {
  switch (v.tag) {
    case 0: static_cast<float*>(v.p)[i] = static_cast<float>(x); break;
    case 1: static_cast<double*>(v.p)[i] = x; break;
    case 2: static_cast<__nv_bfloat16*>(v.p)[i] = __float2bfloat16_rn(static_cast<float>(x)); break;
    case 3: static_cast<__half*>(v.p)[i] = __float2half_rn(static_cast<float>(x)); break;
    default: break;
  }
}

constexpr int kThreads = 256;
unsigned blocks_for(int64_t n) { return static_cast<unsigned>(std::max<int64_t>(1, (n + kThreads - 1) / kThreads)); }

// [N, C, S] through strides (dense: contiguous or channels_last)
struct View {
  int64_t N, C, S, sN, sC, sS;
  bool cl;
};

View view_of(const at::Tensor& x) {
  View v;
  v.N = x.size(0), v.C = x.size(1), v.S = 1;
  for (int64_t d = 2; d < x.dim(); ++d) v.S *= x.size(d);
  v.cl = x.dim() >= 4 && !x.is_contiguous() ;
  v.sN = v.C * v.S;
  v.sC = v.cl ? 1 : v.S;
  v.sS = v.cl ? v.C : 1;
  return v;
}

// channel of memory-order element e
__device__ __forceinline__ int64_t chan(int64_t e, const View& v) { return v.cl ? e % v.C : (e / v.S) % v.C; }

// Chan's merge of Welford states, a fixed shared-memory tree over the block
template <typename A>
__device__ void block_merge(A& n, A& m, A& q) {
  __shared__ A sn[kThreads], sm[kThreads], sq[kThreads];
  const int t = threadIdx.x;
  sn[t] = n, sm[t] = m, sq[t] = q;
  __syncthreads();
  for (int h = kThreads / 2; h > 0; h >>= 1) {
    if (t < h) {
      const A nb = sn[t + h];
      if (nb > 0) {
        const A na = sn[t], tot = na + nb, d = sm[t + h] - sm[t];
        sm[t] += d * (nb / tot);
        sq[t] += sq[t + h] + d * d * (na * nb / tot);
        sn[t] = tot;
      }
    }
    __syncthreads();
  }
  n = sn[0], m = sm[0], q = sq[0];
}

template <typename A>
__device__ void block_sum2(A& a, A& b) {
  __shared__ A sa[kThreads], sb[kThreads];
  const int t = threadIdx.x;
  sa[t] = a, sb[t] = b;
  __syncthreads();
  for (int h = kThreads / 2; h > 0; h >>= 1) {
    if (t < h) sa[t] += sa[t + h], sb[t] += sb[t + h];
    __syncthreads();
  }
  a = sa[0], b = sb[0];
}

template <class Tr>
__device__ __forceinline__ void welford(typename Tr::A x, typename Tr::A& n, typename Tr::A& m, typename Tr::A& q) {
  n += 1;
  const typename Tr::A d = x - m;
  m += d / n;
  q += d * (x - m);
}

// ---- BatchNorm ---------------------------------------------------------------------

template <class Tr>
__global__ void bn_stats_kernel(const typename Tr::S* __restrict__ x, View v, typename Tr::A* mean,
                                typename Tr::A* invstd, PVec rm, PVec rv, double momentum, double eps) {
  using A = typename Tr::A;
  const int64_t c = blockIdx.x, total = v.N * v.S;
  A n = 0, m = 0, q = 0;
  for (int64_t i = threadIdx.x; i < total; i += kThreads) {
    const int64_t nn = i / v.S, s = i - nn * v.S;
    welford<Tr>(Tr::load(x[nn * v.sN + c * v.sC + s * v.sS]), n, m, q);
  }
  block_merge(n, m, q);
  if (threadIdx.x == 0) {
    mean[c] = m;
    invstd[c] = static_cast<A>(1.0 / sqrt(static_cast<double>(q) / static_cast<double>(n) + eps));
    if (rm.tag >= 0) {
      pset(rm, c, (1 - momentum) * pget(rm, c, 0) + momentum * static_cast<double>(m));
      pset(rv, c, (1 - momentum) * pget(rv, c, 1) + momentum * static_cast<double>(q) / (static_cast<double>(n) - 1));
    }
  }
}

template <class Tr>
__global__ void bn_eval_stats_kernel(PVec rm, PVec rv, typename Tr::A* mean, typename Tr::A* invstd, int64_t C,
                                     double eps) {
  const int64_t c = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (c >= C) return;
  mean[c] = static_cast<typename Tr::A>(pget(rm, c, 0));
  invstd[c] = static_cast<typename Tr::A>(1.0 / sqrt(pget(rv, c, 1) + eps));
}

template <class Tr>
__global__ void bn_affine_kernel(const typename Tr::S* __restrict__ x, typename Tr::S* __restrict__ y, View v,
                                 const typename Tr::A* mean, const typename Tr::A* invstd, PVec w, PVec b,
                                 int64_t total) {
  using A = typename Tr::A;
  const int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (e >= total) return;
  const int64_t c = chan(e, v);
  const A a = invstd[c] * static_cast<A>(pget(w, c, 1));
  const A sh = static_cast<A>(pget(b, c, 0)) - mean[c] * a;
  y[e] = Tr::store(Tr::load(x[e]) * a + sh);
}

template <class Tr>
__global__ void bn_sums_kernel(const typename Tr::S* __restrict__ dy, const typename Tr::S* __restrict__ x, View v,
                               const typename Tr::A* mean, typename Tr::A* sdy, typename Tr::A* sdyx) {
  using A = typename Tr::A;
  const int64_t c = blockIdx.x, total = v.N * v.S;
  const A m = mean[c];
  A s1 = 0, s2 = 0;
  for (int64_t i = threadIdx.x; i < total; i += kThreads) {
    const int64_t nn = i / v.S, s = i - nn * v.S, off = nn * v.sN + c * v.sC + s * v.sS;
    const A g = Tr::load(dy[off]);
    s1 += g;
    s2 += g * (Tr::load(x[off]) - m);
  }
  block_sum2(s1, s2);
  if (threadIdx.x == 0) sdy[c] = s1, sdyx[c] = s2;
}

template <class Tr>
__global__ void bn_dx_kernel(const typename Tr::S* __restrict__ dy, const typename Tr::S* __restrict__ x,
                             typename Tr::S* __restrict__ dx, View v, const typename Tr::A* mean,
                             const typename Tr::A* invstd, PVec w, const typename Tr::A* sdy,
                             const typename Tr::A* sdyx, bool training, int64_t total) {
  using A = typename Tr::A;
  const int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (e >= total) return;
  const int64_t c = chan(e, v);
  const A is = invstd[c], k1 = is * static_cast<A>(pget(w, c, 1));
  A out = Tr::load(dy[e]) * k1;
  if (training) {
    const A inv_n = A(1) / static_cast<A>(v.N * v.S);
    const A k2 = -k1 * is * is * sdyx[c] * inv_n;
    const A k3 = -k1 * sdy[c] * inv_n - mean[c] * k2;
    out += Tr::load(x[e]) * k2 + k3;
  }
  dx[e] = Tr::store(out);
}

template <typename A>
__global__ void bn_param_grads_kernel(const A* sdy, const A* sdyx, const A* invstd, PVec dw, PVec db, int64_t C) {
  const int64_t c = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (c >= C) return;
  if (dw.tag >= 0) pset(dw, c, static_cast<double>(sdyx[c]) * static_cast<double>(invstd[c]));
  if (db.tag >= 0) pset(db, c, static_cast<double>(sdy[c]));
}

void check_input(const at::Tensor& input, const char* op) {
  TORCH_CHECK(input.dim() >= 2, op, ": input: expected a tensor of at least 2 dimensions [N, C, *], got ",
              input.dim(), "-D input of size ", input.sizes());
}

void check_param(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& input) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == input.size(1), name, ": expected a 1-D tensor of size ",
              input.size(1), " (the input's channels), got one of size ", t->sizes());
  mte::check_same_device(*t, name, input, "input");
}

at::MemoryFormat fmt_of(const at::Tensor& x) {
  if (x.dim() == 4 && x.suggest_memory_format() == at::MemoryFormat::ChannelsLast) return at::MemoryFormat::ChannelsLast;
  if (x.dim() == 5 && x.suggest_memory_format() == at::MemoryFormat::ChannelsLast3d)
    return at::MemoryFormat::ChannelsLast3d;
  return at::MemoryFormat::Contiguous;
}

at::Tensor new_like(const at::Tensor& x) {
  return mte::poisoned(at::empty(x.sizes(), x.options().memory_format(fmt_of(x))));
}

at::Tensor pgrad(const std::optional<at::Tensor>& weight, const at::Tensor& input, int64_t C) {
  const auto& like = (weight.has_value() && weight->defined()) ? *weight : input;
  return mte::poisoned(at::empty({C}, like.options()));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_fwd_cuda(
    const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var, bool training,
    double momentum, double eps) {
  check_input(input, "batch_norm");
  for (const auto& [t, n] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"},
                             std::pair{&running_mean, "running_mean"}, std::pair{&running_var, "running_var"}})
    check_param(*t, n, input);
  const bool has_r = running_mean.has_value() && running_mean->defined() && running_var.has_value() &&
                     running_var->defined();
  TORCH_CHECK(training || has_r, "batch_norm: running_mean and running_var must be given when training is false");
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(fmt_of(input));
  at::Tensor y = new_like(x);
  const int64_t C = x.size(1);
  const auto st = mte::stat_dtype(x.scalar_type());
  at::Tensor mean = mte::new_output({C}, x.options().dtype(st)), invstd = mte::new_output({C}, x.options().dtype(st));
  const View v = view_of(x);
  const int64_t total = x.numel();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  with_traits(x.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    using S = typename Tr::S;
    using A = typename Tr::A;
    if (C == 0) return;
    if (training) {
      if (total == 0) {
        mean.fill_(NAN), invstd.fill_(NAN);
        return;
      }
      bn_stats_kernel<Tr><<<static_cast<unsigned>(C), kThreads, 0, stream>>>(
          static_cast<const S*>(x.data_ptr()), v, mean.data_ptr<A>(), invstd.data_ptr<A>(),
          has_r ? pvec(running_mean) : PVec{}, has_r ? pvec(running_var) : PVec{}, momentum, eps);
    } else {
      bn_eval_stats_kernel<Tr><<<blocks_for(C), kThreads, 0, stream>>>(pvec(running_mean), pvec(running_var),
                                                                       mean.data_ptr<A>(), invstd.data_ptr<A>(), C,
                                                                       eps);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (total == 0) return;
    bn_affine_kernel<Tr><<<blocks_for(total), kThreads, 0, stream>>>(
        static_cast<const S*>(x.data_ptr()), static_cast<S*>(y.data_ptr()), v, mean.data_ptr<A>(),
        invstd.data_ptr<A>(), pvec(weight), pvec(bias), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, mean, invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_bwd_cuda(const at::Tensor& grad_output,
                                                                   const at::Tensor& input,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   const at::Tensor& save_mean,
                                                                   const at::Tensor& save_invstd, bool training,
                                                                   std::array<bool, 3> mask) {
  check_input(input, "batch_norm_bwd");
  TORCH_CHECK(grad_output.sizes() == input.sizes(), "batch_norm_bwd: grad_output: expected size ", input.sizes(),
              ", got ", grad_output.sizes());
  check_param(weight, "weight", input);
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(fmt_of(input)), dy = grad_output.contiguous(fmt_of(input));
  const int64_t C = x.size(1), total = x.numel();
  const View v = view_of(x);
  const auto st = mte::stat_dtype(x.scalar_type());
  at::Tensor sdy = at::empty({C}, x.options().dtype(st)), sdyx = at::empty({C}, x.options().dtype(st));
  at::Tensor dx = mask[0] ? new_like(x) : at::empty({0}, x.options());
  at::Tensor dw = mask[1] ? pgrad(weight, input, C) : at::empty({0}, x.options());
  at::Tensor db = mask[2] ? pgrad(weight, input, C) : at::empty({0}, x.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  with_traits(x.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    using S = typename Tr::S;
    using A = typename Tr::A;
    if (C == 0) return;
    const A* m = save_mean.data_ptr<A>();
    const A* is = save_invstd.data_ptr<A>();
    if (total > 0) {
      bn_sums_kernel<Tr><<<static_cast<unsigned>(C), kThreads, 0, stream>>>(
          static_cast<const S*>(dy.data_ptr()), static_cast<const S*>(x.data_ptr()), v, m, sdy.data_ptr<A>(),
          sdyx.data_ptr<A>());
    } else {
      sdy.zero_(), sdyx.zero_();
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (mask[0] && total > 0) {
      bn_dx_kernel<Tr><<<blocks_for(total), kThreads, 0, stream>>>(
          static_cast<const S*>(dy.data_ptr()), static_cast<const S*>(x.data_ptr()), static_cast<S*>(dx.data_ptr()),
          v, m, is, pvec(weight), sdy.data_ptr<A>(), sdyx.data_ptr<A>(), training, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (mask[1] || mask[2]) {
      bn_param_grads_kernel<A><<<blocks_for(C), kThreads, 0, stream>>>(
          sdy.data_ptr<A>(), sdyx.data_ptr<A>(), is, mask[1] ? pvec(dw) : PVec{}, mask[2] ? pvec(db) : PVec{}, C);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {dx, dw, db};
}

// ---- GroupNorm -----------------------------------------------------------------------

template <class Tr>
__global__ void gn_stats_kernel(const typename Tr::S* __restrict__ x, int64_t span, typename Tr::A* mean,
                                typename Tr::A* rstd, double eps) {
  using A = typename Tr::A;
  const int64_t q = blockIdx.x;
  const typename Tr::S* p = x + q * span;
  A n = 0, m = 0, s2 = 0;
  for (int64_t i = threadIdx.x; i < span; i += kThreads) welford<Tr>(Tr::load(p[i]), n, m, s2);
  block_merge(n, m, s2);
  if (threadIdx.x == 0) {
    mean[q] = m;
    rstd[q] = static_cast<A>(1.0 / sqrt(static_cast<double>(s2) / static_cast<double>(n) + eps));
  }
}

template <class Tr>
__global__ void gn_affine_kernel(const typename Tr::S* __restrict__ x, typename Tr::S* __restrict__ y, int64_t C,
                                 int64_t S, int64_t Cg, const typename Tr::A* mean, const typename Tr::A* rstd,
                                 PVec w, PVec b, int64_t total) {
  using A = typename Tr::A;
  const int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (e >= total) return;
  const int64_t nc = e / S, c = nc % C, q = (nc / C) * (C / Cg) + c / Cg;
  const A a = rstd[q] * static_cast<A>(pget(w, c, 1));
  y[e] = Tr::store((Tr::load(x[e]) - mean[q]) * a + static_cast<A>(pget(b, c, 0)));
}

template <class Tr>
__global__ void gn_sums_kernel(const typename Tr::S* __restrict__ dy, const typename Tr::S* __restrict__ x,
                               int64_t C, int64_t S, int64_t Cg, const typename Tr::A* mean, typename Tr::A* ds,
                               typename Tr::A* dbs) {
  using A = typename Tr::A;
  const int64_t p = blockIdx.x, q = (p / C) * (C / Cg) + (p % C) / Cg;
  const A m = mean[q];
  A s1 = 0, s2 = 0;
  for (int64_t i = threadIdx.x; i < S; i += kThreads) {
    const A g = Tr::load(dy[p * S + i]);
    s1 += g * (Tr::load(x[p * S + i]) - m);
    s2 += g;
  }
  block_sum2(s1, s2);
  if (threadIdx.x == 0) ds[p] = s1, dbs[p] = s2;
}

// per (n, g): k2, k3 of dx = k1*dy + k2*x + k3 (k1 = rstd*w[c])
template <typename A>
__global__ void gn_coef_kernel(const A* ds, const A* dbs, const A* mean, const A* rstd, PVec w, int64_t NG, int64_t C,
                               int64_t Cg, int64_t S, A* k2, A* k3) {
  const int64_t q = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (q >= NG) return;
  const int64_t G = C / Cg, n = q / G, g = q % G;
  A s_g = 0, s_gx = 0;
  for (int64_t cc = 0; cc < Cg; ++cc) {
    const int64_t c = g * Cg + cc;
    const A wc = static_cast<A>(pget(w, c, 1));
    s_g += dbs[n * C + c] * wc;
    s_gx += ds[n * C + c] * wc;
  }
  const A r = rstd[q], inv = A(1) / static_cast<A>(Cg * S);
  const A kk = -r * r * r * s_gx * inv;
  k2[q] = kk;
  k3[q] = -r * s_g * inv - mean[q] * kk;
}

template <class Tr>
__global__ void gn_dx_kernel(const typename Tr::S* __restrict__ dy, const typename Tr::S* __restrict__ x,
                             typename Tr::S* __restrict__ dx, int64_t C, int64_t S, int64_t Cg,
                             const typename Tr::A* rstd, PVec w, const typename Tr::A* k2, const typename Tr::A* k3,
                             int64_t total) {
  using A = typename Tr::A;
  const int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (e >= total) return;
  const int64_t nc = e / S, c = nc % C, q = (nc / C) * (C / Cg) + c / Cg;
  const A k1 = rstd[q] * static_cast<A>(pget(w, c, 1));
  dx[e] = Tr::store(Tr::load(dy[e]) * k1 + (Tr::load(x[e]) * k2[q] + k3[q]));
}

template <typename A>
__global__ void gn_param_grads_kernel(const A* ds, const A* dbs, const A* rstd, PVec dw, PVec db, int64_t N,
                                      int64_t C, int64_t Cg) {
  const int64_t c = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (c >= C) return;
  const int64_t G = C / Cg, g = c / Cg;
  double sw = 0, sb = 0;
  for (int64_t n = 0; n < N; ++n) {
    sw += static_cast<double>(ds[n * C + c]) * static_cast<double>(rstd[n * G + g]);
    sb += static_cast<double>(dbs[n * C + c]);
  }
  if (dw.tag >= 0) pset(dw, c, sw);
  if (db.tag >= 0) pset(db, c, sb);
}

void check_groups(const at::Tensor& input, int64_t G) {
  TORCH_CHECK(G > 0, "group_norm: num_groups: expected a positive number, got ", G);
  TORCH_CHECK(input.size(1) % G == 0, "Expected number of channels in input to be divisible by num_groups, but got "
              "input of shape ", input.sizes(), " and num_groups=", G);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_fwd_cuda(const at::Tensor& input,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   const std::optional<at::Tensor>& bias,
                                                                   int64_t G, double eps) {
  check_input(input, "group_norm");
  check_groups(input, G);
  check_param(weight, "weight", input);
  check_param(bias, "bias", input);
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  at::Tensor y = mte::poisoned(at::empty(x.sizes(), x.options()));
  const int64_t N = x.size(0), C = x.size(1), S = C > 0 ? x.numel() / std::max<int64_t>(N * C, 1) : 0;
  const int64_t Cg = C / G, total = x.numel();
  const auto st = mte::stat_dtype(x.scalar_type());
  at::Tensor mean = mte::new_output({N, G}, x.options().dtype(st)), rstd = mte::new_output({N, G}, x.options().dtype(st));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  with_traits(x.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    using S_ = typename Tr::S;
    using A = typename Tr::A;
    if (N * G == 0) return;
    gn_stats_kernel<Tr><<<static_cast<unsigned>(N * G), kThreads, 0, stream>>>(
        static_cast<const S_*>(x.data_ptr()), Cg * S, mean.data_ptr<A>(), rstd.data_ptr<A>(), eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (total == 0) return;
    gn_affine_kernel<Tr><<<blocks_for(total), kThreads, 0, stream>>>(
        static_cast<const S_*>(x.data_ptr()), static_cast<S_*>(y.data_ptr()), C, S, Cg, mean.data_ptr<A>(),
        rstd.data_ptr<A>(), pvec(weight), pvec(bias), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (fmt_of(input) != at::MemoryFormat::Contiguous) y = y.contiguous(fmt_of(input));
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_bwd_cuda(const at::Tensor& grad_output,
                                                                   const at::Tensor& input,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   const at::Tensor& mean, const at::Tensor& rstd,
                                                                   int64_t G, std::array<bool, 3> mask) {
  check_input(input, "group_norm_bwd");
  check_groups(input, G);
  TORCH_CHECK(grad_output.sizes() == input.sizes(), "group_norm_bwd: grad_output: expected size ", input.sizes(),
              ", got ", grad_output.sizes());
  check_param(weight, "weight", input);
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), dy = grad_output.contiguous();
  const int64_t N = x.size(0), C = x.size(1), S = C > 0 ? x.numel() / std::max<int64_t>(N * C, 1) : 0;
  const int64_t Cg = C / G, total = x.numel();
  const auto st = mte::stat_dtype(x.scalar_type());
  at::Tensor ds = at::empty({N, C}, x.options().dtype(st)), dbs = at::empty({N, C}, x.options().dtype(st));
  at::Tensor k2 = at::empty({N, G}, x.options().dtype(st)), k3 = at::empty({N, G}, x.options().dtype(st));
  at::Tensor dx = mask[0] ? mte::poisoned(at::empty(x.sizes(), x.options())) : at::empty({0}, x.options());
  at::Tensor dw = mask[1] ? pgrad(weight, input, C) : at::empty({0}, x.options());
  at::Tensor db = mask[2] ? pgrad(weight, input, C) : at::empty({0}, x.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  with_traits(x.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    using S_ = typename Tr::S;
    using A = typename Tr::A;
    if (N * C == 0) {
      if (mask[1]) dw.zero_();
      if (mask[2]) db.zero_();
      return;
    }
    const A* m = mean.data_ptr<A>();
    const A* r = rstd.data_ptr<A>();
    gn_sums_kernel<Tr><<<static_cast<unsigned>(N * C), kThreads, 0, stream>>>(
        static_cast<const S_*>(dy.data_ptr()), static_cast<const S_*>(x.data_ptr()), C, S, Cg, m, ds.data_ptr<A>(),
        dbs.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (mask[0] && total > 0) {
      gn_coef_kernel<A><<<blocks_for(N * G), kThreads, 0, stream>>>(ds.data_ptr<A>(), dbs.data_ptr<A>(), m, r,
                                                                    pvec(weight), N * G, C, Cg, S, k2.data_ptr<A>(),
                                                                    k3.data_ptr<A>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      gn_dx_kernel<Tr><<<blocks_for(total), kThreads, 0, stream>>>(
          static_cast<const S_*>(dy.data_ptr()), static_cast<const S_*>(x.data_ptr()),
          static_cast<S_*>(dx.data_ptr()), C, S, Cg, r, pvec(weight), k2.data_ptr<A>(), k3.data_ptr<A>(), total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (mask[1] || mask[2]) {
      gn_param_grads_kernel<A><<<blocks_for(C), kThreads, 0, stream>>>(
          ds.data_ptr<A>(), dbs.data_ptr<A>(), r, mask[1] ? pvec(dw) : PVec{}, mask[2] ? pvec(db) : PVec{}, N, C, Cg);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  if (mask[0] && fmt_of(input) != at::MemoryFormat::Contiguous) dx = dx.contiguous(fmt_of(input));
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(minitorch_ext, CUDA, m) {
  m.impl("batch_norm_fwd", &batch_norm_fwd_cuda);
  m.impl("batch_norm_bwd", &batch_norm_bwd_cuda);
  m.impl("group_norm_fwd", &group_norm_fwd_cuda);
  m.impl("group_norm_bwd", &group_norm_bwd_cuda);
}
