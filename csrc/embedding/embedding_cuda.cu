// Embedding on CUDA: embedding_fwd, embedding_bwd, embedding_renorm_ (schemas in
// csrc/ops.cpp; the CPU twin: csrc/embedding/embedding_cpu.cpp).
//
// Forward: one warp per index, its lanes copying the row in 16-byte vectors when the
//   row is aligned (D a multiple of the vector), else element by element. Traffic: read
//   n rows, write n rows. An index out of range is a device-side assert, as torch's CUDA
//   index_select (no host sync on the hot path).
// Backward, deterministic and free of atomics:
//   1. the indices (as int64) sorted by cub::DeviceRadixSort::SortPairs with their
//      positions as values: radix sort is stable, so each row's positions stay in
//      increasing order; only the bits below num_weights are sorted;
//   2. segment bounds: start[r], end[r] (zeroed first) set by the first and last
//      position of r's run in the sorted keys;
//   3. one thread per (row, column): it walks its row's segment in order, summing the
//      grad_output column in float (double), and writes the element once; empty rows
//      and padding_idx write zeros. Coalesced along the columns.
//   Every element has one writer and one summation order: bitwise repeatable.
//   Traffic: read grad_output once, write grad_weight once, sort n keys.
// Renorm: the same sort; one block per distinct row (the first position of its run):
//   a block reduction (double) of the norm, then the row scaled in place when the norm
//   exceeds max_norm (distinct rows: no write conflicts).
// Compile-checked with nvcc 13.0 for sm_90 (scripts/cuda_compile_check.sh, ~4 min with cub):
// our kernels 24-40 registers, no stack frame, no spills; not yet run on a GPU
// (tests/test_embedding_cuda.py).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cub/cub.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <cstdint>

#include "common/dtype_traits_cuda.cuh"

namespace mte {
std::atomic<bool>& poison_flag();  // bindings.cpp
}

namespace {

using mte::cuda_traits::Acc;

at::Tensor poisoned_empty(at::IntArrayRef sizes, const at::TensorOptions& o) {
  at::Tensor t = at::empty(sizes, o);
  if (mte::poison_flag().load(std::memory_order_relaxed) && t.numel() > 0) t.fill_(NAN);
  return t;
}

void check_indices(const at::Tensor& indices) {
  const auto it = indices.scalar_type();
  TORCH_CHECK(it == at::kLong || it == at::kInt,
              "Expected tensor for argument #1 'indices' to have one of the following scalar types: Long, Int; "
              "but got ", indices.toString(), " instead (while checking arguments for embedding)");
}

void check_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2, "'weight' must be 2-D");
  const auto st = weight.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf,
              "weight: expected a floating point tensor (float32, float64, bfloat16 or float16), got ", st);
}

// ---- forward ---------------------------------------------------------------------------

template <typename T, typename I>
__global__ void gather_kernel(const T* __restrict__ w, const I* __restrict__ idx, T* __restrict__ y, int64_t n,
                              int64_t V, int64_t D, int64_t ws, bool vec) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.y) + threadIdx.y;
  if (i >= n) return;
  const int64_t k = static_cast<int64_t>(idx[i]);
  CUDA_KERNEL_ASSERT(k >= 0 && k < V && "index out of range in self");
  const T* src = w + k * ws;
  T* dst = y + i * D;
  if (vec) {  // 16-byte vectors: D * sizeof(T) a multiple of 16, rows aligned
    const int64_t nv = D * static_cast<int64_t>(sizeof(T)) / 16;
    const int4* s4 = reinterpret_cast<const int4*>(src);
    int4* d4 = reinterpret_cast<int4*>(dst);
    for (int64_t j = threadIdx.x; j < nv; j += 32) d4[j] = s4[j];
  } else {
    for (int64_t j = threadIdx.x; j < D; j += 32) dst[j] = src[j];
  }
}

at::Tensor embedding_fwd_cuda(const at::Tensor& weight, const at::Tensor& indices, int64_t padding_idx,
                              bool scale_grad_by_freq) {
  check_indices(indices);
  check_weight(weight);
  TORCH_CHECK(weight.device() == indices.device(), "indices: expected a tensor on ", weight.device(),
              " (the device of weight), got one on ", indices.device());
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor w = weight.stride(1) == 1 ? weight : weight.contiguous();
  const at::Tensor idx = indices.contiguous();
  const int64_t V = w.size(0), D = w.size(1), n = idx.numel();
  std::vector<int64_t> sizes(indices.sizes().begin(), indices.sizes().end());
  sizes.push_back(D);
  at::Tensor out = poisoned_empty(sizes, w.options());
  if (n == 0 || D == 0) return out;
  const dim3 block(32, 8);
  const int64_t blocks = (n + 7) / 8;
  TORCH_CHECK(blocks < (int64_t{1} << 31), "indices: too many indices for one launch");
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "embedding_fwd_cuda", [&] {
    const bool vec = (D * static_cast<int64_t>(sizeof(scalar_t))) % 16 == 0 &&
                     (w.stride(0) * static_cast<int64_t>(sizeof(scalar_t))) % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(w.const_data_ptr()) % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(out.const_data_ptr()) % 16 == 0;
    AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "embedding_fwd_cuda", [&] {
      gather_kernel<scalar_t, index_t><<<static_cast<unsigned>(blocks), block, 0, stream>>>(
          w.const_data_ptr<scalar_t>(), idx.const_data_ptr<index_t>(), out.mutable_data_ptr<scalar_t>(), n, V, D,
          w.stride(0), vec);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ---- sorting the indices ----------------------------------------------------------------

__global__ void iota_kernel(int64_t* __restrict__ p, int64_t n) {
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < n;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x)
    p[q] = q;
}

struct Sorted {
  at::Tensor keys, pos;  // int64 [n]: sorted indices, their positions (stable)
};

Sorted sort_indices(const at::Tensor& indices, int64_t V) {
  const at::Tensor k = indices.reshape({-1}).to(at::kLong).contiguous();
  const int64_t n = k.numel();
  TORCH_CHECK(n < (int64_t{1} << 31), "indices: more than 2^31 indices");
  auto lopts = k.options();
  at::Tensor pos_in = at::empty({n}, lopts);
  at::Tensor keys = at::empty({n}, lopts), pos = at::empty({n}, lopts);
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (n == 0) return {keys, pos};
  iota_kernel<<<static_cast<int>(std::min<int64_t>((n + 255) / 256, 65536)), 256, 0, stream>>>(
      pos_in.mutable_data_ptr<int64_t>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  int end_bit = 1;
  while (end_bit < 63 && (int64_t{1} << end_bit) <= V) ++end_bit;
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, k.const_data_ptr<int64_t>(), keys.mutable_data_ptr<int64_t>(),
                                  pos_in.const_data_ptr<int64_t>(), pos.mutable_data_ptr<int64_t>(),
                                  static_cast<int>(n), 0, end_bit, stream);
  at::Tensor tmp = at::empty({static_cast<int64_t>(bytes) + 8}, lopts.dtype(at::kByte));
  cub::DeviceRadixSort::SortPairs(tmp.mutable_data_ptr(), bytes, k.const_data_ptr<int64_t>(),
                                  keys.mutable_data_ptr<int64_t>(), pos_in.const_data_ptr<int64_t>(),
                                  pos.mutable_data_ptr<int64_t>(), static_cast<int>(n), 0, end_bit, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {keys, pos};
}

// start[r] / end[r] of row r's run in the sorted keys (both 0 for an absent row)
__global__ void bounds_kernel(const int64_t* __restrict__ keys, int64_t n, int64_t V, int64_t* __restrict__ start,
                              int64_t* __restrict__ end) {
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < n;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t k = keys[q];
    CUDA_KERNEL_ASSERT(k >= 0 && k < V && "index out of range in self");
    if (q == 0 || keys[q - 1] != k) start[k] = q;
    if (q == n - 1 || keys[q + 1] != k) end[k] = q + 1;
  }
}

// ---- backward ----------------------------------------------------------------------------

template <typename T>
__global__ void segment_sum_kernel(const T* __restrict__ g, const int64_t* __restrict__ pos,
                                   const int64_t* __restrict__ start, const int64_t* __restrict__ end,
                                   T* __restrict__ gw, int64_t V, int64_t D, int64_t padding_idx, bool sgbf) {
  using Tr = Acc<T>;
  using A = typename Tr::A;
  const int64_t r = blockIdx.y;
  const int64_t d = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= V || d >= D) return;
  const int64_t b = start[r], e = r == padding_idx ? start[r] : end[r];
  const A sc = sgbf && e > b ? A(1) / static_cast<A>(e - b) : A(1);
  A acc = 0;
  for (int64_t q = b; q < e; ++q) acc += Tr::load(g[pos[q] * D + d]) * sc;
  gw[r * D + d] = Tr::store(acc);
}

at::Tensor embedding_bwd_cuda(const at::Tensor& grad_output, const at::Tensor& indices, int64_t num_weights,
                              int64_t padding_idx, bool scale_grad_by_freq) {
  check_indices(indices);
  TORCH_CHECK(num_weights >= 0, "num_weights: expected >= 0, got ", num_weights);
  TORCH_CHECK(grad_output.dim() == indices.dim() + 1, "grad_output: expected ", indices.dim() + 1,
              " dims (indices.shape + [embedding_dim]), got ", grad_output.sizes());
  for (int64_t d = 0; d < indices.dim(); ++d)
    TORCH_CHECK(grad_output.size(d) == indices.size(d), "grad_output: expected shape ", indices.sizes(),
                " + [embedding_dim], got ", grad_output.sizes());
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const int64_t D = grad_output.size(-1), V = num_weights;
  const at::Tensor g = grad_output.contiguous();
  at::Tensor gw = poisoned_empty({V, D}, g.options());
  if (V == 0 || D == 0) return gw;
  TORCH_CHECK(V < 65536 * int64_t{32768}, "num_weights: too many rows");
  const Sorted s = sort_indices(indices, V);
  const int64_t n = s.keys.numel();
  at::Tensor start = at::zeros({V}, s.keys.options()), end = at::zeros({V}, s.keys.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (n > 0) {
    const int blocks = static_cast<int>(std::min<int64_t>((n + 255) / 256, 65536));
    bounds_kernel<<<blocks, 256, 0, stream>>>(s.keys.const_data_ptr<int64_t>(), n, V,
                                              start.mutable_data_ptr<int64_t>(), end.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int threads = D >= 128 ? 128 : 32;
  // rows on grid.y (at most 65535 per launch): launch in row chunks
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g.scalar_type(), "embedding_bwd_cuda", [&] {
    for (int64_t r0 = 0; r0 < V; r0 += 65535) {
      const int64_t rows = std::min<int64_t>(65535, V - r0);
      const dim3 grid(static_cast<unsigned>((D + threads - 1) / threads), static_cast<unsigned>(rows));
      segment_sum_kernel<scalar_t><<<grid, threads, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), s.pos.const_data_ptr<int64_t>(), start.const_data_ptr<int64_t>() + r0,
          end.const_data_ptr<int64_t>() + r0, gw.mutable_data_ptr<scalar_t>() + r0 * D, rows, D,
          padding_idx - r0, scale_grad_by_freq);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return gw;
}

// ---- renorm ------------------------------------------------------------------------------

template <typename T>
__global__ void renorm_kernel(T* w, const int64_t* __restrict__ keys, int64_t n, int64_t V, int64_t ws0,
                              int64_t ws1, int64_t D, double max_norm, double norm_type) {
  using Tr = Acc<T>;
  using A = typename Tr::A;
  const int64_t q = blockIdx.x;
  if (q >= n || (q > 0 && keys[q - 1] == keys[q])) return;  // the first of each run owns the row
  const int64_t k = keys[q];
  CUDA_KERNEL_ASSERT(k >= 0 && k < V && "index out of range in self");
  T* row = w + k * ws0;
  double part = 0;
  const bool inf = isinf(norm_type);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const double v = fabs(static_cast<double>(Tr::load(row[d * ws1])));
    if (inf) part = fmax(part, v);
    else if (norm_type == 0) part += v != 0;
    else if (norm_type == 1) part += v;
    else if (norm_type == 2) part += v * v;
    else part += pow(v, norm_type);
  }
  __shared__ double red[32];
  for (int o = 16; o > 0; o >>= 1) {
    const double other = __shfl_down_sync(0xffffffffu, part, o);
    part = inf ? fmax(part, other) : part + other;
  }
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = part;
  __syncthreads();
  if (threadIdx.x < 32) {
    const int nw = blockDim.x >> 5;
    part = threadIdx.x < nw ? red[threadIdx.x] : 0.0;
    for (int o = 16; o > 0; o >>= 1) {
      const double other = __shfl_down_sync(0xffffffffu, part, o);
      part = inf ? fmax(part, other) : part + other;
    }
    if (threadIdx.x == 0) red[0] = part;
  }
  __syncthreads();
  double norm = red[0];
  if (!inf && norm_type != 0 && norm_type != 1) norm = norm_type == 2 ? sqrt(norm) : pow(norm, 1.0 / norm_type);
  if (norm > max_norm) {
    const A scale = static_cast<A>(max_norm / (norm + 1e-7));
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) row[d * ws1] = Tr::store(Tr::load(row[d * ws1]) * scale);
  }
}

void embedding_renorm_cuda_(at::Tensor& weight, const at::Tensor& indices, double max_norm, double norm_type) {
  check_indices(indices);
  check_weight(weight);
  const c10::cuda::CUDAGuard guard(weight.device());
  const int64_t V = weight.size(0), D = weight.size(1);
  const Sorted s = sort_indices(indices, V);
  const int64_t n = s.keys.numel();
  if (n == 0 || D == 0) return;
  TORCH_CHECK(n < (int64_t{1} << 31), "indices: more than 2^31 indices");
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "embedding_renorm_cuda", [&] {
    renorm_kernel<scalar_t><<<static_cast<unsigned>(n), 128, 0, stream>>>(
        weight.mutable_data_ptr<scalar_t>(), s.keys.const_data_ptr<int64_t>(), n, V, weight.stride(0),
        weight.stride(1), D, max_norm, norm_type);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(minitorch_ext, CUDA, m) {
  m.impl("embedding_fwd", &embedding_fwd_cuda);
  m.impl("embedding_bwd", &embedding_bwd_cuda);
  m.impl("embedding_renorm_", &embedding_renorm_cuda_);
}
