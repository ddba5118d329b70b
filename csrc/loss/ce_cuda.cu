// Cross-entropy / NLL loss on CUDA: ce_fwd (fused log-softmax + loss + input gradient per
// row) and ce_bwd (the saved gradient scaled by grad_output, in place). Schemas and
// semantics in csrc/ops.cpp; the math is that of csrc/loss/ce_cpu.cpp (torch's
// definitions of weight, ignore_index, label_smoothing and the reductions).
//
// Algorithm. One block (256 threads) per row (n, d) of the [N, C, D] input, classes at
// stride sC. Pass 1: each thread keeps an online logsumexp (running max m, s = sum
// exp(x - m), rescaled when m grows) over its strided classes, plus the weighted sums
// of (m - x) that label smoothing / probability targets need (non-negative terms, rebased
// when the max grows: no cancellation in the loss); the block combines the
// per-thread states with warp shuffles, then across warps through shared memory, in a
// fixed order (deterministic). Pass 2 (when the input requires grad) re-reads the row
// (from L2 for rows up to a few MB) and writes the finished gradient
//   class t: (p_j ((1-eps) w_t + eps/C W) - eps/C w_j - [j=t] (1-eps) w_t) * scale
//   probs:   (p_j sum_c w_c q_c - w_j q_j) * scale;   nll: -[j=t] w_t * scale
// scale = 1/denominator for 'mean'. A prepass block over the [N, D] targets computes
// the mean's denominator (summed target weights of the non-ignored rows) in double and
// the first out-of-range target, reported on the host as torch CPU's IndexError (one
// small device-to-host copy). Per-row losses go to a float/double buffer that one block
// sums in a fixed order (no atomics: bitwise repeatable).
// Memory traffic: the input read twice (the second time mostly from L2), the gradient
//   written once; ce_bwd reads and writes it once (skipped for a host-known 1).
//   Native torch writes log_softmax, then three input-sized tensors in backward.
// The trick: the softmax never reaches memory; the gradient is produced while the
//   row's statistics are in registers (Liger-Kernel's fused cross-entropy).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

namespace mte {
std::atomic<bool>& poison_flag();  // bindings.cpp
}

namespace {

struct Bf16 {
  using S = __nv_bfloat16;
  using A = float;
  static __device__ __forceinline__ A load(S v) { return __bfloat162float(v); }
  static __device__ __forceinline__ S store(A v) { return __float2bfloat16_rn(v); }
};
struct Fp16 {
  using S = __half;
  using A = float;
  static __device__ __forceinline__ A load(S v) { return __half2float(v); }
  static __device__ __forceinline__ S store(A v) { return __float2half_rn(v); }
};
struct F32 {
  using S = float;
  using A = float;
  static __device__ __forceinline__ A load(S v) { return v; }
  static __device__ __forceinline__ S store(A v) { return v; }
};
struct F64 {
  using S = double;
  using A = double;
  static __device__ __forceinline__ A load(S v) { return v; }
  static __device__ __forceinline__ S store(A v) { return v; }
};

template <class F>
void with_traits(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kBFloat16: f(Bf16{}); break;
    case at::kHalf: f(Fp16{}); break;
    case at::kFloat: f(F32{}); break;
    case at::kDouble: f(F64{}); break;
    default:
      TORCH_CHECK_NOT_IMPLEMENTED(false, "ce_fwd: input: not implemented for '", c10::toString(t),
                                  "' (expected float32, float64, bfloat16 or float16)");
  }
}

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float fexp(float x) { return __expf(x); }
__device__ __forceinline__ double fexp(double x) { return exp(x); }
__device__ __forceinline__ float flog(float x) { return __logf(x); }
__device__ __forceinline__ double flog(double x) { return log(x); }

// A row state: running max m, s = sum exp(x - m), q = sum of the loss weights (w q, or w),
// d = sum w q (m - x) (or sum w (m - x)): all terms >= 0, rebased when m grows.
template <class A>
struct State {
  A m, s, q, d;
};

template <class A>
__device__ __forceinline__ void rebase(State<A>& a, A mm) {
  if (a.m == mm) return;
  a.s = a.m == -INFINITY ? A(0) : a.s * fexp(a.m - mm);
  if (a.q != A(0)) a.d += a.q * (mm - a.m);
  a.m = mm;
}

template <class A>
__device__ __forceinline__ void combine(State<A>& a, State<A> b) {
  const A mm = a.m > b.m ? a.m : b.m;
  if (mm == -INFINITY) {  // both hold no finite logit yet
    a.q += b.q;
    return;
  }
  rebase(a, mm);
  rebase(b, mm);
  a.s += b.s;
  a.q += b.q;
  a.d += b.d;
}

// block-wide reduction of the row state; every thread gets the result (fixed order)
template <class A>
__device__ void block_reduce(State<A>& st) {
  __shared__ A sh[4][kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    State<A> b{__shfl_down_sync(0xffffffffu, st.m, o), __shfl_down_sync(0xffffffffu, st.s, o),
               __shfl_down_sync(0xffffffffu, st.q, o), __shfl_down_sync(0xffffffffu, st.d, o)};
    combine(st, b);
  }
  if (lane == 0) {
    sh[0][warp] = st.m; sh[1][warp] = st.s; sh[2][warp] = st.q; sh[3][warp] = st.d;
  }
  __syncthreads();
  st = State<A>{sh[0][0], sh[1][0], sh[2][0], sh[3][0]};
  for (int w = 1; w < kWarps; ++w) combine(st, State<A>{sh[0][w], sh[1][w], sh[2][w], sh[3][w]});
}

struct Args {
  int64_t C, D, sN, sC, sD, ignore_index;
  double eps;
  bool prob, log_input, grad, mean, has_w, none;
};

template <class Tr>
__global__ void __launch_bounds__(kThreads) ce_row_kernel(const typename Tr::S* __restrict__ x,
                                                          const int64_t* __restrict__ tg,
                                                          const typename Tr::S* __restrict__ pt,
                                                          const typename Tr::S* __restrict__ wp,
                                                          const double* __restrict__ den, Args P,
                                                          typename Tr::A* __restrict__ rows,
                                                          typename Tr::S* __restrict__ loss_none,
                                                          typename Tr::S* __restrict__ g) {
  using A = typename Tr::A;
  const int64_t r = blockIdx.x;
  const int64_t n = r / P.D, d = r % P.D, C = P.C, D = P.D;
  const typename Tr::S* xr = x + n * P.sN + d * P.sD;
  const int64_t ob = n * C * D + d;
  const A eps = static_cast<A>(P.eps), epsC = eps / static_cast<A>(C);
  const A scale = P.mean ? static_cast<A>(1.0 / den[0]) : A(1);
  int64_t t = 0;
  bool ign = false;
  if (!P.prob) {
    t = tg[r];
    ign = t == P.ignore_index;
    if (ign) t = 0;
  }
  const A wt = P.has_w ? Tr::load(wp[t]) : A(1);
  A loss;
  if (P.log_input) {
    loss = ign ? A(0) : -wt * Tr::load(xr[t * P.sC]);
    if (P.grad)
      for (int64_t c = threadIdx.x; c < C; c += kThreads)
        g[ob + c * D] = Tr::store(c == t && !ign ? -wt * scale : A(0));
  } else {
    State<A> st{-INFINITY, A(0), A(0), A(0)};
    for (int64_t c = threadIdx.x; c < C; c += kThreads) {
      const A v = Tr::load(xr[c * P.sC]);
      if (v > st.m) {
        rebase(st, v);
      }
      if (st.m != -INFINITY) st.s += fexp(v - st.m);  // (-inf logits before any finite one add nothing)
      const A w = P.has_w ? Tr::load(wp[c]) : A(1);
      const A q = P.prob ? (Tr::load(pt[ob + c * D]) * (A(1) - eps) + epsC) * w : w;
      st.q += q;
      if (st.m != -INFINITY) st.d += q * (st.m - v);
    }
    block_reduce(st);
    const A ls = flog(st.s), lse = st.m + ls;
    A a;
    if (P.prob) {
      loss = st.q * ls + st.d;
      a = st.q * scale;
    } else {
      const A W = st.q;
      const A nll = wt * (ls + (st.m - Tr::load(xr[t * P.sC])));
      loss = ign ? A(0) : (A(1) - eps) * nll + epsC * (W * ls + st.d);
      a = ((A(1) - eps) * wt + epsC * W) * scale;
    }
    if (P.grad) {
      for (int64_t c = threadIdx.x; c < C; c += kThreads) {
        const A v = Tr::load(xr[c * P.sC]);
        const A w = P.has_w ? Tr::load(wp[c]) : A(1);
        const A e = fexp(v - lse);
        A gv;
        if (P.prob) {
          gv = e * a - (Tr::load(pt[ob + c * D]) * (A(1) - eps) + epsC) * w * scale;
        } else {
          gv = e * a - epsC * w * scale;
          if (c == t) gv -= (A(1) - eps) * wt * scale;
          if (ign) gv = 0;
        }
        g[ob + c * D] = Tr::store(gv);
      }
    }
  }
  if (threadIdx.x == 0) {
    if (P.none) loss_none[r] = Tr::store(loss);
    else rows[r] = loss;
  }
}

// the mean's denominator and the first out-of-range target (one block, fixed order)
template <class Tr>
__global__ void __launch_bounds__(kThreads) ce_prepass_kernel(const int64_t* __restrict__ tg,
                                                              const typename Tr::S* __restrict__ wp, int64_t R,
                                                              int64_t C, int64_t ignore_index, bool has_w,
                                                              double* __restrict__ den, int64_t* __restrict__ bad) {
  __shared__ double sh[kThreads];
  __shared__ int64_t sb[kThreads];
  double acc = 0;
  int64_t first = R;  // the first bad row index this thread saw
  for (int64_t i = threadIdx.x; i < R; i += kThreads) {
    const int64_t t = tg[i];
    if (t == ignore_index) continue;
    if (t < 0 || t >= C) {
      if (i < first) first = i;
      continue;
    }
    acc += has_w ? static_cast<double>(Tr::load(wp[t])) : 1.0;
  }
  sh[threadIdx.x] = acc;
  sb[threadIdx.x] = first;
  __syncthreads();
  for (int o = kThreads / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) {
      sh[threadIdx.x] += sh[threadIdx.x + o];
      sb[threadIdx.x] = sb[threadIdx.x] < sb[threadIdx.x + o] ? sb[threadIdx.x] : sb[threadIdx.x + o];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    den[0] = sh[0];
    bad[0] = sb[0] < R ? sb[0] : -1;
    bad[1] = sb[0] < R ? tg[sb[0]] : 0;
  }
}

// the reduced loss: sum of the per-row losses in a fixed order, / denominator for mean
template <class Tr>
__global__ void __launch_bounds__(kThreads) ce_sum_kernel(const typename Tr::A* __restrict__ rows, int64_t R,
                                                          const double* __restrict__ den, bool mean,
                                                          typename Tr::S* __restrict__ out) {
  __shared__ double sh[kThreads];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < R; i += kThreads) acc += static_cast<double>(rows[i]);
  sh[threadIdx.x] = acc;
  __syncthreads();
  for (int o = kThreads / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    double v = sh[0];
    if (mean) v = v / den[0];  // 0/0 = NaN for an empty or all-ignored batch, as torch
    out[0] = Tr::store(static_cast<typename Tr::A>(v));
  }
}

template <class Tr>
__global__ void ce_scale_kernel(const typename Tr::S* __restrict__ go, typename Tr::S* __restrict__ g, int64_t total,
                                int64_t C, int64_t D, bool per_row) {
  using A = typename Tr::A;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += stride) {
    const A f = per_row ? Tr::load(go[(i / (C * D)) * D + i % D]) : Tr::load(go[0]);
    g[i] = Tr::store(Tr::load(g[i]) * f);
  }
}

at::Tensor out_tensor(at::IntArrayRef sizes, const at::TensorOptions& o) {
  at::Tensor t = at::empty(sizes, o);
  if (mte::poison_flag().load(std::memory_order_relaxed) && t.numel() > 0) t.fill_(NAN);
  return t;
}

std::tuple<at::Tensor, at::Tensor> ce_fwd_cuda(const at::Tensor& input, const at::Tensor& target,
                                               const std::optional<at::Tensor>& weight, int64_t reduction,
                                               int64_t ignore_index, double label_smoothing, bool log_input,
                                               bool compute_grad) {
  TORCH_CHECK(input.dim() == 3, "ce_fwd: input: expected a 3-D tensor [N, C, D], got ", input.dim(), "-D of size ",
              input.sizes());
  TORCH_CHECK(reduction >= 0 && reduction <= 2, "ce_fwd: reduction: expected 0 (none), 1 (mean) or 2 (sum), got ",
              reduction);
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0,
              "label_smoothing must be between 0.0 and 1.0. Got: ", label_smoothing);
  const int64_t N = input.size(0), C = input.size(1), D = input.size(2), R = N * D;
  TORCH_CHECK(C > 0 || R == 0, "ce_fwd: input: expected at least one class, got size ", input.sizes());
  const bool prob = target.is_floating_point();
  TORCH_CHECK(target.device() == input.device(), "ce_fwd: target: expected a tensor on ", input.device());
  if (prob) {
    TORCH_CHECK(!log_input, "ce_fwd: target: nll_loss takes class indices (int64)");
    TORCH_CHECK(target.sizes() == input.sizes() && target.scalar_type() == input.scalar_type(),
                "ce_fwd: target: expected class probabilities of input's shape and dtype, got ", target.sizes(), " ",
                target.scalar_type());
    TORCH_CHECK(ignore_index < 0, "ignore_index is not supported for floating point target");
  } else {
    TORCH_CHECK(target.scalar_type() == at::kLong, "expected target dtype to be Long, but got ", target.scalar_type());
    TORCH_CHECK(target.dim() == 2 && target.size(0) == N && target.size(1) == D, "ce_fwd: target: expected shape [",
                N, ", ", D, "] (input's [N, D]), got ", target.sizes());
  }
  const bool has_w = weight.has_value() && weight->defined();
  if (has_w) {
    TORCH_CHECK(weight->dim() == 1 && weight->numel() == C, "weight tensor should be defined either for all ", C,
                " classes or no classes but got weight tensor of shape: ", weight->sizes());
    TORCH_CHECK(weight->scalar_type() == input.scalar_type(), "expected scalar type ", input.scalar_type(),
                " but found ", weight->scalar_type());
    TORCH_CHECK(weight->device() == input.device(), "ce_fwd: weight: expected a tensor on ", input.device());
  }
  c10::cuda::CUDAGuard guard(input.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor tgt = target.contiguous();
  const at::Tensor w = has_w ? weight->contiguous() : at::Tensor();
  at::Tensor loss = out_tensor(reduction == 0 ? at::IntArrayRef({N, D}) : at::IntArrayRef({}), input.options());
  at::Tensor grad = compute_grad ? out_tensor({N, C, D}, input.options()) : at::empty({0}, input.options());
  at::Tensor den = at::empty({1}, input.options().dtype(at::kDouble));
  const bool f64 = input.scalar_type() == at::kDouble;
  at::Tensor rows = at::empty({reduction == 0 ? 0 : R}, input.options().dtype(f64 ? at::kDouble : at::kFloat));
  with_traits(input.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    using S = typename Tr::S;
    using A = typename Tr::A;
    const S* wp = has_w ? static_cast<const S*>(w.const_data_ptr()) : nullptr;
    if (!prob) {
      at::Tensor bad = at::empty({2}, input.options().dtype(at::kLong));
      ce_prepass_kernel<Tr><<<1, kThreads, 0, stream>>>(tgt.const_data_ptr<int64_t>(), wp, R, C, ignore_index,
                                                         has_w, den.mutable_data_ptr<double>(),
                                                         bad.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const at::Tensor hb = bad.cpu();  // the one host sync: torch's IndexError naming the target
      const int64_t* b = hb.const_data_ptr<int64_t>();
      TORCH_CHECK_INDEX(b[0] < 0, "Target ", b[1], " is out of bounds.");
    } else {
      den.fill_(static_cast<double>(R));
    }
    if (R == 0) {
      if (reduction != 0) loss.fill_(reduction == 1 ? NAN : 0.0);
      return;
    }
    Args P{C, D, input.stride(0), input.stride(1), input.stride(2), ignore_index, label_smoothing,
           prob, log_input, compute_grad, reduction == 1, has_w, reduction == 0};
    ce_row_kernel<Tr><<<static_cast<unsigned>(R), kThreads, 0, stream>>>(
        static_cast<const S*>(input.const_data_ptr()), prob ? nullptr : tgt.const_data_ptr<int64_t>(),
        prob ? static_cast<const S*>(tgt.const_data_ptr()) : nullptr, wp, den.const_data_ptr<double>(), P,
        reduction == 0 ? nullptr : static_cast<A*>(rows.data_ptr()),
        reduction == 0 ? static_cast<S*>(loss.data_ptr()) : nullptr,
        compute_grad ? static_cast<S*>(grad.data_ptr()) : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (reduction != 0) {
      ce_sum_kernel<Tr><<<1, kThreads, 0, stream>>>(static_cast<const A*>(rows.const_data_ptr()), R,
                                                     den.const_data_ptr<double>(), reduction == 1,
                                                     static_cast<S*>(loss.data_ptr()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {loss, grad};
}

void ce_bwd_cuda(const at::Tensor& grad_output, const at::Tensor& grad_input, int64_t reduction) {
  TORCH_CHECK(grad_input.dim() == 3 && grad_input.is_contiguous(),
              "ce_bwd: grad_input: expected the contiguous [N, C, D] gradient saved by ce_fwd, got size ",
              grad_input.sizes());
  TORCH_CHECK(grad_output.scalar_type() == grad_input.scalar_type(), "ce_bwd: grad_output: expected dtype ",
              grad_input.scalar_type(), " (the dtype of grad_input), got ", grad_output.scalar_type());
  TORCH_CHECK(grad_output.device() == grad_input.device(), "ce_bwd: grad_output: expected a tensor on ",
              grad_input.device());
  const int64_t N = grad_input.size(0), C = grad_input.size(1), D = grad_input.size(2);
  if (reduction == 0) {
    TORCH_CHECK(grad_output.dim() == 2 && grad_output.size(0) == N && grad_output.size(1) == D,
                "ce_bwd: grad_output: expected shape [", N, ", ", D, "] for reduction 'none', got ",
                grad_output.sizes());
  } else {
    TORCH_CHECK(grad_output.numel() == 1, "ce_bwd: grad_output: expected a scalar for reduction mean/sum, got ",
                grad_output.sizes());
  }
  const int64_t total = grad_input.numel();
  if (total == 0) return;
  c10::cuda::CUDAGuard guard(grad_input.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor go = grad_output.contiguous();
  at::Tensor g = grad_input;
  with_traits(g.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    using S = typename Tr::S;
    const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65536);
    ce_scale_kernel<Tr><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        static_cast<const S*>(go.const_data_ptr()), static_cast<S*>(g.data_ptr()), total, C, D, reduction == 0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(minitorch_ext, CUDA, m) {
  m.impl("ce_fwd", &ce_fwd_cuda);
  m.impl("ce_bwd", &ce_bwd_cuda);
}
