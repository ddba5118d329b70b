// LayerNorm and RMSNorm on CUDA: torch.ops.minitorch_ext.{layer,rms}_norm_{fwd,bwd}.
//
// The input is viewed as M rows of N features (input.contiguous()); mean and
// rstd are per row, float32 (float64 for float64 input), and every sum is
// accumulated in that type, rounded to the input dtype once at the end.
//
// Shapes. A "row group" of tx threads (a power of two, about 8 elements per
// thread, 1..512) owns one row at a time; a block holds ty = 256/tx row
// groups when rows are short (so one warp may serve 32/tx rows) and a single
// row group of up to 512 threads when they are long. A row is walked in
// 16-byte chunks (8 halves, 4 floats, 2 doubles) when it is 16-byte aligned,
// element by element otherwise; thread x of a group always owns chunks
// x, x+tx, x+2tx, ... of its row, in every pass and on every row.
//
// Forward, norm_fwd_kernel<T, kRMS> (grid: as many blocks as are resident on
// the GPU at once, capped at the number of row groups; blocks stride over the
// rows in a fixed order). Pass 1 reads the row from global memory (vector
// loads) into shared memory and sums x (LayerNorm) or x^2 (RMSNorm); pass 2
// (LayerNorm only) sums (x - mean)^2 from the on-chip copy: the two-pass
// variance, no E[x^2] - mean^2 cancellation; the last pass writes
// y = (x - mean) * rstd * w + b. Sums: shuffles within a warp, then one
// shared-memory hop across the warps of a row group.
// Traffic: x read once, y written once, 8 bytes of statistics per row (the
// weight and bias are re-read per row but stay in L1/L2). That is the
// memory-bound minimum, 2*M*N*sizeof(T) bytes.
//
// Backward, norm_bwd_kernel<T, kRMS> (same shapes and grid). Per row, with
// xhat = (x - mean) * rstd and g = dy * w: pass 1 reads x and dy (keeping
// them in shared memory) and sums g and g*xhat; pass 2 writes
//     dx = rstd * (g - mean(g) - xhat * mean(g*xhat))    (no mean(g) for RMSNorm)
// and adds dy*xhat and dy into the thread's own slots of the dw / db
// accumulators (shared memory, one [N] array per row group). Every slot has
// exactly one owner thread and a block walks a fixed set of rows, so no
// atomics are needed and the result does not depend on timing: at the end a
// block folds its row groups, in order, into its own row of a [blocks, N]
// float32 (float64) partial buffer, and column_sum_kernel (blocks of 32
// columns x 16 threads, each thread striding over the partial rows, then a
// fixed 16-way sum) reduces that buffer column by column and casts to the
// weight dtype. Bitwise reproducible from run to run on a given GPU.
// Traffic: x and dy read once, dx written once, plus blocks*N partials
// (blocks = 1-8 per SM, small next to M).
//
// What makes it fast: each element crosses HBM once per direction (the row
// is kept on chip between passes), 16-byte vector accesses, a persistent grid
// so dw/db partials cost blocks*N and not M*N, and an accumulator layout
// [slot j][chunk c] that keeps a warp's shared-memory accesses on 32 distinct
// banks (for rows of a warp or more). When a row (or the accumulators) would not leave room for two blocks
// per SM, the kernel re-reads the row from global memory (L2) instead, or
// accumulates directly in its partial row: the same code, a runtime switch.
// Build size: one kernel per direction with a bool for LayerNorm/RMSNorm,
// times 4 dtypes, plus 4 column sums (20 instantiations).
//
// Headers: c10/cuda's stream, guard and error checks rather than
// ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE headers this file
// does not need (and that a bare CUDA toolkit may not ship).
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <tuple>
#include <type_traits>

#include "common/alloc.h"
#include "common/checks.h"

namespace {

// Accumulation (and statistics) type: double for double, float otherwise.
template <typename T>
using acc_type = std::conditional_t<std::is_same_v<T, double>, double, float>;

constexpr int kElemsPerThread = 8;    // target row elements per thread
constexpr int kBlockThreads = 256;    // block size when several rows share a block
// Threads on one row, at most. Kernels are built for two such blocks per SM
// (__launch_bounds__ caps them at 64 registers), so one block's barrier
// waits overlap the other's memory traffic.
constexpr int kMaxRowThreads = 512;
constexpr int kSumValues = 2;         // the most values row_sum reduces at once
// Cross-warp scratch for row_sum: one slot per warp of the block and value.
constexpr size_t kScratchBytes = (kMaxRowThreads / 32) * kSumValues * sizeof(double);

// 16 bytes of T: the unit of a vector load or store.
template <typename T>
struct alignas(16) Chunk {
  static constexpr int kN = 16 / sizeof(T);
  T v[kN];
};

// A row is walked in chunks: chunk c is elements [c*width, (c+1)*width), with
// width = Chunk<T>::kN when `vec` (the row is 16-byte aligned), else 1, in
// which case only v[0] is meaningful.
template <typename T>
__device__ __forceinline__ Chunk<T> load_chunk(const T* row, int64_t c, bool vec) {
  Chunk<T> ch;
  if (vec) {
    ch = reinterpret_cast<const Chunk<T>*>(row)[c];
  } else {
    ch.v[0] = row[c];
  }
  return ch;
}

template <typename T>
__device__ __forceinline__ void store_chunk(T* row, int64_t c, bool vec, const Chunk<T>& ch) {
  if (vec) {
    reinterpret_cast<Chunk<T>*>(row)[c] = ch;
  } else {
    row[c] = ch.v[0];
  }
}

__device__ __forceinline__ float rsqrt_acc(float v) { return rsqrtf(v); }
__device__ __forceinline__ double rsqrt_acc(double v) { return rsqrt(v); }

// Sums K values over the blockDim.x threads of a row group; every thread of
// the group gets the totals. Every thread of the block must call it (it holds
// __syncthreads when a row spans several warps). The xor butterfly gives all
// lanes bitwise-identical sums, and the cross-warp step adds the warps in a
// fixed order, so the result is deterministic.
template <int K, typename A>
__device__ __forceinline__ void row_sum(A (&v)[K], A* scratch) {
  static_assert(K <= kSumValues, "row_sum: enlarge kScratchBytes");
  const int tx = static_cast<int>(blockDim.x);
  for (int off = (tx < 32 ? tx : 32) / 2; off > 0; off /= 2) {
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] += __shfl_xor_sync(0xffffffffu, v[k], off);
  }
  if (tx > 32) {  // the same for the whole block
    const int warps = tx / 32;
    const int first = static_cast<int>(threadIdx.y) * warps;  // this row group's first warp
    const int warp = first + static_cast<int>(threadIdx.x) / 32;
    __syncthreads();  // the previous call's readers are done with scratch
    if (threadIdx.x % 32 == 0) {
#pragma unroll
      for (int k = 0; k < K; ++k) scratch[warp * K + k] = v[k];
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < K; ++k) {
      A total = 0;
      for (int w = 0; w < warps; ++w) total += scratch[(first + w) * K + k];
      v[k] = total;
    }
  }
}

// ---------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------

// y = (x - mean) * rstd * w + b (LayerNorm), y = x * rstd * w (RMSNorm: b and
// mean_out are null). w and b may be null (no affine). Dynamic shared memory:
// kScratchBytes, then blockDim.y rows of N elements when cache_row.
template <typename T, bool kRMS>
__global__ void __launch_bounds__(kMaxRowThreads, 2)
    norm_fwd_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y,
                    acc_type<T>* __restrict__ mean_out, acc_type<T>* __restrict__ rstd_out, int64_t M, int64_t N,
                    acc_type<T> eps, bool cache_row, bool vec) {
  using A = acc_type<T>;
  constexpr int kN = Chunk<T>::kN;
  extern __shared__ __align__(16) unsigned char smem[];
  A* scratch = reinterpret_cast<A*>(smem);
  T* cache = reinterpret_cast<T*>(smem + kScratchBytes) + threadIdx.y * N;

  const int width = vec ? kN : 1;
  const int64_t nchunks = N / width;
  const A inv_n = A(1) / static_cast<A>(N);

  // The loop bound is the same for every thread of the block (row_sum may sync);
  // a row group past the last row idles through the passes.
  for (int64_t r0 = int64_t(blockIdx.x) * blockDim.y; r0 < M; r0 += int64_t(gridDim.x) * blockDim.y) {
    const int64_t row = r0 + threadIdx.y;
    const bool active = row < M;
    const int64_t my_chunks = active ? nchunks : 0;
    const T* x_row = x + (active ? row : 0) * N;
    const T* src = cache_row ? cache : x_row;  // where passes 2 and 3 read the row

    // Pass 1: the one read of the row from global memory; sum x or x^2.
    A s[1] = {A(0)};
    for (int64_t c = threadIdx.x; c < my_chunks; c += blockDim.x) {
      const Chunk<T> xc = load_chunk(x_row, c, vec);
      if (cache_row) store_chunk(cache, c, vec, xc);  // read back later by this same thread
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        if (j < width) {
          const A v = static_cast<A>(xc.v[j]);
          s[0] += kRMS ? v * v : v;
        }
      }
    }
    row_sum(s, scratch);

    A mu = A(0);
    A rs;
    if constexpr (kRMS) {
      rs = rsqrt_acc(s[0] * inv_n + eps);
    } else {
      // Pass 2: the variance about the mean, from the on-chip row.
      mu = s[0] * inv_n;
      A q[1] = {A(0)};
      for (int64_t c = threadIdx.x; c < my_chunks; c += blockDim.x) {
        const Chunk<T> xc = load_chunk(src, c, vec);
#pragma unroll
        for (int j = 0; j < kN; ++j) {
          if (j < width) {
            const A d = static_cast<A>(xc.v[j]) - mu;
            q[0] += d * d;
          }
        }
      }
      row_sum(q, scratch);
      rs = rsqrt_acc(q[0] * inv_n + eps);
    }
    if (active && threadIdx.x == 0) {
      if constexpr (!kRMS) mean_out[row] = mu;
      rstd_out[row] = rs;
    }

    // Last pass: normalize, scale, shift, write.
    T* y_row = y + (active ? row : 0) * N;
    for (int64_t c = threadIdx.x; c < my_chunks; c += blockDim.x) {
      const Chunk<T> xc = load_chunk(src, c, vec);
      Chunk<T> wc, bc, yc;
      if (w) wc = load_chunk(w, c, vec);
      if (b) bc = load_chunk(b, c, vec);
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        if (j < width) {
          A v = (static_cast<A>(xc.v[j]) - mu) * rs;
          if (w) v *= static_cast<A>(wc.v[j]);
          if (b) v += static_cast<A>(bc.v[j]);
          yc.v[j] = static_cast<T>(v);
        }
      }
      store_chunk(y_row, c, vec, yc);
    }
  }
}

// ---------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------

__host__ __device__ inline size_t align16(size_t bytes) { return (bytes + 15) & ~size_t(15); }

// Byte offsets of the backward kernel's dynamic shared memory sections
// (host and kernel compute them the same way).
struct BwdSmem {
  size_t x_cache, dy_cache, dw_acc, db_acc, total;
};

__host__ __device__ inline BwdSmem bwd_smem_layout(int ty, int64_t N, size_t t_bytes, size_t a_bytes, bool cache_rows,
                                                   bool acc_in_smem, bool has_dw, bool has_db) {
  const size_t rows_t = align16(size_t(ty) * size_t(N) * t_bytes);
  const size_t rows_a = align16(size_t(ty) * size_t(N) * a_bytes);
  BwdSmem L;
  L.x_cache = kScratchBytes;
  L.dy_cache = L.x_cache + (cache_rows ? rows_t : 0);
  L.dw_acc = L.dy_cache + (cache_rows ? rows_t : 0);
  L.db_acc = L.dw_acc + (acc_in_smem && has_dw ? rows_a : 0);
  L.total = L.db_acc + (acc_in_smem && has_db ? rows_a : 0);
  return L;
}

// dx for every row; dw_part / db_part (null when not wanted; db_part always
// null for RMSNorm) get this block's column sums of dy*xhat and dy in row
// blockIdx.x of a [gridDim.x, N] buffer. mean is null for RMSNorm, w may be
// null. When !acc_in_smem the block has one row group (blockDim.y == 1) and
// accumulates straight into its partial row.
template <typename T, bool kRMS>
__global__ void __launch_bounds__(kMaxRowThreads, 2)
    norm_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ x, const acc_type<T>* __restrict__ mean,
                    const acc_type<T>* __restrict__ rstd, const T* __restrict__ w, T* __restrict__ dx,
                    acc_type<T>* __restrict__ dw_part, acc_type<T>* __restrict__ db_part, int64_t M, int64_t N,
                    bool cache_rows, bool acc_in_smem, bool vec) {
  using A = acc_type<T>;
  constexpr int kN = Chunk<T>::kN;
  const bool has_dw = dw_part != nullptr;
  const bool has_db = db_part != nullptr;
  const BwdSmem L = bwd_smem_layout(blockDim.y, N, sizeof(T), sizeof(A), cache_rows, acc_in_smem, has_dw, has_db);
  extern __shared__ __align__(16) unsigned char smem[];
  A* scratch = reinterpret_cast<A*>(smem);
  T* x_cache = reinterpret_cast<T*>(smem + L.x_cache) + threadIdx.y * N;
  T* dy_cache = reinterpret_cast<T*>(smem + L.dy_cache) + threadIdx.y * N;

  const int width = vec ? kN : 1;
  const int64_t nchunks = N / width;
  const A inv_n = A(1) / static_cast<A>(N);

  // Accumulator slot of element j of chunk c. In shared memory the layout is
  // [j][c], so the 32 threads of a warp (consecutive c) hit 32 banks; in the
  // global partial row it is the natural element order.
  A* dw_acc = !has_dw ? nullptr
             : acc_in_smem ? reinterpret_cast<A*>(smem + L.dw_acc) + threadIdx.y * N
                           : dw_part + blockIdx.x * N;
  A* db_acc = !has_db ? nullptr
             : acc_in_smem ? reinterpret_cast<A*>(smem + L.db_acc) + threadIdx.y * N
                           : db_part + blockIdx.x * N;
  auto slot = [&](int64_t c, int j) -> int64_t { return acc_in_smem ? j * nchunks + c : c * width + j; };

  // Each thread zeroes the slots it owns (and is the only one to touch them).
  for (int64_t c = threadIdx.x; c < nchunks; c += blockDim.x) {
    for (int j = 0; j < width; ++j) {
      if (has_dw) dw_acc[slot(c, j)] = A(0);
      if (has_db) db_acc[slot(c, j)] = A(0);
    }
  }

  for (int64_t r0 = int64_t(blockIdx.x) * blockDim.y; r0 < M; r0 += int64_t(gridDim.x) * blockDim.y) {
    const int64_t row = r0 + threadIdx.y;
    const bool active = row < M;
    const int64_t my_chunks = active ? nchunks : 0;
    const int64_t off = (active ? row : 0) * N;
    const A mu = (kRMS || !active) ? A(0) : mean[row];
    const A rs = active ? rstd[row] : A(0);
    const T* x_src = cache_rows ? x_cache : x + off;  // where pass 2 reads
    const T* dy_src = cache_rows ? dy_cache : dy + off;

    // Pass 1: the one read of x and dy from global memory; sum g and g*xhat.
    A s[2] = {A(0), A(0)};
    for (int64_t c = threadIdx.x; c < my_chunks; c += blockDim.x) {
      const Chunk<T> xc = load_chunk(x + off, c, vec);
      const Chunk<T> dyc = load_chunk(dy + off, c, vec);
      if (cache_rows) {
        store_chunk(x_cache, c, vec, xc);
        store_chunk(dy_cache, c, vec, dyc);
      }
      Chunk<T> wc;
      if (w) wc = load_chunk(w, c, vec);
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        if (j < width) {
          const A xhat = (static_cast<A>(xc.v[j]) - mu) * rs;
          const A g = w ? static_cast<A>(dyc.v[j]) * static_cast<A>(wc.v[j]) : static_cast<A>(dyc.v[j]);
          s[0] += g;
          s[1] += g * xhat;
        }
      }
    }
    row_sum(s, scratch);
    const A mean_g = kRMS ? A(0) : s[0] * inv_n;
    const A mean_gx = s[1] * inv_n;

    // Pass 2: dx, and this row's share of dw and db.
    for (int64_t c = threadIdx.x; c < my_chunks; c += blockDim.x) {
      const Chunk<T> xc = load_chunk(x_src, c, vec);
      const Chunk<T> dyc = load_chunk(dy_src, c, vec);
      Chunk<T> wc, dxc;
      if (w) wc = load_chunk(w, c, vec);
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        if (j < width) {
          const A xhat = (static_cast<A>(xc.v[j]) - mu) * rs;
          const A d = static_cast<A>(dyc.v[j]);
          const A g = w ? d * static_cast<A>(wc.v[j]) : d;
          dxc.v[j] = static_cast<T>(rs * (g - mean_g - xhat * mean_gx));
          if (has_dw) dw_acc[slot(c, j)] += d * xhat;
          if (has_db) db_acc[slot(c, j)] += d;
        }
      }
      store_chunk(dx + off, c, vec, dxc);
    }
  }

  // Fold the row groups' accumulators (in order) into this block's partial row.
  if (acc_in_smem && (has_dw || has_db)) {
    __syncthreads();
    const A* dw_s = reinterpret_cast<const A*>(smem + L.dw_acc);
    const A* db_s = reinterpret_cast<const A*>(smem + L.db_acc);
    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    for (int64_t e = tid; e < N; e += int64_t(blockDim.x) * blockDim.y) {
      const int64_t s = (e % width) * nchunks + e / width;
      A dw_sum = 0, db_sum = 0;
      for (int g = 0; g < int(blockDim.y); ++g) {
        if (has_dw) dw_sum += dw_s[g * N + s];
        if (has_db) db_sum += db_s[g * N + s];
      }
      if (has_dw) dw_part[blockIdx.x * N + e] = dw_sum;
      if (has_db) db_part[blockIdx.x * N + e] = db_sum;
    }
  }
}

constexpr int kColTile = 32;  // columns per block of column_sum_kernel
constexpr int kColRows = 16;  // threads per column

// out[n] = sum over p of part[p, n], in a fixed order: thread (tx, ty) adds
// rows ty, ty+16, ... of its column, then thread (tx, 0) adds the 16 results.
template <typename T>
__global__ void column_sum_kernel(const acc_type<T>* __restrict__ part, int64_t P, int64_t N, T* __restrict__ out) {
  using A = acc_type<T>;
  __shared__ A buf[kColRows][kColTile + 1];
  const int64_t col = int64_t(blockIdx.x) * kColTile + threadIdx.x;
  A s = 0;
  if (col < N) {
    for (int64_t p = threadIdx.y; p < P; p += kColRows) s += part[p * N + col];
  }
  buf[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < N) {
    A total = 0;
    for (int k = 0; k < kColRows; ++k) total += buf[k][threadIdx.x];
    out[col] = static_cast<T>(total);
  }
}

// ---------------------------------------------------------------------------
// host side: shapes, launch configuration, the ops
// ---------------------------------------------------------------------------

struct RowShape {
  int tx;  // threads per row (power of two)
  int ty;  // rows per block
};

RowShape row_shape(int64_t N) {
  int tx = 1;
  while (tx < kMaxRowThreads && int64_t(tx) * kElemsPerThread < N) tx *= 2;
  return {tx, std::max(1, kBlockThreads / tx)};
}

// Vector access needs every row (and weight/bias) to start on 16 bytes.
template <typename T>
bool can_vectorize(int64_t N, std::initializer_list<const void*> ptrs) {
  if (N % Chunk<T>::kN != 0) return false;
  for (const void* p : ptrs) {
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  }
  return true;
}

// An attribute of the current device (the driver caches these: cheap).
int device_attribute(cudaDeviceAttr attr) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, c10::cuda::current_device()));
  return value;
}

// Shared memory a block may take and still leave room for a second block on
// its SM (a block waiting at a barrier then does not idle the SM).
size_t smem_budget() {
  const size_t per_block = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  const size_t half_sm = device_attribute(cudaDevAttrMaxSharedMemoryPerMultiprocessor) / 2;
  return std::min(per_block, half_sm > 1024 ? half_sm - 1024 : half_sm);
}

// Blocks for a persistent launch: as many as can be resident at once, capped
// at `wanted`. Also lets the kernel take up to `budget` bytes of dynamic
// shared memory (always the same value per device, so concurrent callers
// with different needs cannot undercut each other).
template <typename Kernel>
int64_t resident_grid(Kernel* kernel, int threads, size_t smem, size_t budget, int64_t wanted) {
  TORCH_INTERNAL_ASSERT(smem <= budget);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(budget)));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  TORCH_CHECK(per_sm > 0, "norm (CUDA): a block of ", threads, " threads and ", smem,
              " bytes of shared memory does not fit on this device");
  const int64_t resident = int64_t(per_sm) * device_attribute(cudaDevAttrMultiProcessorCount);
  return std::max<int64_t>(1, std::min(wanted, resident));
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

void check_cuda_input(const at::Tensor& input) {
  mte::check_float(input, "input");
  TORCH_CHECK(input.is_cuda(), "input: expected a CUDA tensor, got one on ", input.device());
}

// mean / rstd as saved by the forward: [M], stat dtype, on input's device.
void check_stat(const at::Tensor& t, const char* name, const at::Tensor& input, int64_t M) {
  mte::check_same_device(t, name, input, "input");
  const auto want = mte::stat_dtype(input.scalar_type());
  TORCH_CHECK(t.scalar_type() == want, name, ": expected dtype ", want, " (the forward's statistics for ",
              input.scalar_type(), " input), got ", t.scalar_type());
  TORCH_CHECK(t.numel() == M, name, ": expected ", M, " elements (one per normalized row), got shape ",
              t.sizes());
}

bool same_dtypes(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                 const std::optional<at::Tensor>& bias) {
  return (!present(weight) || weight->scalar_type() == input.scalar_type()) &&
         (!present(bias) || bias->scalar_type() == input.scalar_type());
}

// Shared by layer_norm_fwd and rms_norm_fwd; `mean` is undefined for RMSNorm.
template <bool kRMS>
std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_fwd(const at::Tensor& input, at::IntArrayRef normalized_shape,
                                                        const std::optional<at::Tensor>& weight,
                                                        const std::optional<at::Tensor>& bias, double eps) {
  check_cuda_input(input);
  const auto mn = mte::rows_cols(input, normalized_shape);
  const int64_t M = mn.first, N = mn.second;
  mte::check_affine(weight, "weight", input, normalized_shape);
  mte::check_affine(bias, "bias", input, normalized_shape);
  mte::check_param_dtypes(input, weight, bias, /*any_float=*/kRMS);
  TORCH_CHECK(same_dtypes(input, weight, bias), "norm_fwd_cuda: mixed dtypes go through norm_fwd_mixed");
  c10::cuda::CUDAGuard guard(input.device());

  const auto stat_opts = input.options().dtype(mte::stat_dtype(input.scalar_type()));
  at::Tensor out = mte::new_output(input.sizes(), input.options());
  at::Tensor mean = kRMS ? at::Tensor() : mte::new_output({M}, stat_opts);
  at::Tensor rstd = mte::new_output({M}, stat_opts);
  if (M == 0 || N == 0) return {out, mean, rstd};

  const at::Tensor x = input.contiguous();
  const at::Tensor w = present(weight) ? weight->contiguous() : at::Tensor();
  const at::Tensor b = (!kRMS && present(bias)) ? bias->contiguous() : at::Tensor();
  const RowShape rsh = row_shape(N);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "norm_fwd_cuda", [&] {
    using A = acc_type<scalar_t>;
    const scalar_t* w_ptr = w.defined() ? w.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* b_ptr = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    const bool vec = can_vectorize<scalar_t>(N, {x.const_data_ptr(), out.const_data_ptr(), w_ptr, b_ptr});
    const size_t cache_bytes = size_t(rsh.ty) * size_t(N) * sizeof(scalar_t);
    const size_t budget = smem_budget();
    const bool cache_row = kScratchBytes + cache_bytes <= budget;
    const size_t smem = kScratchBytes + (cache_row ? cache_bytes : 0);

    auto kernel = norm_fwd_kernel<scalar_t, kRMS>;
    const int threads = rsh.tx * rsh.ty;
    const int64_t grid = resident_grid(kernel, threads, smem, budget, ceil_div(M, rsh.ty));
    kernel<<<static_cast<unsigned>(grid), dim3(rsh.tx, rsh.ty), smem, stream>>>(
        x.const_data_ptr<scalar_t>(), w_ptr, b_ptr, out.mutable_data_ptr<scalar_t>(),
        kRMS ? nullptr : mean.mutable_data_ptr<A>(), rstd.mutable_data_ptr<A>(), M, N, static_cast<A>(eps),
        cache_row, vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, mean, rstd};
}

// Allocates a gradient like `param` (the fake kernel's empty_like), zeroed
// when there are no rows to sum over.
at::Tensor param_grad(const at::Tensor& param, int64_t M) {
  return M == 0 ? at::zeros_like(param) : mte::new_output(param.sizes(), param.options());
}

// Shared by layer_norm_bwd and rms_norm_bwd; `mean` and `bias` are unused for
// RMSNorm. Returns grad_input, grad_weight, grad_bias (empty [0] when the
// parameter is absent).
template <bool kRMS>
std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_bwd(const at::Tensor& grad_output, const at::Tensor& input,
                                                        at::IntArrayRef normalized_shape, const at::Tensor& mean,
                                                        const at::Tensor& rstd,
                                                        const std::optional<at::Tensor>& weight,
                                                        const std::optional<at::Tensor>& bias) {
  check_cuda_input(input);
  const auto mn = mte::rows_cols(input, normalized_shape);
  const int64_t M = mn.first, N = mn.second;
  mte::check_float(grad_output, "grad_output");
  mte::check_same_device(grad_output, "grad_output", input, "input");
  TORCH_CHECK(grad_output.sizes() == input.sizes(), "grad_output: expected shape ", input.sizes(),
              " (the shape of input), got ", grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), "grad_output: expected dtype ",
              input.scalar_type(), " (the dtype of input), got ", grad_output.scalar_type());
  if constexpr (!kRMS) check_stat(mean, "mean", input, M);
  check_stat(rstd, "rstd", input, M);
  mte::check_affine(weight, "weight", input, normalized_shape);
  if constexpr (!kRMS) mte::check_affine(bias, "bias", input, normalized_shape);
  mte::check_param_dtypes(input, weight, kRMS ? std::nullopt : bias, /*any_float=*/kRMS);
  TORCH_CHECK(same_dtypes(input, weight, kRMS ? std::nullopt : bias),
              "norm_bwd_cuda: mixed dtypes go through norm_bwd_mixed");
  c10::cuda::CUDAGuard guard(input.device());

  const bool has_dw = present(weight);
  const bool has_db = !kRMS && present(bias);
  at::Tensor grad_input = mte::new_output(input.sizes(), input.options());
  at::Tensor grad_weight = has_dw ? param_grad(*weight, M) : at::empty({0}, input.options());
  at::Tensor grad_bias = has_db ? param_grad(*bias, M) : at::empty({0}, input.options());
  if (M == 0 || N == 0) return {grad_input, grad_weight, grad_bias};

  // The column sums are written contiguously; a strided gradient is filled after.
  at::Tensor gw = has_dw && !grad_weight.is_contiguous() ? at::empty(weight->sizes(), weight->options()) : grad_weight;
  at::Tensor gb = has_db && !grad_bias.is_contiguous() ? at::empty(bias->sizes(), bias->options()) : grad_bias;

  const at::Tensor x = input.contiguous();
  const at::Tensor dy = grad_output.contiguous();
  const at::Tensor mean_c = kRMS ? at::Tensor() : mean.contiguous();
  const at::Tensor rstd_c = rstd.contiguous();
  const at::Tensor w = has_dw ? weight->contiguous() : at::Tensor();
  const RowShape rsh = row_shape(N);
  const auto stat_opts = input.options().dtype(mte::stat_dtype(input.scalar_type()));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "norm_bwd_cuda", [&] {
    using A = acc_type<scalar_t>;
    const scalar_t* w_ptr = w.defined() ? w.const_data_ptr<scalar_t>() : nullptr;
    const bool vec = can_vectorize<scalar_t>(
        N, {x.const_data_ptr(), dy.const_data_ptr(), grad_input.const_data_ptr(), w_ptr});

    // Shared memory: accumulators first (they save L2 round trips on every
    // row), then the x/dy row copies if there is still room. If the
    // accumulators do not fit, try fewer rows per block (down to one warp);
    // failing that they live in global memory, which needs one row per
    // block. (On current GPUs only rows of thousands of features get there,
    // and those have one row per block anyway.)
    const size_t budget = smem_budget();
    RowShape shape = rsh;
    auto acc_bytes = [&] {
      return align16(size_t(shape.ty) * size_t(N) * sizeof(A)) * (size_t(has_dw) + size_t(has_db));
    };
    bool acc_in_smem = kScratchBytes + acc_bytes() <= budget;
    if (!acc_in_smem) {
      shape.ty = std::max(1, 32 / shape.tx);
      acc_in_smem = kScratchBytes + acc_bytes() <= budget;
      TORCH_CHECK(acc_in_smem || shape.ty == 1, "norm_bwd (CUDA): not enough shared memory on this device");
    }
    const size_t cache_bytes = 2 * align16(size_t(shape.ty) * size_t(N) * sizeof(scalar_t));
    const bool cache_rows = kScratchBytes + (acc_in_smem ? acc_bytes() : 0) + cache_bytes <= budget;
    const size_t smem = bwd_smem_layout(shape.ty, N, sizeof(scalar_t), sizeof(A), cache_rows, acc_in_smem,
                                        has_dw, has_db).total;

    auto kernel = norm_bwd_kernel<scalar_t, kRMS>;
    const int threads = shape.tx * shape.ty;
    const int64_t grid = resident_grid(kernel, threads, smem, budget, ceil_div(M, shape.ty));

    // Per-block partial sums: [has_dw + has_db, grid, N].
    const int64_t nparts = int64_t(has_dw) + int64_t(has_db);
    at::Tensor part = nparts > 0 ? at::empty({nparts, grid, N}, stat_opts) : at::Tensor();
    A* dw_part = has_dw ? part.mutable_data_ptr<A>() : nullptr;
    A* db_part = has_db ? part.mutable_data_ptr<A>() + (has_dw ? grid * N : 0) : nullptr;

    kernel<<<static_cast<unsigned>(grid), dim3(shape.tx, shape.ty), smem, stream>>>(
        dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
        kRMS ? nullptr : mean_c.const_data_ptr<A>(), rstd_c.const_data_ptr<A>(), w_ptr,
        grad_input.mutable_data_ptr<scalar_t>(), dw_part, db_part, M, N, cache_rows, acc_in_smem, vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    const unsigned col_blocks = static_cast<unsigned>(ceil_div(N, kColTile));
    if (has_dw) {
      column_sum_kernel<scalar_t><<<col_blocks, dim3(kColTile, kColRows), 0, stream>>>(
          dw_part, grid, N, gw.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (has_db) {
      column_sum_kernel<scalar_t><<<col_blocks, dim3(kColTile, kColRows), 0, stream>>>(
          db_part, grid, N, gb.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  if (!gw.is_same(grad_weight)) grad_weight.copy_(gw);
  if (!gb.is_same(grad_bias)) grad_bias.copy_(gb);
  return {grad_input, grad_weight, grad_bias};
}

// ---- mixed dtypes -------------------------------------------------------------
// Parameters of another dtype than the input (float32 weights with a bfloat16
// activation, as autocast and mixed-precision training give): the kernels are
// instantiated for one dtype, so this path runs the compute-dtype kernel
// (float32; float64 for a float64 input) on widened copies and rounds the
// results back: output and grad_input to the input's dtype, each parameter's
// gradient to its own. Correct and simple, at the price of the extra casts;
// the CPU kernel reads mixed parameters directly instead.

at::ScalarType compute_dtype(const at::Tensor& input) {
  return mte::is_reduced_float(input.scalar_type()) ? at::kFloat : input.scalar_type();
}

std::optional<at::Tensor> as_dtype(const std::optional<at::Tensor>& t, at::ScalarType dt) {
  if (!present(t)) return t;
  return t->to(dt);
}

template <bool kRMS>
std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_fwd_any(const at::Tensor& input, at::IntArrayRef ns,
                                                            const std::optional<at::Tensor>& weight,
                                                            const std::optional<at::Tensor>& bias, double eps) {
  if (same_dtypes(input, weight, bias) || !input.is_floating_point()) return norm_fwd<kRMS>(input, ns, weight, bias, eps);
  check_cuda_input(input);
  mte::check_affine(weight, "weight", input, ns);
  mte::check_affine(bias, "bias", input, ns);
  mte::check_param_dtypes(input, weight, bias, /*any_float=*/kRMS);
  const auto dt = compute_dtype(input);
  auto [out, mean, rstd] = norm_fwd<kRMS>(input.to(dt), ns, as_dtype(weight, dt), as_dtype(bias, dt), eps);
  return {out.to(input.scalar_type()), mean, rstd};
}

template <bool kRMS>
std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_bwd_any(const at::Tensor& grad_output, const at::Tensor& input,
                                                            at::IntArrayRef ns, const at::Tensor& mean,
                                                            const at::Tensor& rstd,
                                                            const std::optional<at::Tensor>& weight,
                                                            const std::optional<at::Tensor>& bias) {
  if (same_dtypes(input, weight, bias) || !input.is_floating_point())
    return norm_bwd<kRMS>(grad_output, input, ns, mean, rstd, weight, bias);
  check_cuda_input(input);
  mte::check_affine(weight, "weight", input, ns);
  mte::check_affine(bias, "bias", input, ns);
  mte::check_param_dtypes(input, weight, bias, /*any_float=*/kRMS);
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), "grad_output: expected dtype ",
              input.scalar_type(), " (the dtype of input), got ", grad_output.scalar_type());
  const auto dt = compute_dtype(input);
  auto [gx, gw, gb] = norm_bwd<kRMS>(grad_output.to(dt), input.to(dt), ns, mean, rstd, as_dtype(weight, dt),
                                     as_dtype(bias, dt));
  return {gx.to(input.scalar_type()), present(weight) ? gw.to(weight->scalar_type()) : gw,
          present(bias) ? gb.to(bias->scalar_type()) : gb};
}

// ---- the four registered ops ------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd_cuda(const at::Tensor& input,
                                                                   at::IntArrayRef normalized_shape,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   const std::optional<at::Tensor>& bias,
                                                                   double eps) {
  return norm_fwd_any<false>(input, normalized_shape, weight, bias, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef normalized_shape, const at::Tensor& mean,
    const at::Tensor& rstd, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias) {
  return norm_bwd_any<false>(grad_output, input, normalized_shape, mean, rstd, weight, bias);
}

std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_cuda(const at::Tensor& input, at::IntArrayRef normalized_shape,
                                                     const std::optional<at::Tensor>& weight, double eps) {
  auto [out, mean, rstd] = norm_fwd_any<true>(input, normalized_shape, weight, std::nullopt, eps);
  return {out, rstd};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                                     at::IntArrayRef normalized_shape, const at::Tensor& rstd,
                                                     const std::optional<at::Tensor>& weight) {
  auto [grad_input, grad_weight, grad_bias] =
      norm_bwd_any<true>(grad_output, input, normalized_shape, at::Tensor(), rstd, weight, std::nullopt);
  return {grad_input, grad_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(minitorch_ext, CUDA, m) {
  m.impl("layer_norm_fwd", &layer_norm_fwd_cuda);
  m.impl("layer_norm_bwd", &layer_norm_bwd_cuda);
  m.impl("rms_norm_fwd", &rms_norm_fwd_cuda);
  m.impl("rms_norm_bwd", &rms_norm_bwd_cuda);
}
