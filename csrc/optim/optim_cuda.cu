// Fused multi-tensor optimizer steps and gradient clipping on CUDA:
// torch.ops.minitorch_ext.{sgd_step_, adam_step_, rmsprop_step_, adagrad_step_,
// total_norm, clip_scale_}.
//
// Algorithm (the per-element arithmetic is csrc/optim/optim_cpu.cpp's, which
// orders it as torch.optim's single-tensor path does; math in float32 for
// float32/float16/bfloat16, in double for float64; state kept in the
// parameter's dtype):
//   SGD:   g = grad/scale (written back) [*clip (rounded to the grad's dtype,
//          written back)] (-g if maximize) (+wd*p);
//          buf = first ? g : m*buf + (1-d)*g;  g = nesterov ? g + m*buf : buf;
//          p += -lr*g
//   Adam:  g as above (coupled wd for Adam; p *= 1-lr*wd for AdamW);
//          m = lerp(m, g, 1-b1); v = b2*v + (1-b2)*g*g; [vmax = max(vmax, v)];
//          p += (-lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
//   RMSprop: g as above (+wd*p); sq = a*sq + (1-a)*g*g;
//          centered: ga = lerp(ga, g, 1-a), avg = sqrt(sq - ga*ga);
//          else avg = sqrt(sq);  avg += eps;
//          momentum: buf = m*buf + g/avg, p += -lr*buf;  else p += -lr*g/avg
//   Adagrad: g as above (+wd*p); sum += g*g;
//          p += (-clr)*g / (sqrt(sum) + eps), clr = lr / (1 + (step-1)*lr_decay)
//   norm:  per-block partial sums of x^2 (|x|, max |x|), then one block adds
//          the partials in a fixed order (deterministic), sqrt for norm 2.
//   clip:  x *= min(1, max_norm / (total_norm + 1e-6)), read on the device.
//   Folded clip (clip_total_norm of the steps): the same coefficient (one
//          __device__ function, clip_coef), computed by every block of the
//          step launch; when it is not exactly 1 the grad (after the unscale)
//          is multiplied by it in the opmath type, rounded to the grad's
//          dtype and written back, exactly as a clip_scale_ launch before the
//          step leaves it, and the step goes on with that rounded value.
//          A coefficient of 1 skips it (no multiply, no write).
//
// Launch shape (multi_tensor_apply style). A group's tensors (one dtype per
// launch) are packed, up to 60 (Adam), 72 (RMSprop), 80 (Adagrad), 100 (SGD)
// or 160 (norm, clip) at a time, into a struct passed by
// value as a kernel argument (__grid_constant__, < 4 KB): per tensor its D
// base pointers (param, grad, state...), its numel, and a prefix sum of its
// chunk counts. Every block owns one fixed-size chunk of one tensor: it finds
// its tensor by a binary search of blockIdx.x in that prefix sum (a handful of
// uniform reads of kernel-parameter memory), so the grid can be any size and
// a thousand small tensors and one huge one cost the same one launch per
// table of tensors. The chunk size is picked per launch (a power of two,
// 1024..65536 elements) so a launch has ~8 blocks of 256 threads per SM.
// Each thread walks its chunk kILP = 4 elements at a time, with one vector
// load/store per tensor stream (16 B for float32) when the tensors are
// aligned, scalar accesses otherwise and in the tail.
//
// Steps and device scalars. state_steps (float32, or float64, scalar tensors
// beside the params, as torch's fused optimizers keep them) are incremented
// by a small prologue launch (one thread per step) before the update launch;
// in the update launch thread 0 of each block reads its tensor's new step and
// computes the bias corrections (Adam) or the decayed lr (Adagrad) (double,
// as Python does) into shared memory; RMSprop's update does not read the step.
// grad_scale, found_inf, lr_tensor and clip_total_norm are read inside the
// kernels: no host synchronisation anywhere. A non-zero found_inf makes every
// launch return before it touches anything (no param, state, grad or step
// changes; no clip either).
//
// Memory traffic per element (4-byte params): SGD+momentum reads p, g, buf and
// writes p, buf (20 B); Adam reads p, g, m, v and writes p, m, v (28 B, +8 B
// with amsgrad, +4 B when the unscaled grad is written back); RMSprop reads
// p, g, sq [, ga] [, buf] and writes them, g aside (20 B plain, +8 B centered,
// +8 B with momentum); Adagrad reads p, g, sum and writes p, sum (20 B); the
// unscaled grad's write adds 4 B to both, as to Adam; the folded clip
// adds one write of the grad (+4 B) when its coefficient is not 1 (none more
// with grad_scale: the unscaled, clipped grad is written once) and saves the
// separate clip_scale_ pass (8 B); total_norm reads each element once (4 B)
// plus 8 B of partial per block; clip_scale_ reads and writes (8 B). That is
// the minimum for an in-place update.
//
// What makes it fast: one pass over HBM per step instead of torch's 5-8
// per-op passes (foreach=False), one launch for up to 60-160 tensors instead
// of one per tensor, a chunk size fitted to the launch so small-tensor
// launches still fill the GPU, vector accesses, and device-side scalars so
// the step never waits for the host.
//
// Numerics: every float32 add/mul/fma/div/sqrt of the update goes through the
// helpers in `ieee` below, which emit round-to-nearest PTX without .ftz. The
// build uses --use_fast_math (approximate division and square root, denormals
// flushed to zero, free contraction into FMAs); these helpers make the result
// independent of those flags, IEEE-exact like the CPU kernel: FMAs exactly
// where ATen fuses a multiply-add (add with alpha, lerp, addcmul), separate
// roundings elsewhere. Double math uses the __d*_rn / __fma_rn intrinsics
// (never contracted). The bias corrections use CUDA's pow (<= 2 ulp in
// double, against glibc's < 1 ulp on the CPU): a difference that survives the
// rounding of the step size to float32 only with a probability ~1e-8.
// Reductions: float32 per thread (double for float64), double across threads
// and blocks, in a fixed order: bitwise reproducible on a given GPU.
//
// Headers: c10/cuda's stream, guard and error checks rather than
// ATen/cuda/CUDAContext.h (which pulls in cuBLAS/cuSPARSE headers), as
// csrc/norm/norm_cuda.cu does.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "optim/optim_checks.h"

namespace {

constexpr int kThreads = 256;                    // threads per block (all kernels)
constexpr int kILP = 4;                          // elements per thread per iteration
constexpr int64_t kMinChunk = kThreads * kILP;   // 1024: one iteration of a block
constexpr int64_t kMaxChunk = 65536;
constexpr int kBlocksPerSM = 8;                  // 8 x 256 threads: a full SM
constexpr size_t kMaxParamBytes = 4000;          // kernel arguments stay below 4 KB

// ---------------------------------------------------------------------------
// IEEE round-to-nearest arithmetic, immune to --use_fast_math (see the top).
namespace ieee {
__device__ __forceinline__ float add(float a, float b) {
  float r;
  asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float sub(float a, float b) {
  float r;
  asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float mul(float a, float b) {
  float r;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float fma(float a, float b, float c) {  // a*b + c, one rounding
  float r;
  asm("fma.rn.f32 %0, %1, %2, %3;" : "=f"(r) : "f"(a), "f"(b), "f"(c));
  return r;
}
__device__ __forceinline__ float div(float a, float b) {
  float r;
  asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float sqrt(float a) {
  float r;
  asm("sqrt.rn.f32 %0, %1;" : "=f"(r) : "f"(a));
  return r;
}
__device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double fma(double a, double b, double c) { return __fma_rn(a, b, c); }
__device__ __forceinline__ double div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ double sqrt(double a) { return __dsqrt_rn(a); }
// Conversions without .ftz (fast math would flush float32 subnormals).
__device__ __forceinline__ float to_f32(double a) {
  float r;
  asm("cvt.rn.f32.f64 %0, %1;" : "=f"(r) : "d"(a));
  return r;
}
__device__ __forceinline__ double to_f64(float a) {
  double r;
  asm("cvt.f64.f32 %0, %1;" : "=d"(r) : "f"(a));
  return r;
}
__device__ __forceinline__ double to_f64(double a) { return a; }
// double -> the opmath type A (float or double), round to nearest.
template <typename A>
__device__ __forceinline__ A to(double a) {
  if constexpr (std::is_same_v<A, float>) {
    return to_f32(a);
  } else {
    return a;
  }
}
}  // namespace ieee

// Sign operations and an ordered compare that keep float32 subnormals (plain
// C++ negation / comparison become .ftz instructions under fast math).
namespace ieee {
__device__ __forceinline__ float neg(float a) { return __int_as_float(__float_as_int(a) ^ 0x80000000); }
__device__ __forceinline__ float abs(float a) { return __int_as_float(__float_as_int(a) & 0x7fffffff); }
__device__ __forceinline__ bool gt(float a, float b) {
  unsigned r;
  asm("{\n\t.reg .pred p;\n\tsetp.gt.f32 p, %1, %2;\n\tselp.u32 %0, 1, 0, p;\n\t}" : "=r"(r) : "f"(a), "f"(b));
  return r != 0;
}
__device__ __forceinline__ double neg(double a) { return -a; }
__device__ __forceinline__ double abs(double a) { return ::fabs(a); }
__device__ __forceinline__ bool gt(double a, double b) { return a > b; }
}  // namespace ieee

// max that propagates NaN (at::vec::maximum, torch.maximum): a > b ? a : b.
template <typename A>
__device__ __forceinline__ A nan_max(A a, A b) {
  if (a != a) return a;
  if (b != b) return b;
  return ieee::gt(a, b) ? a : b;
}

__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// A 0-dim float32/float64 device tensor, read in the kernel.
struct DevScalar {
  const void* ptr = nullptr;
  bool f64 = false;
  __device__ __forceinline__ bool present() const { return ptr != nullptr; }
  __device__ __forceinline__ double get() const {
    return f64 ? *static_cast<const double*>(ptr) : ieee::to_f64(*static_cast<const float*>(ptr));
  }
};

__device__ __forceinline__ bool skip_for_inf(const DevScalar& found_inf) {
  return found_inf.present() && found_inf.get() != 0.0;
}

// torch.nn.utils.clip_grad_norm_'s coefficient: clip_coef = max_norm /
// (total_norm + 1e-6) (a Python float divided by a tensor is reciprocal(t) *
// max_norm), clamped to 1 (NaN stays NaN); the CPU kernel's exact formula, in
// the total norm's dtype. Returned as double (exact for a float32 total norm);
// the caller rounds it to its opmath type with ieee::to<A>. Used by
// clip_scale_kernel and by the steps' folded clip.
__device__ __forceinline__ double clip_coef(const DevScalar& total_norm, double max_norm) {
  if (total_norm.f64) {
    const double r = ieee::div(1.0, ieee::add(*static_cast<const double*>(total_norm.ptr), 1e-6));
    const double c = ieee::mul(r, max_norm);
    return c > 1.0 ? 1.0 : c;
  }
  const float r = ieee::div(1.0f, ieee::add(*static_cast<const float*>(total_norm.ptr), ieee::to_f32(1e-6)));
  const float c = ieee::mul(r, ieee::to_f32(max_norm));
  return c > 1.0f ? 1.0 : ieee::to_f64(c);
}

// ---------------------------------------------------------------------------
// The tensor table: D pointer lists for up to N tensors, passed by value.
template <int D, int N>
struct TensorTable {
  void* ptr[D][N];
  int64_t numel[N];
  int chunk_start[N + 1];  // blocks [chunk_start[t], chunk_start[t+1]) work on tensor t
  uint8_t flag[N];         // per-tensor bit (adam: the step tensor is float64)
  int64_t chunk;           // elements per block
  int ntensors;
};

// Table sizes so that the table plus the op's scalar arguments fit 4 KB.
using SgdTable = TensorTable<3, 100>;    // p, g, buf
using AdamTable = TensorTable<6, 60>;    // p, g, m, v, vmax, step
using RmspropTable = TensorTable<5, 72>; // p, g, square_avg, grad_avg, momentum_buffer
using AdagradTable = TensorTable<4, 80>; // p, g, state_sum, step
using UnaryTable = TensorTable<1, 160>;  // x (norm, clip)

// Which tensor and which slice of it this block owns.
template <int D, int N>
struct BlockWork {
  int t;          // index in the table
  int64_t start;  // first element of the chunk
  int64_t n;      // elements in the chunk
};

template <int D, int N>
__device__ __forceinline__ BlockWork<D, N> locate(const TensorTable<D, N>& tab) {
  const int b = static_cast<int>(blockIdx.x);
  int lo = 0, hi = tab.ntensors;  // invariant: chunk_start[lo] <= b < chunk_start[hi]
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (tab.chunk_start[mid] <= b) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  BlockWork<D, N> w;
  w.t = lo;
  w.start = static_cast<int64_t>(b - tab.chunk_start[lo]) * tab.chunk;
  w.n = min64(tab.chunk, tab.numel[lo] - w.start);
  return w;
}

// kILP elements of T, the unit of a vector access.
template <typename T>
struct alignas(sizeof(T) * kILP) Pack {
  T v[kILP];
};

template <typename T>
__device__ __forceinline__ bool aligned(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) % sizeof(Pack<T>)) == 0;
}

// r[k] = p[i + k] for k < cnt (0 beyond), as opmath A.
template <typename T, typename A>
__device__ __forceinline__ void load_n(const T* p, int64_t i, int cnt, bool vec, A (&r)[kILP]) {
  if (vec && cnt == kILP) {
    const Pack<T> v = *reinterpret_cast<const Pack<T>*>(p + i);
#pragma unroll
    for (int k = 0; k < kILP; ++k) r[k] = static_cast<A>(v.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < kILP; ++k) r[k] = k < cnt ? static_cast<A>(p[i + k]) : A(0);
  }
}

template <typename T, typename A>
__device__ __forceinline__ void store_n(T* p, int64_t i, int cnt, bool vec, const A (&r)[kILP]) {
  if (vec && cnt == kILP) {
    Pack<T> v;
#pragma unroll
    for (int k = 0; k < kILP; ++k) v.v[k] = static_cast<T>(r[k]);
    *reinterpret_cast<Pack<T>*>(p + i) = v;
  } else {
#pragma unroll
    for (int k = 0; k < kILP; ++k) {
      if (k < cnt) p[i + k] = static_cast<T>(r[k]);
    }
  }
}

// x rounded to the storage type T and back: what store_n then load_n give
// (the same conversions). A no-op for float and double.
template <typename T, typename A>
__device__ __forceinline__ A round_to(A x) {
  return static_cast<A>(static_cast<T>(x));
}

// The folded clip of a step launch: `on` when clip_total_norm was given and
// its coefficient is not exactly 1; `coef` is then the coefficient in the
// opmath type A.
template <typename A>
struct StepClip {
  bool on = false;
  A coef = A(1);
};

template <typename A>
__device__ __forceinline__ StepClip<A> step_clip(const DevScalar& total_norm, double max_norm) {
  StepClip<A> s;
  if (total_norm.present()) {
    const double c = clip_coef(total_norm, max_norm);
    s.on = !(c == 1.0);  // multiplying by 1 changes nothing: skipped, no write-back
    s.coef = ieee::to<A>(c);
  }
  return s;
}

// ===========================================================================
// SGD
// ===========================================================================
struct SgdArgs {
  double lr, momentum, dampening, weight_decay, clip_max_norm;
  DevScalar lr_t, scale, found_inf, clip;  // clip: clip_total_norm
  bool has_momentum, nesterov, maximize, first;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) sgd_kernel(const __grid_constant__ SgdTable tab, const SgdArgs a) {
  using A = at::opmath_type<T>;
  if (skip_for_inf(a.found_inf)) return;
  const auto w = locate(tab);
  T* p = static_cast<T*>(tab.ptr[0][w.t]) + w.start;
  T* g = static_cast<T*>(tab.ptr[1][w.t]) + w.start;
  T* b = a.has_momentum ? static_cast<T*>(tab.ptr[2][w.t]) + w.start : nullptr;
  // Scalars rounded to the opmath type as the CPU kernel rounds them.
  const bool has_scale = a.scale.present();
  const A scale = static_cast<A>(has_scale ? ieee::to_f32(a.scale.get()) : 1.0f);  // float -> A: exact
  const A wd = ieee::to<A>(a.weight_decay);
  const A mom = ieee::to<A>(a.momentum);
  const A one_minus_damp = ieee::to<A>(ieee::sub(1.0, a.dampening));
  const A neg_lr = ieee::to<A>(-(a.lr_t.present() ? a.lr_t.get() : a.lr));  // double negation: exact
  const StepClip<A> clip = step_clip<A>(a.clip, a.clip_max_norm);
  const bool has_wd = a.weight_decay != 0.0;
  const bool load_buf = a.has_momentum && !a.first;
  const bool vec = aligned<T>(p) && aligned<T>(g) && (b == nullptr || aligned<T>(b));

  for (int64_t i = static_cast<int64_t>(threadIdx.x) * kILP; i < w.n; i += kThreads * kILP) {
    const int cnt = static_cast<int>(min64(kILP, w.n - i));
    A P[kILP], G[kILP], B[kILP];
    load_n(p, i, cnt, vec, P);
    load_n(g, i, cnt, vec, G);
    if (load_buf) load_n(b, i, cnt, vec, B);
    if (has_scale) {
#pragma unroll
      for (int k = 0; k < kILP; ++k) G[k] = ieee::div(G[k], scale);  // GradScaler's unscale_
    }
    if (clip.on) {
#pragma unroll
      for (int k = 0; k < kILP; ++k) G[k] = round_to<T>(ieee::mul(G[k], clip.coef));  // grad.mul_(clip_coef)
    }
    if (has_scale || clip.on) store_n(g, i, cnt, vec, G);  // the grad written back, once
#pragma unroll
    for (int k = 0; k < kILP; ++k) {
      A gk = G[k];
      if (a.maximize) gk = ieee::neg(gk);
      if (has_wd) gk = ieee::fma(P[k], wd, gk);  // grad.add(param, alpha=wd)
      if (a.has_momentum) {
        if (a.first) {
          B[k] = gk;  // buf = grad.clone()
        } else {
          B[k] = ieee::fma(gk, one_minus_damp, ieee::mul(B[k], mom));  // buf.mul_(m).add_(g, alpha=1-d)
        }
        gk = a.nesterov ? ieee::fma(B[k], mom, gk) : B[k];  // g.add(buf, alpha=m) | buf
      }
      P[k] = ieee::fma(gk, neg_lr, P[k]);  // param.add_(g, alpha=-lr)
    }
    if (a.has_momentum) store_n(b, i, cnt, vec, B);
    store_n(p, i, cnt, vec, P);
  }
}

// ===========================================================================
// Adam / AdamW
// ===========================================================================
struct AdamArgs {
  double lr, beta1, beta2, weight_decay, eps, clip_max_norm;
  DevScalar lr_t, scale, found_inf, clip;  // clip: clip_total_norm
  bool amsgrad, maximize, coupled_wd, decoupled_wd;
};

// Prologue: state_steps[i] += 1 (unless found_inf), one thread per step.
constexpr int kMaxSteps = 400;
struct StepTable {
  void* ptr[kMaxSteps];
  uint8_t f64[kMaxSteps];
  int n;
};

__global__ void __launch_bounds__(kThreads) increment_steps_kernel(const __grid_constant__ StepTable tab,
                                                                   const DevScalar found_inf) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= tab.n || skip_for_inf(found_inf)) return;
  if (tab.f64[i]) {
    *static_cast<double*>(tab.ptr[i]) += 1.0;
  } else {
    *static_cast<float*>(tab.ptr[i]) += 1.0f;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) adam_kernel(const __grid_constant__ AdamTable tab, const AdamArgs a) {
  using A = at::opmath_type<T>;
  if (skip_for_inf(a.found_inf)) return;
  const auto w = locate(tab);

  // Per-tensor scalars from the (already incremented) step: computed once per
  // block by thread 0, in double as Python computes them (float32 when lr is
  // a float32 tensor, as torch's tensor arithmetic does), like the CPU kernel.
  __shared__ A s_neg_step, s_bc2_sqrt, s_decay;
  if (threadIdx.x == 0) {
    const void* sp = tab.ptr[5][w.t];
    const double step = tab.flag[w.t] ? *static_cast<const double*>(sp)
                                      : ieee::to_f64(*static_cast<const float*>(sp));
    const double bc1 = ieee::sub(1.0, ::pow(a.beta1, step));
    const double bc2 = ieee::sub(1.0, ::pow(a.beta2, step));
    const bool lr_f32 = a.lr_t.present() && !a.lr_t.f64;
    const double lr_v = a.lr_t.present() ? a.lr_t.get() : a.lr;
    double neg_step, decay;
    if (lr_f32) {
      const float lr_f = ieee::to_f32(lr_v);
      neg_step = ieee::to_f64(ieee::neg(ieee::div(lr_f, ieee::to_f32(bc1))));
      decay = ieee::to_f64(ieee::sub(1.0f, ieee::mul(lr_f, ieee::to_f32(a.weight_decay))));
    } else {
      neg_step = -ieee::div(lr_v, bc1);
      decay = ieee::sub(1.0, ieee::mul(lr_v, a.weight_decay));
    }
    s_neg_step = ieee::to<A>(neg_step);
    s_bc2_sqrt = ieee::to<A>(ieee::sqrt(bc2));
    s_decay = ieee::to<A>(decay);
  }
  __syncthreads();
  const A neg_step = s_neg_step, bc2_sqrt = s_bc2_sqrt, decay = s_decay;

  T* p = static_cast<T*>(tab.ptr[0][w.t]) + w.start;
  T* g = static_cast<T*>(tab.ptr[1][w.t]) + w.start;
  T* m = static_cast<T*>(tab.ptr[2][w.t]) + w.start;
  T* v = static_cast<T*>(tab.ptr[3][w.t]) + w.start;
  T* vmax = a.amsgrad ? static_cast<T*>(tab.ptr[4][w.t]) + w.start : nullptr;
  const bool has_scale = a.scale.present();
  const A scale = static_cast<A>(has_scale ? ieee::to_f32(a.scale.get()) : 1.0f);  // float -> A: exact
  const A wd = ieee::to<A>(a.weight_decay);
  const A lw = ieee::to<A>(ieee::sub(1.0, a.beta1));  // lerp weight 1-beta1
  const A lw_minus_1 = ieee::sub(lw, A(1));
  const bool lerp_small = ieee::abs(lw) < A(0.5);
  const A beta2 = ieee::to<A>(a.beta2);
  const A one_minus_beta2 = ieee::to<A>(ieee::sub(1.0, a.beta2));
  const A eps = ieee::to<A>(a.eps);
  const StepClip<A> clip = step_clip<A>(a.clip, a.clip_max_norm);
  const bool vec = aligned<T>(p) && aligned<T>(g) && aligned<T>(m) && aligned<T>(v) &&
                   (vmax == nullptr || aligned<T>(vmax));

  for (int64_t i = static_cast<int64_t>(threadIdx.x) * kILP; i < w.n; i += kThreads * kILP) {
    const int cnt = static_cast<int>(min64(kILP, w.n - i));
    A P[kILP], G[kILP], M[kILP], S[kILP], X[kILP];
    load_n(p, i, cnt, vec, P);
    load_n(g, i, cnt, vec, G);
    load_n(m, i, cnt, vec, M);
    load_n(v, i, cnt, vec, S);
    if (a.amsgrad) load_n(vmax, i, cnt, vec, X);
    if (has_scale) {
#pragma unroll
      for (int k = 0; k < kILP; ++k) G[k] = ieee::div(G[k], scale);  // GradScaler's unscale_
    }
    if (clip.on) {
#pragma unroll
      for (int k = 0; k < kILP; ++k) G[k] = round_to<T>(ieee::mul(G[k], clip.coef));  // grad.mul_(clip_coef)
    }
    if (has_scale || clip.on) store_n(g, i, cnt, vec, G);  // the grad written back, once
#pragma unroll
    for (int k = 0; k < kILP; ++k) {
      A gk = G[k];
      if (a.maximize) gk = ieee::neg(gk);
      if (a.coupled_wd) gk = ieee::fma(P[k], wd, gk);     // grad.add(param, alpha=wd)
      if (a.decoupled_wd) P[k] = ieee::mul(P[k], decay);  // param.mul_(1 - lr*wd)
      // exp_avg.lerp_(grad, 1-beta1), as ATen's lerp computes it
      const A diff = ieee::sub(gk, M[k]);
      M[k] = lerp_small ? ieee::fma(lw, diff, M[k]) : ieee::fma(lw_minus_1, diff, gk);
      // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1-beta2)
      S[k] = ieee::fma(ieee::mul(one_minus_beta2, gk), gk, ieee::mul(S[k], beta2));
      A den_src = S[k];
      if (a.amsgrad) {
        X[k] = nan_max(X[k], S[k]);
        den_src = X[k];
      }
      // denom = (sqrt(.) / bc2_sqrt).add_(eps); param.addcdiv_(m, denom, value=-step_size)
      const A denom = ieee::add(ieee::div(ieee::sqrt(den_src), bc2_sqrt), eps);
      P[k] = ieee::add(P[k], ieee::div(ieee::mul(neg_step, M[k]), denom));
    }
    store_n(p, i, cnt, vec, P);
    store_n(m, i, cnt, vec, M);
    store_n(v, i, cnt, vec, S);
    if (a.amsgrad) store_n(vmax, i, cnt, vec, X);
  }
}

// ===========================================================================
// RMSprop
// ===========================================================================
struct RmspropArgs {
  double lr, alpha, eps, weight_decay, momentum, clip_max_norm;
  DevScalar scale, found_inf, clip;  // clip: clip_total_norm
  bool centered, has_momentum, maximize;
};

// No per-tensor scalars: RMSprop's update does not read the step (the
// prologue still increments it, as torch does).
template <typename T>
__global__ void __launch_bounds__(kThreads) rmsprop_kernel(const __grid_constant__ RmspropTable tab,
                                                           const RmspropArgs a) {
  using A = at::opmath_type<T>;
  if (skip_for_inf(a.found_inf)) return;
  const auto w = locate(tab);
  T* p = static_cast<T*>(tab.ptr[0][w.t]) + w.start;
  T* g = static_cast<T*>(tab.ptr[1][w.t]) + w.start;
  T* sq = static_cast<T*>(tab.ptr[2][w.t]) + w.start;
  T* ga = a.centered ? static_cast<T*>(tab.ptr[3][w.t]) + w.start : nullptr;
  T* b = a.has_momentum ? static_cast<T*>(tab.ptr[4][w.t]) + w.start : nullptr;
  // Scalars rounded to the opmath type as the CPU kernel rounds them.
  const bool has_scale = a.scale.present();
  const A scale = static_cast<A>(has_scale ? ieee::to_f32(a.scale.get()) : 1.0f);  // float -> A: exact
  const A wd = ieee::to<A>(a.weight_decay);
  const A alpha = ieee::to<A>(a.alpha);
  const A lw = ieee::to<A>(ieee::sub(1.0, a.alpha));  // 1-alpha: addcmul value and lerp weight
  const A lw_minus_1 = ieee::sub(lw, A(1));
  const bool lerp_small = ieee::abs(lw) < A(0.5);
  const A eps = ieee::to<A>(a.eps);
  const A mom = ieee::to<A>(a.momentum);
  const A neg_lr = ieee::to<A>(-a.lr);  // double negation: exact
  const StepClip<A> clip = step_clip<A>(a.clip, a.clip_max_norm);
  const bool has_wd = a.weight_decay != 0.0;
  const bool vec = aligned<T>(p) && aligned<T>(g) && aligned<T>(sq) && (ga == nullptr || aligned<T>(ga)) &&
                   (b == nullptr || aligned<T>(b));

  for (int64_t i = static_cast<int64_t>(threadIdx.x) * kILP; i < w.n; i += kThreads * kILP) {
    const int cnt = static_cast<int>(min64(kILP, w.n - i));
    A P[kILP], G[kILP], S[kILP], GA[kILP], B[kILP];
    load_n(p, i, cnt, vec, P);
    load_n(g, i, cnt, vec, G);
    load_n(sq, i, cnt, vec, S);
    if (a.centered) load_n(ga, i, cnt, vec, GA);
    if (a.has_momentum) load_n(b, i, cnt, vec, B);
    if (has_scale) {
#pragma unroll
      for (int k = 0; k < kILP; ++k) G[k] = ieee::div(G[k], scale);  // GradScaler's unscale_
    }
    if (clip.on) {
#pragma unroll
      for (int k = 0; k < kILP; ++k) G[k] = round_to<T>(ieee::mul(G[k], clip.coef));  // grad.mul_(clip_coef)
    }
    if (has_scale || clip.on) store_n(g, i, cnt, vec, G);  // the grad written back, once
#pragma unroll
    for (int k = 0; k < kILP; ++k) {
      A gk = G[k];
      if (a.maximize) gk = ieee::neg(gk);
      if (has_wd) gk = ieee::fma(P[k], wd, gk);  // grad.add(param, alpha=wd)
      // square_avg.mul_(alpha).addcmul_(grad, grad, value=1-alpha)
      S[k] = ieee::fma(ieee::mul(lw, gk), gk, ieee::mul(S[k], alpha));
      A avg;
      if (a.centered) {
        // grad_avg.lerp_(grad, 1-alpha), as ATen's lerp computes it
        const A diff = ieee::sub(gk, GA[k]);
        GA[k] = lerp_small ? ieee::fma(lw, diff, GA[k]) : ieee::fma(lw_minus_1, diff, gk);
        // square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        avg = ieee::sqrt(ieee::fma(ieee::neg(GA[k]), GA[k], S[k]));
      } else {
        avg = ieee::sqrt(S[k]);  // square_avg.sqrt()
      }
      avg = ieee::add(avg, eps);  // avg.add_(eps)
      if (a.has_momentum) {
        // buf.mul_(momentum).addcdiv_(grad, avg); param.add_(buf, alpha=-lr)
        B[k] = ieee::add(ieee::mul(B[k], mom), ieee::div(gk, avg));
        P[k] = ieee::fma(B[k], neg_lr, P[k]);
      } else {
        // param.addcdiv_(grad, avg, value=-lr)
        P[k] = ieee::add(P[k], ieee::div(ieee::mul(neg_lr, gk), avg));
      }
    }
    store_n(p, i, cnt, vec, P);
    store_n(sq, i, cnt, vec, S);
    if (a.centered) store_n(ga, i, cnt, vec, GA);
    if (a.has_momentum) store_n(b, i, cnt, vec, B);
  }
}

// ===========================================================================
// Adagrad
// ===========================================================================
struct AdagradArgs {
  double lr, lr_decay, weight_decay, eps, clip_max_norm;
  DevScalar scale, found_inf, clip;  // clip: clip_total_norm
  bool maximize;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) adagrad_kernel(const __grid_constant__ AdagradTable tab,
                                                           const AdagradArgs a) {
  using A = at::opmath_type<T>;
  if (skip_for_inf(a.found_inf)) return;
  const auto w = locate(tab);

  // Per-tensor step size from the (already incremented) step: computed once
  // per block by thread 0, in double as Python computes it, like the CPU
  // kernel: clr = lr / (1 + (step - 1) * lr_decay).
  __shared__ A s_neg_clr;
  if (threadIdx.x == 0) {
    const void* sp = tab.ptr[3][w.t];
    const double step = tab.flag[w.t] ? *static_cast<const double*>(sp)
                                      : ieee::to_f64(*static_cast<const float*>(sp));
    const double clr = ieee::div(a.lr, ieee::add(1.0, ieee::mul(ieee::sub(step, 1.0), a.lr_decay)));
    s_neg_clr = ieee::to<A>(-clr);  // double negation: exact
  }
  __syncthreads();
  const A neg_clr = s_neg_clr;

  T* p = static_cast<T*>(tab.ptr[0][w.t]) + w.start;
  T* g = static_cast<T*>(tab.ptr[1][w.t]) + w.start;
  T* sum = static_cast<T*>(tab.ptr[2][w.t]) + w.start;
  const bool has_scale = a.scale.present();
  const A scale = static_cast<A>(has_scale ? ieee::to_f32(a.scale.get()) : 1.0f);  // float -> A: exact
  const A wd = ieee::to<A>(a.weight_decay);
  const A eps = ieee::to<A>(a.eps);
  const StepClip<A> clip = step_clip<A>(a.clip, a.clip_max_norm);
  const bool has_wd = a.weight_decay != 0.0;
  const bool vec = aligned<T>(p) && aligned<T>(g) && aligned<T>(sum);

  for (int64_t i = static_cast<int64_t>(threadIdx.x) * kILP; i < w.n; i += kThreads * kILP) {
    const int cnt = static_cast<int>(min64(kILP, w.n - i));
    A P[kILP], G[kILP], S[kILP];
    load_n(p, i, cnt, vec, P);
    load_n(g, i, cnt, vec, G);
    load_n(sum, i, cnt, vec, S);
    if (has_scale) {
#pragma unroll
      for (int k = 0; k < kILP; ++k) G[k] = ieee::div(G[k], scale);  // GradScaler's unscale_
    }
    if (clip.on) {
#pragma unroll
      for (int k = 0; k < kILP; ++k) G[k] = round_to<T>(ieee::mul(G[k], clip.coef));  // grad.mul_(clip_coef)
    }
    if (has_scale || clip.on) store_n(g, i, cnt, vec, G);  // the grad written back, once
#pragma unroll
    for (int k = 0; k < kILP; ++k) {
      A gk = G[k];
      if (a.maximize) gk = ieee::neg(gk);
      if (has_wd) gk = ieee::fma(P[k], wd, gk);  // grad.add(param, alpha=wd)
      S[k] = ieee::fma(gk, gk, S[k]);  // state_sum.addcmul_(grad, grad, value=1)
      // std = state_sum.sqrt().add_(eps); param.addcdiv_(grad, std, value=-clr)
      const A denom = ieee::add(ieee::sqrt(S[k]), eps);
      P[k] = ieee::add(P[k], ieee::div(ieee::mul(neg_clr, gk), denom));
    }
    store_n(p, i, cnt, vec, P);
    store_n(sum, i, cnt, vec, S);
  }
}

// ===========================================================================
// Gradient clipping: global norm (two stages), then an in-place scale.
// ===========================================================================
enum NormKind : int { kTwo = 0, kOne = 1, kInf = 2 };

// Block-wide reduction of one double per thread, in a fixed order (xor
// butterfly in each warp, then warp 0 over the warps' results). All threads
// must call it; thread 0 gets the result.
__device__ __forceinline__ double block_reduce(double x, int kind, double* scratch) {
  for (int off = 16; off > 0; off >>= 1) {
    const double y = __shfl_xor_sync(0xffffffffu, x, off);
    x = kind == kInf ? nan_max(x, y) : ieee::add(x, y);
  }
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  if (warp == 0) {
    constexpr int kWarps = kThreads / 32;
    x = lane < kWarps ? scratch[lane] : 0.0;
    for (int off = 16; off > 0; off >>= 1) {
      const double y = __shfl_xor_sync(0xffffffffu, x, off);
      x = kind == kInf ? nan_max(x, y) : ieee::add(x, y);
    }
  }
  return x;
}

// Stage 1: partial[part_offset + blockIdx.x] = the block's chunk reduced.
template <typename T>
__global__ void __launch_bounds__(kThreads) norm_partial_kernel(const __grid_constant__ UnaryTable tab, int kind,
                                                                double* partial, int64_t part_offset) {
  using A = at::opmath_type<T>;
  __shared__ double scratch[kThreads / 32];
  const auto w = locate(tab);
  const T* x = static_cast<const T*>(tab.ptr[0][w.t]) + w.start;
  const bool vec = aligned<T>(x);
  A acc = A(0);
  for (int64_t i = static_cast<int64_t>(threadIdx.x) * kILP; i < w.n; i += kThreads * kILP) {
    const int cnt = static_cast<int>(min64(kILP, w.n - i));
    A X[kILP];
    load_n(x, i, cnt, vec, X);  // lanes beyond cnt are 0: neutral for every kind
#pragma unroll
    for (int k = 0; k < kILP; ++k) {
      if (kind == kTwo) {
        acc = ieee::fma(X[k], X[k], acc);
      } else if (kind == kOne) {
        acc = ieee::add(acc, ieee::abs(X[k]));
      } else {
        acc = nan_max(acc, ieee::abs(X[k]));
      }
    }
  }
  const double r = block_reduce(ieee::to_f64(acc), kind, scratch);
  if (threadIdx.x == 0) partial[part_offset + blockIdx.x] = r;
}

// Stage 2: one block folds the partials (thread j: partials j, j+256, ... in
// order, then the fixed block reduction) and writes the norm.
template <typename O>
__global__ void __launch_bounds__(kThreads) norm_final_kernel(const double* partial, int64_t n, int kind, O* out) {
  __shared__ double scratch[kThreads / 32];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    acc = kind == kInf ? nan_max(acc, partial[i]) : ieee::add(acc, partial[i]);
  }
  double r = block_reduce(acc, kind, scratch);
  if (threadIdx.x == 0) {
    if (kind == kTwo) r = ieee::sqrt(r);
    *out = ieee::to<O>(r);
  }
}

struct ClipArgs {
  DevScalar total_norm;
  double max_norm;
};

// torch: x.mul_(clip_coef) with clip_grad_norm_'s coefficient (clip_coef above).
template <typename T>
__global__ void __launch_bounds__(kThreads) clip_scale_kernel(const __grid_constant__ UnaryTable tab,
                                                              const ClipArgs a) {
  using A = at::opmath_type<T>;
  const double c = clip_coef(a.total_norm, a.max_norm);
  if (c == 1.0) return;  // multiplying by 1 changes nothing
  const A coef = ieee::to<A>(c);
  const auto w = locate(tab);
  T* x = static_cast<T*>(tab.ptr[0][w.t]) + w.start;
  const bool vec = aligned<T>(x);
  for (int64_t i = static_cast<int64_t>(threadIdx.x) * kILP; i < w.n; i += kThreads * kILP) {
    const int cnt = static_cast<int>(min64(kILP, w.n - i));
    A X[kILP];
    load_n(x, i, cnt, vec, X);
#pragma unroll
    for (int k = 0; k < kILP; ++k) X[k] = ieee::mul(X[k], coef);
    store_n(x, i, cnt, vec, X);
  }
}

static_assert(sizeof(SgdTable) + sizeof(SgdArgs) <= kMaxParamBytes, "SgdTable too large for a kernel argument");
static_assert(sizeof(AdamTable) + sizeof(AdamArgs) <= kMaxParamBytes, "AdamTable too large for a kernel argument");
static_assert(sizeof(RmspropTable) + sizeof(RmspropArgs) <= kMaxParamBytes,
              "RmspropTable too large for a kernel argument");
static_assert(sizeof(AdagradTable) + sizeof(AdagradArgs) <= kMaxParamBytes,
              "AdagradTable too large for a kernel argument");
static_assert(sizeof(UnaryTable) + sizeof(ClipArgs) <= kMaxParamBytes, "UnaryTable too large for a kernel argument");
static_assert(sizeof(StepTable) + sizeof(DevScalar) <= kMaxParamBytes, "StepTable too large for a kernel argument");

// ===========================================================================
// Host side: planning the launches
// ===========================================================================
int sm_count(int device) {
  static int cached[64] = {0};
  if (device >= 0 && device < 64 && cached[device] > 0) return cached[device];
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device));
  if (device >= 0 && device < 64) cached[device] = v;
  return v;
}

// Elements per block for a launch of `total` elements: a power of two in
// [kMinChunk, kMaxChunk], aiming at kBlocksPerSM blocks per SM.
int64_t pick_chunk(int64_t total, int sms) {
  const int64_t want = (total + int64_t(kBlocksPerSM) * sms - 1) / (int64_t(kBlocksPerSM) * sms);
  int64_t c = kMinChunk;
  while (c < want && c < kMaxChunk) c <<= 1;
  return c;
}

// One tensor of a launch: its D pointers, numel and flag.
template <int D>
struct Entry {
  void* ptr[D];
  int64_t numel;
  uint8_t flag;
};

// Splits the entries (numel > 0) into tables of at most N tensors, each with
// its chunk size and chunk prefix sums. Returns the tables and their block counts.
template <int D, int N>
std::vector<std::pair<TensorTable<D, N>, int>> plan(const std::vector<Entry<D>>& entries, int sms) {
  std::vector<std::pair<TensorTable<D, N>, int>> out;
  size_t i = 0;
  while (i < entries.size()) {
    const size_t end = std::min(entries.size(), i + N);
    int64_t total = 0;
    for (size_t j = i; j < end; ++j) total += entries[j].numel;
    TensorTable<D, N> tab{};
    tab.chunk = pick_chunk(total, sms);
    tab.ntensors = static_cast<int>(end - i);
    int64_t blocks = 0;
    for (size_t j = i; j < end; ++j) {
      const int k = static_cast<int>(j - i);
      for (int l = 0; l < D; ++l) tab.ptr[l][k] = entries[j].ptr[l];
      tab.numel[k] = entries[j].numel;
      tab.flag[k] = entries[j].flag;
      tab.chunk_start[k] = static_cast<int>(blocks);
      blocks += (entries[j].numel + tab.chunk - 1) / tab.chunk;
    }
    TORCH_CHECK(blocks < (int64_t(1) << 31), "optimizer step: too many elements in one launch");
    tab.chunk_start[tab.ntensors] = static_cast<int>(blocks);
    out.emplace_back(tab, static_cast<int>(blocks));
    i = end;
  }
  return out;
}

// ===========================================================================
// Argument checks (torch's error types; messages name the argument), the CPU
// kernel's checks with CUDA's device and dtype rules.
// ===========================================================================
using mte::optim::present;
inline bool supported_dtype(at::ScalarType t) { return mte::optim::supported_dtype<true>(t); }

inline DevScalar dev_scalar(const std::optional<at::Tensor>& t) {
  DevScalar s;
  if (present(t)) {
    s.ptr = t->const_data_ptr();
    s.f64 = t->scalar_type() == at::kDouble;
  }
  return s;
}

// Indices of `params` of each dtype, in order of first appearance.
std::vector<std::pair<at::ScalarType, std::vector<size_t>>> group_by_dtype(at::TensorList params) {
  std::vector<std::pair<at::ScalarType, std::vector<size_t>>> groups;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto dt = params[i].scalar_type();
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == dt; });
    if (it == groups.end()) {
      groups.push_back({dt, {}});
      it = groups.end() - 1;
    }
    it->second.push_back(i);
  }
  return groups;
}

#define MTE_DISPATCH_OPTIM_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// The multi_tensor_apply launch of every op: the tensors of each dtype group
// of `tensors` (zero-size ones skipped) packed into tables of up to N, one
// launch per table. fill(i, e) sets entry e's pointers (and flag) for
// tensors[i]; launch(tag, tab, blocks) launches the kernel for the group's
// scalar_t (tag is a null scalar_t*).
template <int D, int N, typename Fill, typename Launch>
void launch_tables(at::TensorList tensors, int sms, const Fill& fill, const Launch& launch) {
  for (const auto& grp : group_by_dtype(tensors)) {
    std::vector<Entry<D>> entries;
    for (size_t i : grp.second) {
      if (tensors[i].numel() == 0) continue;
      Entry<D> e{};
      fill(i, e);
      e.numel = tensors[i].numel();
      entries.push_back(e);
    }
    const auto tables = plan<D, N>(entries, sms);
    MTE_DISPATCH_OPTIM_TYPES(grp.first, "minitorch_ext optim launch", [&] {  // dtypes checked before
      for (const auto& [tab, blocks] : tables) {
        launch(static_cast<scalar_t*>(nullptr), tab, blocks);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
}

// The steps' prologue: every state_steps[i] += 1 (none if found_inf is
// non-zero), kMaxSteps per launch, on `stream` before the update launches.
void increment_steps(at::TensorList state_steps, const DevScalar& found_inf, cudaStream_t stream) {
  const size_t n = state_steps.size();
  for (size_t i0 = 0; i0 < n; i0 += kMaxSteps) {
    StepTable st{};
    st.n = static_cast<int>(std::min<size_t>(kMaxSteps, n - i0));
    for (int k = 0; k < st.n; ++k) {
      st.ptr[k] = state_steps[i0 + k].data_ptr();
      st.f64[k] = state_steps[i0 + k].scalar_type() == at::kDouble;
    }
    increment_steps_kernel<<<(st.n + kThreads - 1) / kThreads, kThreads, 0, stream>>>(st, found_inf);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// ===========================================================================
// Ops
// ===========================================================================
void sgd_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, double lr,
                   double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
                   bool is_first_step, const std::optional<at::Tensor>& lr_tensor,
                   const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                   const std::optional<at::Tensor>& clip_total_norm, double clip_max_norm) {
  const bool has_momentum = momentum != 0.0;
  mte::optim::check_sgd_args<true>(params, grads, momentum_buffers, has_momentum, lr_tensor, grad_scale, found_inf,
                                   clip_total_norm);
  const size_t n = params.size();
  if (n == 0) return;
  const at::Tensor& p0 = params[0];
  c10::cuda::CUDAGuard guard(p0.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int sms = sm_count(p0.get_device());

  SgdArgs a;
  a.lr = lr;
  a.momentum = momentum;
  a.dampening = dampening;
  a.weight_decay = weight_decay;
  a.clip_max_norm = clip_max_norm;
  a.lr_t = dev_scalar(lr_tensor);
  a.scale = dev_scalar(grad_scale);
  a.found_inf = dev_scalar(found_inf);
  a.clip = dev_scalar(clip_total_norm);
  a.has_momentum = has_momentum;
  a.nesterov = nesterov;
  a.maximize = maximize;
  a.first = is_first_step;

  launch_tables<3, 100>(
      params, sms,
      [&](size_t i, Entry<3>& e) {
        e.ptr[0] = params[i].data_ptr();
        e.ptr[1] = grads[i].data_ptr();
        e.ptr[2] = has_momentum ? momentum_buffers[i].data_ptr() : nullptr;
      },
      [&](auto tag, const auto& tab, int blocks) {
        sgd_kernel<std::remove_pointer_t<decltype(tag)>><<<blocks, kThreads, 0, stream>>>(tab, a);
      });
}

void adam_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
                    double lr, double beta1, double beta2, double weight_decay, double eps, bool amsgrad,
                    bool maximize, bool decoupled_weight_decay, const std::optional<at::Tensor>& lr_tensor,
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                    const std::optional<at::Tensor>& clip_total_norm, double clip_max_norm) {
  mte::optim::check_adam_args<true>(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, amsgrad,
                                    lr_tensor, grad_scale, found_inf, clip_total_norm);
  const size_t n = params.size();
  if (n == 0) return;
  const at::Tensor& p0 = params[0];
  c10::cuda::CUDAGuard guard(p0.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int sms = sm_count(p0.get_device());
  const DevScalar inf = dev_scalar(found_inf);

  // 1. Every step += 1 (the update launches below read the new value).
  increment_steps(state_steps, inf, stream);

  // 2. The update, one launch per dtype and table.
  AdamArgs a;
  a.lr = lr;
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.weight_decay = weight_decay;
  a.eps = eps;
  a.clip_max_norm = clip_max_norm;
  a.lr_t = dev_scalar(lr_tensor);
  a.scale = dev_scalar(grad_scale);
  a.found_inf = inf;
  a.clip = dev_scalar(clip_total_norm);
  a.amsgrad = amsgrad;
  a.maximize = maximize;
  a.coupled_wd = weight_decay != 0.0 && !decoupled_weight_decay;
  a.decoupled_wd = weight_decay != 0.0 && decoupled_weight_decay;

  launch_tables<6, 60>(
      params, sms,
      [&](size_t i, Entry<6>& e) {
        e.ptr[0] = params[i].data_ptr();
        e.ptr[1] = grads[i].data_ptr();
        e.ptr[2] = exp_avgs[i].data_ptr();
        e.ptr[3] = exp_avg_sqs[i].data_ptr();
        e.ptr[4] = amsgrad ? max_exp_avg_sqs[i].data_ptr() : nullptr;
        e.ptr[5] = state_steps[i].data_ptr();
        e.flag = state_steps[i].scalar_type() == at::kDouble;
      },
      [&](auto tag, const auto& tab, int blocks) {
        adam_kernel<std::remove_pointer_t<decltype(tag)>><<<blocks, kThreads, 0, stream>>>(tab, a);
      });
}

void rmsprop_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                       at::TensorList grad_avgs, at::TensorList momentum_buffers, at::TensorList state_steps,
                       double lr, double alpha, double eps, double weight_decay, double momentum, bool centered,
                       bool maximize, const std::optional<at::Tensor>& grad_scale,
                       const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& clip_total_norm,
                       double clip_max_norm) {
  const bool has_momentum = momentum != 0.0;
  mte::optim::check_rmsprop_args<true>(params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps,
                                       centered, has_momentum, grad_scale, found_inf, clip_total_norm);
  const size_t n = params.size();
  if (n == 0) return;
  const at::Tensor& p0 = params[0];
  c10::cuda::CUDAGuard guard(p0.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int sms = sm_count(p0.get_device());
  const DevScalar inf = dev_scalar(found_inf);

  // 1. Every step += 1 (RMSprop's update does not read it).
  increment_steps(state_steps, inf, stream);

  // 2. The update, one launch per dtype and table.
  RmspropArgs a;
  a.lr = lr;
  a.alpha = alpha;
  a.eps = eps;
  a.weight_decay = weight_decay;
  a.momentum = momentum;
  a.clip_max_norm = clip_max_norm;
  a.scale = dev_scalar(grad_scale);
  a.found_inf = inf;
  a.clip = dev_scalar(clip_total_norm);
  a.centered = centered;
  a.has_momentum = has_momentum;
  a.maximize = maximize;

  launch_tables<5, 72>(
      params, sms,
      [&](size_t i, Entry<5>& e) {
        e.ptr[0] = params[i].data_ptr();
        e.ptr[1] = grads[i].data_ptr();
        e.ptr[2] = square_avgs[i].data_ptr();
        e.ptr[3] = centered ? grad_avgs[i].data_ptr() : nullptr;
        e.ptr[4] = has_momentum ? momentum_buffers[i].data_ptr() : nullptr;
      },
      [&](auto tag, const auto& tab, int blocks) {
        rmsprop_kernel<std::remove_pointer_t<decltype(tag)>><<<blocks, kThreads, 0, stream>>>(tab, a);
      });
}

void adagrad_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                       at::TensorList state_steps, double lr, double lr_decay, double weight_decay, double eps,
                       bool maximize, const std::optional<at::Tensor>& grad_scale,
                       const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& clip_total_norm,
                       double clip_max_norm) {
  mte::optim::check_adagrad_args<true>(params, grads, state_sums, state_steps, grad_scale, found_inf,
                                       clip_total_norm);
  const size_t n = params.size();
  if (n == 0) return;
  const at::Tensor& p0 = params[0];
  c10::cuda::CUDAGuard guard(p0.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int sms = sm_count(p0.get_device());
  const DevScalar inf = dev_scalar(found_inf);

  // 1. Every step += 1 (the update launches below read the new value).
  increment_steps(state_steps, inf, stream);

  // 2. The update, one launch per dtype and table.
  AdagradArgs a;
  a.lr = lr;
  a.lr_decay = lr_decay;
  a.weight_decay = weight_decay;
  a.eps = eps;
  a.clip_max_norm = clip_max_norm;
  a.scale = dev_scalar(grad_scale);
  a.found_inf = inf;
  a.clip = dev_scalar(clip_total_norm);
  a.maximize = maximize;

  launch_tables<4, 80>(
      params, sms,
      [&](size_t i, Entry<4>& e) {
        e.ptr[0] = params[i].data_ptr();
        e.ptr[1] = grads[i].data_ptr();
        e.ptr[2] = state_sums[i].data_ptr();
        e.ptr[3] = state_steps[i].data_ptr();
        e.flag = state_steps[i].scalar_type() == at::kDouble;
      },
      [&](auto tag, const auto& tab, int blocks) {
        adagrad_kernel<std::remove_pointer_t<decltype(tag)>><<<blocks, kThreads, 0, stream>>>(tab, a);
      });
}

NormKind norm_kind(double norm_type) {
  if (norm_type == 2.0) return kTwo;
  if (norm_type == 1.0) return kOne;
  if (std::isinf(norm_type) && norm_type > 0) return kInf;
  TORCH_CHECK_VALUE(false, "norm_type: expected 2.0, 1.0 or inf, got ", norm_type);
  return kTwo;
}

void check_norm_tensors(at::TensorList tensors) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    TORCH_CHECK(supported_dtype(t.scalar_type()), "tensors[", i,
                "]: expected a float32, float64, float16 or bfloat16 tensor, got ", t.scalar_type());
    TORCH_CHECK(t.is_cuda(), "tensors[", i, "]: expected a CUDA tensor, got one on ", t.device());
    TORCH_CHECK(t.device() == tensors[0].device(), "tensors[", i, "]: expected a tensor on ", tensors[0].device(),
                " (the device of tensors[0]), got one on ", t.device());
    TORCH_CHECK(!t.is_sparse(), "tensors[", i, "]: sparse tensors are not supported");
  }
}

at::Tensor total_norm_cuda(at::TensorList tensors, double norm_type) {
  const NormKind kind = norm_kind(norm_type);
  check_norm_tensors(tensors);
  TORCH_CHECK(!tensors.empty(), "tensors: expected at least one CUDA tensor");
  bool any_double = false;
  for (const auto& t : tensors) any_double |= t.scalar_type() == at::kDouble;
  const auto out_dtype = any_double ? at::kDouble : at::kFloat;
  const at::Tensor& t0 = tensors[0];
  c10::cuda::CUDAGuard guard(t0.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int sms = sm_count(t0.get_device());
  at::Tensor out = at::empty({}, t0.options().dtype(out_dtype));

  // Dense copies only where a tensor is not already dense (never on the usual path).
  std::vector<at::Tensor> dense;
  dense.reserve(tensors.size());
  for (const auto& t : tensors) dense.push_back(t.is_non_overlapping_and_dense() ? t : t.contiguous());

  // Plan every launch first: the partial buffer holds one slot per block.
  struct GroupPlan {
    at::ScalarType dtype;
    std::vector<std::pair<UnaryTable, int>> tables;
  };
  std::vector<GroupPlan> plans;
  int64_t nparts = 0;
  for (const auto& grp : group_by_dtype(dense)) {
    std::vector<Entry<1>> entries;
    for (size_t i : grp.second) {
      if (dense[i].numel() == 0) continue;
      Entry<1> e{};
      e.ptr[0] = dense[i].data_ptr();
      e.numel = dense[i].numel();
      entries.push_back(e);
    }
    GroupPlan gp{grp.first, plan<1, 160>(entries, sms)};
    for (const auto& tb : gp.tables) nparts += tb.second;
    plans.push_back(std::move(gp));
  }
  at::Tensor partial = at::empty({std::max<int64_t>(nparts, 1)}, t0.options().dtype(at::kDouble));
  double* part = partial.mutable_data_ptr<double>();
  int64_t offset = 0;
  for (const auto& gp : plans) {
    MTE_DISPATCH_OPTIM_TYPES(gp.dtype, "total_norm_cuda", [&] {
      for (const auto& [tab, blocks] : gp.tables) {
        norm_partial_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(tab, kind, part, offset);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        offset += blocks;
      }
    });
  }
  if (out_dtype == at::kDouble) {
    norm_final_kernel<double><<<1, kThreads, 0, stream>>>(part, nparts, kind, out.mutable_data_ptr<double>());
  } else {
    norm_final_kernel<float><<<1, kThreads, 0, stream>>>(part, nparts, kind, out.mutable_data_ptr<float>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

void clip_scale_cuda(at::TensorList tensors, const at::Tensor& total_norm, double max_norm) {
  TORCH_CHECK(total_norm.numel() == 1, "total_norm: expected a tensor with one element, got ", total_norm.numel());
  TORCH_CHECK(total_norm.scalar_type() == at::kFloat || total_norm.scalar_type() == at::kDouble,
              "total_norm: expected a float32 or float64 tensor, got ", total_norm.scalar_type());
  check_norm_tensors(tensors);
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(tensors[i].is_non_overlapping_and_dense(), "tensors[", i,
                "]: expected a dense, non-overlapping tensor (for example a contiguous one)");
  }
  if (tensors.empty()) return;
  const at::Tensor& t0 = tensors[0];
  TORCH_CHECK(total_norm.device() == t0.device(), "total_norm: expected a tensor on ", t0.device(),
              " (the device of tensors), got one on ", total_norm.device());
  c10::cuda::CUDAGuard guard(t0.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int sms = sm_count(t0.get_device());
  ClipArgs a;
  a.total_norm.ptr = total_norm.const_data_ptr();
  a.total_norm.f64 = total_norm.scalar_type() == at::kDouble;
  a.max_norm = max_norm;
  launch_tables<1, 160>(
      tensors, sms,
      [&](size_t i, Entry<1>& e) {
        e.ptr[0] = tensors[i].data_ptr();
      },
      [&](auto tag, const auto& tab, int blocks) {
        clip_scale_kernel<std::remove_pointer_t<decltype(tag)>><<<blocks, kThreads, 0, stream>>>(tab, a);
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(minitorch_ext, CUDA, m) {
  m.impl("sgd_step_", &sgd_step_cuda);
  m.impl("adam_step_", &adam_step_cuda);
  m.impl("rmsprop_step_", &rmsprop_step_cuda);
  m.impl("adagrad_step_", &adagrad_step_cuda);
  m.impl("total_norm", &total_norm_cuda);
  m.impl("clip_scale_", &clip_scale_cuda);
}
