// Pointwise losses on CUDA: the generic pwloss_fwd / pwloss_bwd ops (schemas in csrc/ops.cpp,
// "pwloss family"; the CPU twin is csrc/loss/pwloss_cpu.cpp, whose header gives the math).
//
// One kernel per pass, the loss picked by a runtime switch on `kind` (uniform across the grid,
// so the branch costs nothing and the template fan-out is only the four storage types:
// float32, float64, bfloat16, float16; float32 math, float64 for float64):
//   fwd_none:    a grid-stride loop writing the elementwise loss;
//   fwd_partial: block b owns the fixed chunk [b*kChunk, (b+1)*kChunk) (kChunk = 8192
//                elements, independent of the launch), its threads sum with a stride of
//                blockDim, then a shared-memory tree in fixed order gives partial[b];
//   sum_partials: one block adds the partials (each thread a fixed strided subset, then the
//                same tree) and scales once (1/numel, 1/size(0), 1): no atomics, so the
//                reduced loss has the same bits on every run;
//   bwd:         a grid-stride loop computing grad_input and/or grad_target from one read of
//                input and target, times grad_output (read on the device: a reduced loss's
//                0-d grad_output needs no host sync).
// Operands are read as on the CPU: contiguous, a last-dim row vector (index % C) or a scalar
// (all strides 0); other layouts are made contiguous once on the host.
// bce: an input outside [0, 1] (or NaN) trips a device-side assert, as torch's CUDA kernel.
// Memory traffic: forward reads input and target once (+ weights) and writes the loss
// ('none') or one partial per 8192 elements; backward reads them once more and writes each
// asked-for gradient once. The trick: no temporaries and no second pass over the loss, the
// reduction in registers and shared memory.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string_view>
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
  if (!mte::cuda_traits::for_float_traits(t, f)) TORCH_CHECK_NOT_IMPLEMENTED(false, "pwloss (CUDA): input: not implemented for '", at::toString(t), "'");
}

enum Kind : int { kMse = 0, kL1, kSmoothL1, kHuber, kBce, kBceLogits, kKlDiv };

int parse_kind(std::string_view k) {
  if (k == "mse") return kMse;
  if (k == "l1") return kL1;
  if (k == "smooth_l1") return kSmoothL1;
  if (k == "huber") return kHuber;
  if (k == "bce") return kBce;
  if (k == "bce_logits") return kBceLogits;
  if (k == "kl_div") return kKlDiv;
  TORCH_CHECK_VALUE(false, "pwloss: kind must be one of mse, l1, smooth_l1, huber, bce, bce_logits, kl_div; got '",
                    k, "'");
}

constexpr int kThreads = 256;
constexpr int64_t kChunk = 8192;

template <class S>
struct Opnd {
  const S* p = nullptr;
  int mode = 0;  // 0 absent, 1 contiguous, 2 last-dim row vector, 3 scalar
};

template <class Tr>
struct Pack {
  Opnd<typename Tr::S> x, t, w, pw, go;
  int64_t n, C;
  int kind;
  typename Tr::A param, scale;
  bool log_target;
};

template <class Tr>
__device__ __forceinline__ typename Tr::A ldo(const Opnd<typename Tr::S>& o, int64_t i, int64_t C) {
  switch (o.mode) {
    case 1: return Tr::load(o.p[i]);
    case 2: return Tr::load(o.p[i % C]);
    case 3: return Tr::load(o.p[0]);
    default: return typename Tr::A(1);
  }
}

template <class A>
__device__ __forceinline__ A log_sigmoid(A x) {
  return (x < A(0) ? x : A(0)) - log1p(exp(-fabs(x)));
}

template <class A>
__device__ __forceinline__ A loss_of(int kind, A x, A t, A w, A pw, A p, bool logt, bool hpw) {
  A l;
  switch (kind) {
    case kMse: { const A d = x - t; l = d * d; break; }
    case kL1: l = fabs(x - t); break;
    case kSmoothL1: { const A z = fabs(x - t); l = z < p ? A(0.5) * z * z / p : z - A(0.5) * p; break; }
    case kHuber: { const A z = fabs(x - t); l = z < p ? A(0.5) * z * z : p * (z - A(0.5) * p); break; }
    case kBce: {
      CUDA_KERNEL_ASSERT(x >= A(0) && x <= A(1) && "all elements of input should be between 0 and 1");
      const A lx = fmax(log(x), A(-100)), l1x = fmax(log1p(-x), A(-100));
      l = ((t - A(1)) * l1x - t * lx) * w;
      break;
    }
    case kBceLogits: {
      A ls = log_sigmoid(x);
      if (hpw) ls *= (pw - A(1)) * t + A(1);
      l = ((A(1) - t) * x - ls) * w;
      break;
    }
    default:
      l = logt ? exp(t) * (t - x) : (t == A(0) ? A(0) : t * log(t)) - t * x;
  }
  return l;
}

template <class A>
__device__ __forceinline__ void grads_of(int kind, A x, A t, A w, A pw, A p, bool logt, bool hpw, A& gx, A& gt) {
  switch (kind) {
    case kMse: gx = A(2) * (x - t); gt = -gx; break;
    case kL1: { const A d = x - t; gx = A(d > A(0)) - A(d < A(0)); gt = -gx; break; }
    case kSmoothL1: { const A d = x - t; gx = d <= -p ? A(-1) : (d >= p ? A(1) : d / p); gt = -gx; break; }
    case kHuber: { const A d = x - t; gx = d <= -p ? -p : (d >= p ? p : d); gt = -gx; break; }
    case kBce: {
      const A den = (A(1) - x) * x;
      gx = (x - t) / (den > A(1e-12) ? den : A(1e-12)) * w;
      gt = (log1p(-x) - log(x)) * w;
      break;
    }
    case kBceLogits: {
      const A sig = A(1) / (A(1) + exp(-x));
      if (hpw) {
        const A pt = pw * t;
        gx = ((pt + A(1) - t) * sig - pt) * w;
        gt = (log_sigmoid(-x) - log_sigmoid(x) * pw) * w;
      } else {
        gx = (sig - t) * w;
        gt = -x * w;
      }
      break;
    }
    default:
      if (logt) {
        const A e = exp(t);
        gx = -e;
        gt = e * (t - x + A(1));
      } else {
        gx = -t;
        gt = (t == A(0) ? A(0) : log(t)) + t / t - x;
      }
  }
}

template <class Tr>
__device__ __forceinline__ typename Tr::A elem_loss(const Pack<Tr>& P, int64_t i) {
  using A = typename Tr::A;
  const A x = ldo<Tr>(P.x, i, P.C), t = ldo<Tr>(P.t, i, P.C), w = ldo<Tr>(P.w, i, P.C),
          pw = ldo<Tr>(P.pw, i, P.C);
  return loss_of<A>(P.kind, x, t, w, pw, P.param, P.log_target, P.pw.mode != 0);
}

template <class Tr>
__global__ void fwd_none_kernel(Pack<Tr> P, typename Tr::S* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < P.n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = Tr::store(elem_loss(P, i));
}

template <class A>
__device__ __forceinline__ A block_tree_sum(A v, A* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  return sh[0];
}

template <class Tr>
__global__ void fwd_partial_kernel(Pack<Tr> P, typename Tr::A* __restrict__ partial) {
  using A = typename Tr::A;
  __shared__ A sh[kThreads];
  const int64_t b = blockIdx.x * kChunk, e = b + kChunk < P.n ? b + kChunk : P.n;
  A acc = 0;
  for (int64_t i = b + threadIdx.x; i < e; i += kThreads) acc += elem_loss(P, i);
  const A s = block_tree_sum(acc, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

template <class Tr>
__global__ void sum_partials_kernel(const typename Tr::A* __restrict__ partial, int64_t m, typename Tr::A scale,
                                    typename Tr::S* __restrict__ out) {
  using A = typename Tr::A;
  __shared__ A sh[kThreads];
  A acc = 0;
  for (int64_t i = threadIdx.x; i < m; i += kThreads) acc += partial[i];
  const A s = block_tree_sum(acc, sh);
  if (threadIdx.x == 0) out[0] = Tr::store(s * scale);
}

template <class Tr>
__global__ void bwd_kernel(Pack<Tr> P, bool reduced, typename Tr::S* __restrict__ gx, typename Tr::S* __restrict__ gt) {
  using A = typename Tr::A;
  const A g0 = reduced ? Tr::load(P.go.p[0]) * P.scale : A(0);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < P.n; i += int64_t(gridDim.x) * blockDim.x) {
    const A x = ldo<Tr>(P.x, i, P.C), t = ldo<Tr>(P.t, i, P.C), w = ldo<Tr>(P.w, i, P.C), pw = ldo<Tr>(P.pw, i, P.C);
    A dx, dt;
    grads_of<A>(P.kind, x, t, w, pw, P.param, P.log_target, P.pw.mode != 0, dx, dt);
    const A g = reduced ? g0 : ldo<Tr>(P.go, i, P.C);
    if (gx) gx[i] = Tr::store(dx * g);
    if (gt) gt[i] = Tr::store(dt * g);
  }
}

// ---- host side ----------------------------------------------------------------------

template <class S>
Opnd<S> classify(const std::optional<at::Tensor>& t, at::Tensor& hold, int64_t& row) {
  Opnd<S> o;
  if (!t.has_value() || !t->defined()) return o;
  const at::Tensor& x = *t;
  const int64_t nd = x.dim();
  bool scalar = true, rowv = nd >= 1 && (x.stride(nd - 1) == 1 || x.size(nd - 1) == 1);
  for (int64_t d = 0; d < nd; ++d) {
    if (x.size(d) != 1 && x.stride(d) != 0) scalar = false;
    if (d < nd - 1 && x.size(d) != 1 && x.stride(d) != 0) rowv = false;
  }
  const at::Tensor* src = &x;
  if (x.is_contiguous()) {
    o.mode = 1;
  } else if (scalar) {
    o.mode = 3;
  } else if (rowv) {
    o.mode = 2;
    row = x.size(nd - 1);
  } else {
    hold = x.contiguous();
    src = &hold;
    o.mode = 1;
  }
  o.p = reinterpret_cast<const S*>(src->const_data_ptr());
  return o;
}

void check_args(const char* fn, const at::Tensor& input, const at::Tensor& target,
                const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& pos_weight, int kind,
                double param, int64_t reduction) {
  TORCH_CHECK(input.is_cuda(), fn, ": input: expected a CUDA tensor");
  TORCH_CHECK(target.scalar_type() == input.scalar_type(), fn, ": target: expected dtype ", input.scalar_type(),
              " (the dtype of input), got ", target.scalar_type());
  TORCH_CHECK(target.sizes() == input.sizes(), fn, ": target: expected shape ", input.sizes(),
              " (the shape of input), got ", target.sizes());
  TORCH_CHECK(target.device() == input.device(), fn, ": target: expected a tensor on ", input.device());
  for (const auto& [t, name] : {std::pair{&weight, "weight"}, std::pair{&pos_weight, "pos_weight"}}) {
    if (!t->has_value() || !(*t)->defined()) continue;
    TORCH_CHECK((*t)->scalar_type() == input.scalar_type(), fn, ": ", name, ": expected dtype ", input.scalar_type(),
                ", got ", (*t)->scalar_type());
    TORCH_CHECK((*t)->sizes() == input.sizes(), fn, ": ", name, ": expected shape ", input.sizes(),
                " (the shape of input, expanded), got ", (*t)->sizes());
    TORCH_CHECK((*t)->device() == input.device(), fn, ": ", name, ": expected a tensor on ", input.device());
  }
  TORCH_CHECK(reduction >= 0 && reduction <= 3, fn, ": reduction: expected 0, 1, 2 or 3, got ", reduction);
  TORCH_CHECK(reduction != 3 || kind == kKlDiv, fn, ": reduction 3 (batchmean) is for kl_div only");
  TORCH_CHECK((kind != kSmoothL1 && kind != kHuber) || param > 0, fn, ": beta/delta must be > 0, got ", param);
}

double reduce_scale(const at::Tensor& input, int64_t reduction) {
  if (reduction == 1) return 1.0 / static_cast<double>(input.numel());
  if (reduction == 3 && input.dim() > 0) return 1.0 / static_cast<double>(input.size(0));
  return 1.0;
}

int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535 * 8)));
}

at::Tensor pwloss_fwd_cuda(const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& pos_weight, c10::string_view kind_s, double param,
                           int64_t reduction, bool log_target) {
  const int kind = parse_kind(std::string_view(kind_s.data(), kind_s.size()));
  check_args("pwloss_fwd", input, target, weight, pos_weight, kind, param, reduction);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = input.numel();
  at::Tensor out = reduction == 0 ? mte::new_output(input.sizes(), input.options())
                                  : mte::new_output({}, input.options());
  with_traits(input.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    using S = typename Tr::S;
    using A = typename Tr::A;
    at::Tensor h[4];
    Pack<Tr> P;
    P.C = 1;
    P.x = classify<S>(input, h[0], P.C);
    P.t = classify<S>(target, h[1], P.C);
    P.w = classify<S>(weight, h[2], P.C);
    P.pw = classify<S>(pos_weight, h[3], P.C);
    P.n = n;
    P.kind = kind;
    P.param = static_cast<A>(param);
    P.scale = static_cast<A>(reduce_scale(input, reduction));
    P.log_target = log_target;
    S* po = reinterpret_cast<S*>(out.data_ptr());
    if (reduction == 0) {
      if (n == 0) return;
      fwd_none_kernel<Tr><<<grid_for(n), kThreads, 0, stream>>>(P, po);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    const int64_t m = std::max<int64_t>(1, (n + kChunk - 1) / kChunk);
    at::Tensor partial = at::zeros({m}, input.options().dtype(std::is_same_v<A, double> ? at::kDouble : at::kFloat));
    A* pp = partial.data_ptr<A>();
    if (n > 0) {
      fwd_partial_kernel<Tr><<<static_cast<unsigned>(m), kThreads, 0, stream>>>(P, pp);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    sum_partials_kernel<Tr><<<1, kThreads, 0, stream>>>(pp, m, P.scale, po);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> pwloss_bwd_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                                   const at::Tensor& target, const std::optional<at::Tensor>& weight,
                                                   const std::optional<at::Tensor>& pos_weight,
                                                   c10::string_view kind_s, double param, int64_t reduction,
                                                   bool log_target, bool need_input, bool need_target) {
  const int kind = parse_kind(std::string_view(kind_s.data(), kind_s.size()));
  check_args("pwloss_bwd", input, target, weight, pos_weight, kind, param, reduction);
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), "pwloss_bwd: grad_output: expected dtype ",
              input.scalar_type(), ", got ", grad_output.scalar_type());
  if (reduction == 0) {
    TORCH_CHECK(grad_output.sizes() == input.sizes(), "pwloss_bwd: grad_output: expected shape ", input.sizes(),
                " (reduction 'none'), got ", grad_output.sizes());
  } else {
    TORCH_CHECK(grad_output.numel() == 1, "pwloss_bwd: grad_output: expected one element (a reduced loss), got shape ",
                grad_output.sizes());
  }
  const c10::cuda::CUDAGuard guard(input.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = input.numel();
  at::Tensor gx = need_input ? mte::new_output(input.sizes(), input.options()) : at::empty({0}, input.options());
  at::Tensor gt = need_target ? mte::new_output(input.sizes(), input.options()) : at::empty({0}, input.options());
  if (n == 0 || !(need_input || need_target)) return {gx, gt};
  with_traits(input.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    using S = typename Tr::S;
    using A = typename Tr::A;
    at::Tensor h[5];
    Pack<Tr> P;
    P.C = 1;
    P.x = classify<S>(input, h[0], P.C);
    P.t = classify<S>(target, h[1], P.C);
    P.w = classify<S>(weight, h[2], P.C);
    P.pw = classify<S>(pos_weight, h[3], P.C);
    if (reduction == 0) {
      P.go = classify<S>(grad_output, h[4], P.C);
    } else {
      h[4] = grad_output.reshape({1}).contiguous();
      P.go = {reinterpret_cast<const S*>(h[4].const_data_ptr()), 3};
    }
    P.n = n;
    P.kind = kind;
    P.param = static_cast<A>(param);
    P.scale = static_cast<A>(reduce_scale(input, reduction));
    P.log_target = log_target;
    bwd_kernel<Tr><<<grid_for(n), kThreads, 0, stream>>>(P, reduction != 0,
                                                         need_input ? reinterpret_cast<S*>(gx.data_ptr()) : nullptr,
                                                         need_target ? reinterpret_cast<S*>(gt.data_ptr()) : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gx, gt};
}

}  // namespace

TORCH_LIBRARY_IMPL(minitorch_ext, CUDA, m) {
  m.impl("pwloss_fwd", &pwloss_fwd_cuda);
  m.impl("pwloss_bwd", &pwloss_bwd_cuda);
}
