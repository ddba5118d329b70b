// Activations and softmax on CUDA: act_fwd, act_bwd, act_, softmax_fwd,
// softmax_bwd (schemas in csrc/ops.cpp, math in common/act_cuda.cuh).
//
// Elementwise. When every operand is contiguous (or, for act_, self is dense
// in some dim order, so its elements fill one range of memory), the tensor is
// a flat array: a grid-stride loop where each thread moves 16 bytes at a time
// (8 halves, 4 floats, 2 doubles) when the pointers are 16-byte aligned, one
// element otherwise. Any other layout takes the strided kernel: the dims are
// merged where all operands allow (as the CPU walk does) and each element's
// offsets are computed from its linear index by div/mod over at most kMaxDims
// merged dims (beyond that, or when an input's innermost stride is so large
// that its reads would not coalesce, e.g. a transposed input: a contiguous
// copy first, ATen's tiled copy). Math in float (double for
// double), one rounding on store. Traffic: each input read once, the output
// written once: memory-bound, at copy speed once the loads are 16 bytes wide.
//
// Softmax over dim, the input viewed as [outer, D, inner] (contiguous).
//   inner == 1: a row group of tx threads (a power of two, 32..1024) owns a
//   row, ty = 256/tx rows share a block when rows are short. Pass 1 the max,
//   pass 2 sum(exp(x - max)), pass 3 the write; sums by warp shuffles and one
//   shared-memory hop across warps. The second and third reads of a row hit
//   L1/L2, so DRAM sees x once and y once.
//   inner > 1: one thread per (outer, column), walking the D rows of its
//   column: neighbouring threads read neighbouring columns, so every load is
//   coalesced without a transpose.
//   Backward: softmax dx = y * (dy - sum(dy*y)); log_softmax dx = dy - exp(y)*sum(dy).
//
// Headers: c10/cuda's stream, guard and error checks rather than
// ATen/cuda/CUDAContext.h (cuBLAS headers not needed here).
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/WrapDimUtils.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/act_cuda.cuh"
#include "common/alloc.h"

namespace {

using mte::Act;

template <typename T>
using acc_type = std::conditional_t<std::is_same_v<T, double>, double, float>;

__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

unsigned grid_for(int64_t work, int threads) {
  // a grid-stride loop: enough blocks to fill the GPU, capped
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(work, threads), 65535)));
}

// ---------------------------------------------------------------------------
// the per-element functors
// ---------------------------------------------------------------------------

template <typename A>
struct FwdOp {
  Act act;
  A slope;
  __device__ __forceinline__ A operator()(A x) const { return mte::dev::act(act, x, slope); }
};

template <typename A>
struct BwdOp {
  Act act;
  A slope;
  bool from_out;
  __device__ __forceinline__ A operator()(A dy, A s) const {
    if (act == Act::ReLU) return s > A(0) ? dy : A(0);  // select, as torch: an inf dy stays finite
    if (act == Act::LeakyReLU) return s > A(0) ? dy : dy * slope;
    return dy * (from_out ? mte::dev::act_grad_from_output(act, s, slope) : mte::dev::act_grad(act, s, slope));
  }
};

template <typename T>
struct ReluInt {
  __device__ __forceinline__ T operator()(T x) const { return x > T(0) ? x : T(0); }
};

template <typename T>
struct alignas(16) Chunk {
  static constexpr int kN = 16 / sizeof(T) > 0 ? 16 / sizeof(T) : 1;
  T v[kN];
};

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// ---------------------------------------------------------------------------
// flat kernels: y[i] = f(x[i]) and dx[i] = f(dy[i], s[i]), A the math type
// ---------------------------------------------------------------------------

template <typename T, typename A, typename F>
__global__ void unary_flat_kernel(const T* __restrict__ x, T* y, int64_t n, F f, bool vec) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (vec) {
    constexpr int kN = Chunk<T>::kN;
    const int64_t nchunks = n / kN;
    for (int64_t c = tid; c < nchunks; c += stride) {
      Chunk<T> ch = reinterpret_cast<const Chunk<T>*>(x)[c];
#pragma unroll
      for (int j = 0; j < kN; ++j) ch.v[j] = static_cast<T>(f(static_cast<A>(ch.v[j])));
      reinterpret_cast<Chunk<T>*>(y)[c] = ch;
    }
    for (int64_t i = nchunks * kN + tid; i < n; i += stride) y[i] = static_cast<T>(f(static_cast<A>(x[i])));
  } else {
    for (int64_t i = tid; i < n; i += stride) y[i] = static_cast<T>(f(static_cast<A>(x[i])));
  }
}

template <typename T, typename A, typename F>
__global__ void binary_flat_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y, int64_t n,
                                   F f, bool vec) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (vec) {
    constexpr int kN = Chunk<T>::kN;
    const int64_t nchunks = n / kN;
    for (int64_t c = tid; c < nchunks; c += stride) {
      const Chunk<T> ca = reinterpret_cast<const Chunk<T>*>(a)[c];
      const Chunk<T> cb = reinterpret_cast<const Chunk<T>*>(b)[c];
      Chunk<T> out;
#pragma unroll
      for (int j = 0; j < kN; ++j) out.v[j] = static_cast<T>(f(static_cast<A>(ca.v[j]), static_cast<A>(cb.v[j])));
      reinterpret_cast<Chunk<T>*>(y)[c] = out;
    }
    for (int64_t i = nchunks * kN + tid; i < n; i += stride)
      y[i] = static_cast<T>(f(static_cast<A>(a[i]), static_cast<A>(b[i])));
  } else {
    for (int64_t i = tid; i < n; i += stride) y[i] = static_cast<T>(f(static_cast<A>(a[i]), static_cast<A>(b[i])));
  }
}

// ---------------------------------------------------------------------------
// strided kernels: offsets from the linear index over the merged dims
// ---------------------------------------------------------------------------

constexpr int kMaxDims = 8;
constexpr int kMaxOps = 3;

struct Strided {
  int ndim = 0;
  int64_t sizes[kMaxDims];             // innermost first
  int64_t strides[kMaxOps][kMaxDims];  // elements
  __device__ __forceinline__ void offsets(int64_t i, int64_t* off, int nops) const {
    for (int k = 0; k < nops; ++k) off[k] = 0;
    for (int d = 0; d < ndim; ++d) {
      const int64_t idx = i % sizes[d];
      i /= sizes[d];
      for (int k = 0; k < nops; ++k) off[k] += idx * strides[k][d];
    }
  }
};

// Merge the dims of `sizes` wherever every operand is contiguous across them;
// false when more than kMaxDims remain. order_by_first: operand 0's memory order.
bool make_strided(at::IntArrayRef sizes, const std::vector<at::IntArrayRef>& strides, bool order_by_first,
                  Strided& out) {
  const int nops = static_cast<int>(strides.size());
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < static_cast<int64_t>(sizes.size()); ++d)
    if (sizes[d] != 1) dims.push_back(d);
  if (order_by_first)
    std::stable_sort(dims.begin(), dims.end(), [&](int64_t a, int64_t b) { return strides[0][a] > strides[0][b]; });
  std::vector<int64_t> sz;
  std::array<std::vector<int64_t>, kMaxOps> st;
  for (auto it = dims.rbegin(); it != dims.rend(); ++it) {
    const int64_t d = *it;
    bool merge = !sz.empty();
    for (int k = 0; merge && k < nops; ++k) merge = strides[k][d] == st[k].back() * sz.back();
    if (merge) {
      sz.back() *= sizes[d];
    } else {
      sz.push_back(sizes[d]);
      for (int k = 0; k < nops; ++k) st[k].push_back(strides[k][d]);
    }
  }
  if (sz.size() > static_cast<size_t>(kMaxDims)) return false;
  out.ndim = static_cast<int>(sz.size());
  for (int d = 0; d < out.ndim; ++d) {
    out.sizes[d] = sz[d];
    for (int k = 0; k < nops; ++k) out.strides[k][d] = st[k][d];
  }
  return true;
}

// Operand k's innermost merged stride is far (its reads would not coalesce).
constexpr int64_t kFarStride = 16;
bool far(const Strided& s, int k) { return s.ndim > 0 && s.strides[k][0] > kFarStride; }

template <typename T, typename A, typename F>
__global__ void unary_strided_kernel(const T* x, T* y, int64_t n, Strided s, F f) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t off[2];
    s.offsets(i, off, 2);  // operand 0: y, operand 1: x
    y[off[0]] = static_cast<T>(f(static_cast<A>(x[off[1]])));
  }
}

template <typename T, typename A, typename F>
__global__ void binary_strided_kernel(const T* a, const T* b, T* y, int64_t n, Strided s, F f) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t off[3];
    s.offsets(i, off, 3);  // y, a, b
    y[off[0]] = static_cast<T>(f(static_cast<A>(a[off[1]]), static_cast<A>(b[off[2]])));
  }
}

constexpr int kThreads = 256;

// y = f(x): y contiguous (a new output) or y == x (in place, x dense or strided)
template <typename T, typename A, typename F>
void launch_unary(const at::Tensor& x, at::Tensor& y, F f, bool in_place) {
  const int64_t n = x.numel();
  if (n == 0) return;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool dense = in_place ? x.is_non_overlapping_and_dense() : x.is_contiguous();
  if (dense) {
    // a dense tensor's elements fill [data_ptr, data_ptr + n) in some order
    const T* xp = x.const_data_ptr<T>();
    T* yp = in_place ? const_cast<T*>(xp) : y.mutable_data_ptr<T>();
    const bool vec = aligned16(xp) && aligned16(yp);
    const int64_t work = vec ? ceil_div(n, Chunk<T>::kN) : n;
    unary_flat_kernel<T, A, F><<<grid_for(work, kThreads), kThreads, 0, stream>>>(xp, yp, n, f, vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  Strided s;
  const bool ok = in_place ? make_strided(x.sizes(), {x.strides(), x.strides()}, true, s)
                           : make_strided(x.sizes(), {y.strides(), x.strides()}, false, s);
  // too many dims left after merging, or reads that would not coalesce (a
  // transposed input: neighbouring threads kFarStride+ elements apart): through
  // a contiguous copy (ATen's copy tiles the transpose)
  if (!ok || (!in_place && far(s, 1))) {
    at::Tensor xc = x.contiguous();
    at::Tensor yc = in_place ? xc : y;
    launch_unary<T, A, F>(xc, yc, f, in_place);
    if (in_place) const_cast<at::Tensor&>(x).copy_(xc);
    return;
  }
  T* yp = in_place ? x.data_ptr<T>() : y.mutable_data_ptr<T>();
  unary_strided_kernel<T, A, F><<<grid_for(n, kThreads), kThreads, 0, stream>>>(x.const_data_ptr<T>(), yp, n, s, f);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename A, typename F>
void launch_binary(const at::Tensor& a, const at::Tensor& b, at::Tensor& y, F f) {
  const int64_t n = y.numel();
  if (n == 0) return;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (a.is_contiguous() && b.is_contiguous()) {
    const T* ap = a.const_data_ptr<T>();
    const T* bp = b.const_data_ptr<T>();
    T* yp = y.mutable_data_ptr<T>();
    const bool vec = aligned16(ap) && aligned16(bp) && aligned16(yp);
    const int64_t work = vec ? ceil_div(n, Chunk<T>::kN) : n;
    binary_flat_kernel<T, A, F><<<grid_for(work, kThreads), kThreads, 0, stream>>>(ap, bp, yp, n, f, vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  Strided s;
  if (!make_strided(y.sizes(), {y.strides(), a.strides(), b.strides()}, false, s) || far(s, 1) || far(s, 2)) {
    launch_binary<T, A, F>(a.contiguous(), b.contiguous(), y, f);
    return;
  }
  binary_strided_kernel<T, A, F><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
      a.const_data_ptr<T>(), b.const_data_ptr<T>(), y.mutable_data_ptr<T>(), n, s, f);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------
// argument checks (the CPU kernel's messages)
// ---------------------------------------------------------------------------

bool is_int_type(at::ScalarType t) { return at::isIntegralType(t, /*includeBool=*/false); }

bool is_float_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

void check_act_input(const at::Tensor& t, const char* name, Act a, const char* op) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, ": expected a CUDA tensor, got one on ", t.device());
  const auto st = t.scalar_type();
  if (is_int_type(st) && (a == Act::ReLU || a == Act::None)) return;
  TORCH_CHECK_NOT_IMPLEMENTED(is_float_type(st), op, ": ", name, ": \"", op, "\" not implemented for '",
                              c10::toString(st), "' (expected float32, float64, bfloat16 or float16",
                              a == Act::ReLU ? ", or an integer type for relu" : "", ")");
}

void check_same(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name, const char* op) {
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, ": expected shape ", ref.sizes(), " (the shape of ",
              ref_name, "), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, ": expected dtype ", ref.scalar_type(),
              " (the dtype of ", ref_name, "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, ": expected a tensor on ", ref.device(),
              " (the device of ", ref_name, "), got one on ", t.device());
}

// ---------------------------------------------------------------------------
// elementwise ops
// ---------------------------------------------------------------------------

template <typename T>
void act_dispatch(const at::Tensor& x, at::Tensor& y, Act a, double slope, bool in_place) {
  using A = acc_type<T>;
  launch_unary<T, A>(x, y, FwdOp<A>{a, static_cast<A>(slope)}, in_place);
}

at::Tensor act_fwd_cuda(const at::Tensor& input, c10::string_view act, double slope) {
  const Act a = mte::parse_act(act);
  check_act_input(input, "input", a, "act_fwd");
  c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = mte::new_output(input.sizes(), input.options());
  if (input.numel() == 0) return out;
  if (is_int_type(input.scalar_type())) {
    AT_DISPATCH_INTEGRAL_TYPES(input.scalar_type(), "act_fwd_int_cuda",
                               [&] { launch_unary<scalar_t, scalar_t>(input, out, ReluInt<scalar_t>{}, false); });
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "act_fwd_cuda",
                                  [&] { act_dispatch<scalar_t>(input, out, a, slope, false); });
  return out;
}

void act_inplace_cuda(const at::Tensor& self, c10::string_view act, double slope) {
  const Act a = mte::parse_act(act);
  check_act_input(self, "self", a, "act_");
  TORCH_CHECK(at::has_internal_overlap(self) != at::MemOverlap::Yes,
              "act_: self: unsupported operation: more than one element of the written-to tensor refers to a "
              "single memory location. Please clone() the tensor before performing the operation.");
  if (self.numel() == 0) return;
  c10::cuda::CUDAGuard guard(self.device());
  at::Tensor t = self;
  if (is_int_type(self.scalar_type())) {
    AT_DISPATCH_INTEGRAL_TYPES(self.scalar_type(), "act_int_cuda_",
                               [&] { launch_unary<scalar_t, scalar_t>(t, t, ReluInt<scalar_t>{}, true); });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, self.scalar_type(), "act_cuda_",
                                  [&] { act_dispatch<scalar_t>(t, t, a, slope, true); });
}

at::Tensor act_bwd_cuda(const at::Tensor& grad_output, const at::Tensor& saved, c10::string_view act, double slope,
                        bool saved_is_output) {
  const Act a = mte::parse_act(act);
  TORCH_CHECK(saved.is_cuda(), "act_bwd: saved: expected a CUDA tensor, got one on ", saved.device());
  TORCH_CHECK(is_float_type(saved.scalar_type()), "act_bwd: saved: expected a floating point tensor (float32, "
              "float64, bfloat16 or float16), got ", saved.scalar_type());
  check_same(grad_output, "grad_output", saved, "saved", "act_bwd");
  TORCH_CHECK(!saved_is_output || mte::act_grad_from_output_ok(a, slope), "act_bwd: saved_is_output: the "
              "derivative of '", std::string(act), "'", a == Act::LeakyReLU ? " with a negative slope" : "",
              " cannot be computed from its output; save the forward input instead");
  c10::cuda::CUDAGuard guard(saved.device());
  at::Tensor dx = mte::new_output(saved.sizes(), saved.options());
  if (saved.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, saved.scalar_type(), "act_bwd_cuda", [&] {
    using A = acc_type<scalar_t>;
    launch_binary<scalar_t, A>(grad_output, saved, dx, BwdOp<A>{a, static_cast<A>(slope), saved_is_output});
  });
  return dx;
}

// ---------------------------------------------------------------------------
// softmax
// ---------------------------------------------------------------------------

// Reduce v over the tx threads of a row group (blockDim.x == tx); every thread
// gets the result. kMax: max, else sum. Every thread of the block must call it.
template <bool kMax, typename A>
__device__ __forceinline__ A group_reduce(A v, A* scratch) {
  const int tx = static_cast<int>(blockDim.x);
  for (int off = (tx < 32 ? tx : 32) / 2; off > 0; off /= 2) {
    const A o = __shfl_xor_sync(0xffffffffu, v, off);
    v = kMax ? (o > v || o != o ? o : v) : v + o;  // max keeps a NaN
  }
  if (tx > 32) {
    const int warps = tx / 32;
    const int first = static_cast<int>(threadIdx.y) * warps;
    __syncthreads();  // the previous reduction's readers are done
    if (threadIdx.x % 32 == 0) scratch[first + threadIdx.x / 32] = v;
    __syncthreads();
    v = scratch[first];
    for (int w = 1; w < warps; ++w) {
      const A o = scratch[first + w];
      v = kMax ? (o > v || o != o ? o : v) : v + o;
    }
  }
  return v;
}

constexpr int kRowBlock = 256;  // threads a block when rows share it; scratch: 32 warps max

template <typename T>
__global__ void softmax_lastdim_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t M, int64_t D, bool log) {
  using A = acc_type<T>;
  __shared__ A scratch[32];
  for (int64_t r0 = int64_t(blockIdx.x) * blockDim.y; r0 < M; r0 += int64_t(gridDim.x) * blockDim.y) {
    const int64_t row = r0 + threadIdx.y;
    const bool active = row < M;
    const int64_t n = active ? D : 0;
    const T* xr = x + (active ? row : 0) * D;
    A m = -INFINITY;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const A v = static_cast<A>(xr[i]);
      m = (v > m || v != v) ? v : m;
    }
    m = group_reduce<true>(m, scratch);
    A s = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += mte::dev::exp_(static_cast<A>(xr[i]) - m);
    s = group_reduce<false>(s, scratch);
    const A ls = active ? log_(s) : A(0), inv = active ? A(1) / s : A(0);
    T* yr = y + (active ? row : 0) * D;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const A d = static_cast<A>(xr[i]) - m;
      yr[i] = static_cast<T>(log ? d - ls : mte::dev::exp_(d) * inv);
    }
  }
}

template <typename T>
__global__ void softmax_bwd_lastdim_kernel(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx,
                                           int64_t M, int64_t D, bool log) {
  using A = acc_type<T>;
  __shared__ A scratch[32];
  for (int64_t r0 = int64_t(blockIdx.x) * blockDim.y; r0 < M; r0 += int64_t(gridDim.x) * blockDim.y) {
    const int64_t row = r0 + threadIdx.y;
    const bool active = row < M;
    const int64_t n = active ? D : 0;
    const int64_t off = (active ? row : 0) * D;
    A s = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
      s += log ? static_cast<A>(dy[off + i]) : static_cast<A>(dy[off + i]) * static_cast<A>(y[off + i]);
    s = group_reduce<false>(s, scratch);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const A g = static_cast<A>(dy[off + i]), v = static_cast<A>(y[off + i]);
      dx[off + i] = static_cast<T>(log ? g - mte::dev::exp_(v) * s : v * (g - s));
    }
  }
}

// One thread per (outer, column) of [outer, D, inner].
template <typename T>
__global__ void softmax_inner_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t outer, int64_t D,
                                     int64_t inner, bool log) {
  using A = acc_type<T>;
  const int64_t total = outer * inner;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = t / inner, c = t % inner;
    const T* xc = x + o * D * inner + c;
    T* yc = y + o * D * inner + c;
    A m = -INFINITY;
    for (int64_t d = 0; d < D; ++d) {
      const A v = static_cast<A>(xc[d * inner]);
      m = (v > m || v != v) ? v : m;
    }
    A s = 0;
    for (int64_t d = 0; d < D; ++d) s += mte::dev::exp_(static_cast<A>(xc[d * inner]) - m);
    const A ls = log_(s), inv = A(1) / s;
    for (int64_t d = 0; d < D; ++d) {
      const A v = static_cast<A>(xc[d * inner]) - m;
      yc[d * inner] = static_cast<T>(log ? v - ls : mte::dev::exp_(v) * inv);
    }
  }
}

template <typename T>
__global__ void softmax_bwd_inner_kernel(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx,
                                         int64_t outer, int64_t D, int64_t inner, bool log) {
  using A = acc_type<T>;
  const int64_t total = outer * inner;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t base = (t / inner) * D * inner + t % inner;
    A s = 0;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t i = base + d * inner;
      s += log ? static_cast<A>(dy[i]) : static_cast<A>(dy[i]) * static_cast<A>(y[i]);
    }
    for (int64_t d = 0; d < D; ++d) {
      const int64_t i = base + d * inner;
      const A g = static_cast<A>(dy[i]), v = static_cast<A>(y[i]);
      dx[i] = static_cast<T>(log ? g - mte::dev::exp_(v) * s : v * (g - s));
    }
  }
}

struct Dims {
  int64_t outer, D, inner;
};

Dims softmax_dims(const at::Tensor& t, int64_t dim) {
  Dims d{1, 1, 1};
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i < dim) d.outer *= t.size(i);
    else if (i == dim) d.D = t.size(i);
    else d.inner *= t.size(i);
  }
  return d;
}

// (tx, ty) of the last-dim kernels: about 4 elements a thread, 32..1024 threads a row
dim3 row_block(int64_t D) {
  int tx = 32;
  while (tx < 1024 && int64_t(tx) * 4 < D) tx *= 2;
  return dim3(tx, std::max(1, kRowBlock / tx));
}

void check_softmax_input(const at::Tensor& t, const char* name, const char* op) {
  const auto st = t.scalar_type();
  TORCH_CHECK_NOT_IMPLEMENTED(is_float_type(st), op, ": ", name, ": \"", op, "\" not implemented for '",
                              c10::toString(st), "' (expected float32, float64, bfloat16 or float16)");
  TORCH_CHECK(t.is_cuda(), op, ": ", name, ": expected a CUDA tensor, got one on ", t.device());
}

at::Tensor softmax_fwd_cuda(const at::Tensor& input, int64_t dim, bool log) {
  check_softmax_input(input, "input", "softmax_fwd");
  dim = at::maybe_wrap_dim(dim, input.dim());
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  at::Tensor out = mte::new_output(x.sizes(), x.options());
  if (x.numel() == 0) return out;
  const Dims d = softmax_dims(x, dim);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "softmax_fwd_cuda", [&] {
    if (d.inner == 1) {
      const dim3 blk = row_block(d.D);
      softmax_lastdim_kernel<scalar_t><<<grid_for(d.outer, blk.y), blk, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), d.outer, d.D, log);
    } else {
      softmax_inner_kernel<scalar_t><<<grid_for(d.outer * d.inner, kThreads), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), d.outer, d.D, d.inner, log);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor softmax_bwd_cuda(const at::Tensor& grad_output, const at::Tensor& output, int64_t dim, bool log) {
  check_softmax_input(output, "output", "softmax_bwd");
  check_same(grad_output, "grad_output", output, "output", "softmax_bwd");
  dim = at::maybe_wrap_dim(dim, output.dim());
  c10::cuda::CUDAGuard guard(output.device());
  const at::Tensor y = output.contiguous();
  const at::Tensor dy = grad_output.contiguous();
  at::Tensor dx = mte::new_output(y.sizes(), y.options());
  if (y.numel() == 0) return dx;
  const Dims d = softmax_dims(y, dim);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "softmax_bwd_cuda", [&] {
    if (d.inner == 1) {
      const dim3 blk = row_block(d.D);
      softmax_bwd_lastdim_kernel<scalar_t><<<grid_for(d.outer, blk.y), blk, 0, stream>>>(
          dy.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), d.outer,
          d.D, log);
    } else {
      softmax_bwd_inner_kernel<scalar_t><<<grid_for(d.outer * d.inner, kThreads), kThreads, 0, stream>>>(
          dy.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), d.outer,
          d.D, d.inner, log);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(minitorch_ext, CUDA, m) {
  m.impl("act_fwd", &act_fwd_cuda);
  m.impl("act_bwd", &act_bwd_cuda);
  m.impl("act_", &act_inplace_cuda);
  m.impl("softmax_fwd", &softmax_fwd_cuda);
  m.impl("softmax_bwd", &softmax_bwd_cuda);
}
