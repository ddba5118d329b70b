// The dense family's GEMM on CUDA: torch.ops.minitorch_ext.{gemm, linear_fwd, linear_bwd}.
//
//     out[M,N] = act(alpha * a[M,K] @ b[K,N] + beta * c[M,N] + bias),  (+ preact, the value before act)
//
// a, b and c may have any strides: a transposed operand is just a strided view,
// read in place (no transposed copy). One output rounding: the accumulators are
// float32 (float64 for float64), the epilogue runs on them in registers and the
// result is rounded to the output dtype once, on the store.
//
// Two kernels, both one thread block per output tile, walking K in steps of BK:
//
// * bfloat16 / float16: gemm_tc_kernel, tensor cores through mma.sync
//   (m16n8k16, float32 accumulators; sm_80 and newer). Block tile 128x128x32,
//   8 warps as 2 (M) x 4 (N), each warp 64x32 = 4x4 mma tiles, 64 float
//   accumulators per thread. The A and B tiles are staged in shared memory,
//   three stages, filled with cp.async (16-byte copies, zero-fill past the
//   matrix edge): two tiles are in flight while the tensor cores work on the third,
//   one barrier per k-step.
//   The trick that makes every stride fast without templates per layout: a tile
//   is kept in shared memory in the orientation global memory has (a K-contiguous
//   A as [m][k], an M-contiguous A, i.e. a transposed one, as [k][m]; the same
//   for B), so the copy is always 16-byte vectors along the contiguous dimension;
//   the fragments are then read with ldmatrix or ldmatrix.trans (a runtime,
//   block-uniform switch), which both deliver exactly the register layout mma
//   wants. Rows of the staged tiles are padded by 16 bytes, so the 8 row
//   addresses of an ldmatrix phase fall on 8 distinct 16-byte bank groups.
//   Operands with no unit stride (or misaligned ones) take the same path with
//   element-wise loads into the same layout (correct, slower).
// * float32 / float64: gemm_simt_kernel, CUDA cores. float32: block tile
//   128x128x8, 256 threads, 8x8 outputs per thread (float64: 64x64x8, 4x4).
//   Each thread's outputs are two 4-wide (2-wide) strips per dimension, BM/2
//   apart, so its shared-memory reads are 16-byte vectors that a warp takes
//   conflict-free; global loads for tile k+1 are held in registers while tile k
//   is computed (register double buffering). float32 stays float32 math (no
//   TF32, as torch's default allow_tf32=False for matmul; denormals flush to
//   zero under setup.py's --use_fast_math).
//
// Memory traffic: each block reads (BM + BN) * K elements, so A is read
// ceil(N/BN) times and B ceil(M/BM) times (from L2 after the first), and the
// output (and the pre-activation) is written once; c and bias are read once per
// output element in the epilogue. Per k-step a tensor-core block does
// 2*128*128*32 flops on 16 KB of staged tiles: 64 flop per staged byte.
//
// Epilogue (both kernels, epilogue()): v = alpha*acc (+ beta*c) (+ bias[col] or
// bias[row]); preact = round(v) when asked; out = round(act(v)), act from
// common/act_cuda.cuh, a runtime switch (no template per activation).
//
// Linear: linear_fwd is gemm(x, W^T) with the bias per column and the
// pre-activation stored; linear_bwd forms g = grad_output * act'(preact) and
// the bias gradient's per-block column partials in one elementwise pass
// (act_grad_colsum_kernel), then dx = g @ W and dW = g^T @ x are two more gemm
// launches on strided views. The bias gradient is summed in a fixed order
// (rows within a block, then the blocks' partials in order; no atomics), so every
// result here is bitwise reproducible from run to run.
//
// Build size: 4 GEMM instantiations (bf16, fp16 tensor-core; float, double
// SIMT) + 4 x 2 small elementwise/reduction kernels.
//
// Registers (nvcc 13.0, setup.py's flags, -Xptxas -v; 0 bytes spilled everywhere):
//                        sm_90   sm_80   shared memory
//   gemm_tc_kernel       128     128     60 KB (3 stages x (A + B) x 10 KB, dynamic)
//   gemm_simt_kernel f32 128     123     16.5 KB
//   gemm_simt_kernel f64 124     120     16.5 KB
//   act_grad_colsum      32-40   32-40   1-2 KB;  colsum_finish 24-32
// All GEMM kernels fit two blocks (16 warps) per SM on sm_80 / sm_90.
//
// Left for later: a smaller tile for small M or N (few blocks on 132 SMs),
// split-K for long K with a small output, epilogue stores staged through shared
// memory for full coalescing (today each accumulator is stored on its own,
// L2 merges them; a first try, per-warp 32x32 float tiles read back by row, made
// ptxas take 243 registers on sm_90, or spill 340 bytes when held to 128),
// wgmma/TMA on sm_90, and a TF32 opt-in.
//
// Headers: c10/cuda only (as norm_cuda.cu), not ATen/cuda/CUDAContext.h.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "common/act_cuda.cuh"
#include "common/act_kind.h"
#include "common/alloc.h"
#include "common/checks.h"

namespace {

using mte::Act;

// ---------------------------------------------------------------------------
// dtypes: storage type S, accumulator type A, one rounding on store
// ---------------------------------------------------------------------------

struct Bf16 {
  using S = uint16_t;  // the raw bits: no implicit conversions (torch builds with __CUDA_NO_*_CONVERSIONS__)
  using A = float;
  static constexpr bool kTensorCore = true;
  static __device__ __forceinline__ A load(S v) { return __bfloat162float(__ushort_as_bfloat16(v)); }
  static __device__ __forceinline__ S store(A v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
};
struct Fp16 {
  using S = uint16_t;
  using A = float;
  static constexpr bool kTensorCore = true;
  static __device__ __forceinline__ A load(S v) { return __half2float(__ushort_as_half(v)); }
  static __device__ __forceinline__ S store(A v) { return __half_as_ushort(__float2half_rn(v)); }
};
struct F32 {
  using S = float;
  using A = float;
  static constexpr bool kTensorCore = false;
  static __device__ __forceinline__ A load(S v) { return v; }
  static __device__ __forceinline__ S store(A v) { return v; }
};
struct F64 {
  using S = double;
  using A = double;
  static constexpr bool kTensorCore = false;
  static __device__ __forceinline__ A load(S v) { return v; }
  static __device__ __forceinline__ S store(A v) { return v; }
};

// Everything a GEMM launch needs. Strides are in elements; out and preact are
// contiguous [M, N] (preact may be null; c and bias too).
template <class Tr>
struct GemmParams {
  using S = typename Tr::S;
  using A = typename Tr::A;
  const S* a;
  int64_t sam, sak;  // a[m][k] = a[m*sam + k*sak]
  const S* b;
  int64_t sbk, sbn;  // b[k][n] = b[k*sbk + n*sbn]
  const S* c;
  int64_t scm, scn;
  const S* bias;
  int64_t sbias;
  int bias_dim;  // 1: bias[n] (per column), 0: bias[m] (per row)
  S* out;
  S* preact;
  int64_t M, N, K;
  A alpha, beta, slope;
  Act act;
  // tensor-core path: how each operand's tiles are staged (see the top comment)
  bool a_kmajor, b_kmajor;  // a as [m][k] (else [k][m]); b as [n][k] (else [k][n])
  bool a_vec, b_vec;        // 16-byte cp.async copies (else element-wise loads)
};

// The epilogue on one accumulator: (row, col) of the output, v = sum_k a*b.
template <class Tr>
__device__ __forceinline__ void epilogue(const GemmParams<Tr>& p, int64_t row, int64_t col, typename Tr::A v) {
  if (row >= p.M || col >= p.N) return;
  v *= p.alpha;
  if (p.c != nullptr) v += p.beta * Tr::load(p.c[row * p.scm + col * p.scn]);
  if (p.bias != nullptr) v += Tr::load(p.bias[(p.bias_dim == 1 ? col : row) * p.sbias]);
  const int64_t o = row * p.N + col;
  if (p.preact != nullptr) p.preact[o] = Tr::store(v);
  p.out[o] = Tr::store(mte::dev::act(p.act, v, p.slope));
}

// ---------------------------------------------------------------------------
// tensor cores: bfloat16 / float16
// ---------------------------------------------------------------------------

constexpr int kTcBM = 128, kTcBN = 128, kTcBK = 32;
constexpr int kTcThreads = 256;                // 8 warps: 2 along M x 4 along N
constexpr int kTcWarpM = 64, kTcWarpN = 32;    // each warp: 4 x 4 tiles of 16x8
constexpr int kPad = 8;                        // 16 bytes of padding per staged row
constexpr int kLdK = kTcBK + kPad;             // row length of a [m][k] or [n][k] tile
constexpr int kLdMN = kTcBM + kPad;            // row length of a [k][m] or [k][n] tile
static_assert(kTcBM == kTcBN, "one staged-tile size serves A and B");
constexpr int kTileElems = (kTcBM * kLdK > kTcBK * kLdMN) ? kTcBM * kLdK : kTcBK * kLdMN;
constexpr int kStages = 3;  // tiles in flight: one computed, two loading
constexpr size_t kTcSmemBytes = size_t(2) * kStages * kTileElems * sizeof(uint16_t);  // 60 KB

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; bytes past src_bytes (0..16) are zero-filled.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most kStages - 2 committed groups are still in flight.
__device__ __forceinline__ void cp_async_wait_stage() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kStages - 2) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}

// d (16x8, float) += a (16x16, row) * b (16x8, col)
template <class Tr>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<Tr, Bf16>) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Stages a ROWS x COLS tile into shared memory (row length COLS + kPad), where
// tile element (r, c) is src[(r0+r)*s_row + (c0+c)*s_col] and is zero outside
// rows < R, cols < C. The tile is cut into 8-element chunks along its rows; with
// `vec` (s_col == 1, 16-byte aligned rows) a chunk is one cp.async, else 8 loads.
template <int ROWS, int COLS>
__device__ __forceinline__ void stage_tile(uint16_t* smem, const uint16_t* src, int64_t s_row, int64_t s_col,
                                           int64_t r0, int64_t c0, int64_t R, int64_t C, bool vec) {
  constexpr int kChunksPerRow = COLS / 8;
  constexpr int kChunks = ROWS * kChunksPerRow;
  static_assert(kChunks % kTcThreads == 0, "whole chunks per thread");
#pragma unroll
  for (int i = 0; i < kChunks / kTcThreads; ++i) {
    const int ch = static_cast<int>(threadIdx.x) + i * kTcThreads;
    const int r = ch / kChunksPerRow;
    const int c = (ch % kChunksPerRow) * 8;
    const int64_t gr = r0 + r, gc = c0 + c;
    const int valid = gr < R ? static_cast<int>(std::min<int64_t>(std::max<int64_t>(C - gc, 0), 8)) : 0;
    uint16_t* dst = smem + r * (COLS + kPad) + c;
    if (vec) {
      const uint16_t* g = valid > 0 ? src + gr * s_row + gc : src;  // no address outside the tensor
      cp_async_16(dst, g, valid * 2);
    } else {
      uint32_t w[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint32_t lo = 2 * j < valid ? src[gr * s_row + (gc + 2 * j) * s_col] : 0u;
        const uint32_t hi = 2 * j + 1 < valid ? src[gr * s_row + (gc + 2 * j + 1) * s_col] : 0u;
        w[j] = lo | (hi << 16);
      }
      *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
    }
  }
}

// Two blocks per SM: 128 registers a thread. ptxas gets there with no hint on
// sm_90 (and spills a few bytes when given "2"); sm_80 needs the hint.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MTE_TC_LAUNCH_BOUNDS __launch_bounds__(kTcThreads)
#else
#define MTE_TC_LAUNCH_BOUNDS __launch_bounds__(kTcThreads, 2)
#endif

template <class Tr>
__global__ void MTE_TC_LAUNCH_BOUNDS gemm_tc_kernel(const GemmParams<Tr> p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // the host refuses these GPUs before launching
#else
  // kStages A tiles, then kStages B tiles (dynamic: more than the 48 KB of static shared memory)
  extern __shared__ __align__(16) uint16_t tc_smem[];
  uint16_t* const sa = tc_smem;
  uint16_t* const sb = tc_smem + kStages * kTileElems;

  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int wm = (warp / 4) * kTcWarpM;  // this warp's offset in the block tile
  const int wn = (warp % 4) * kTcWarpN;
  const int64_t m0 = int64_t(blockIdx.x) * kTcBM;
  const int64_t n0 = int64_t(blockIdx.y) * kTcBN;
  const uint16_t* a = p.a;
  const uint16_t* b = p.b;

  auto stage = [&](int s, int64_t k0) {
    if (p.a_kmajor)
      stage_tile<kTcBM, kTcBK>(sa + s * kTileElems, a, p.sam, p.sak, m0, k0, p.M, p.K, p.a_vec);  // [m][k]
    else
      stage_tile<kTcBK, kTcBM>(sa + s * kTileElems, a, p.sak, p.sam, k0, m0, p.K, p.M, p.a_vec);  // [k][m]
    if (p.b_kmajor)
      stage_tile<kTcBN, kTcBK>(sb + s * kTileElems, b, p.sbn, p.sbk, n0, k0, p.N, p.K, p.b_vec);  // [n][k]
    else
      stage_tile<kTcBK, kTcBN>(sb + s * kTileElems, b, p.sbk, p.sbn, k0, n0, p.K, p.N, p.b_vec);  // [k][n]
  };

  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  // Lane-dependent parts of the ldmatrix row addresses. An x4 ldmatrix reads
  // four 8x8 matrices, lanes 8i..8i+7 giving the 8 row addresses of matrix i;
  // register i of every lane receives its share of matrix i.
  //   A as [m][k]: matrices (m0-7,k0-7) (m8-15,k0-7) (m0-7,k8-15) (m8-15,k8-15) -> a0..a3
  //   A as [k][m], .trans: the same four, stored transposed
  //   B as [n][k]: (n0-7,k0-7) (n0-7,k8-15) (n8-15,k0-7) (n8-15,k8-15) -> b0,b1 of two n8 tiles
  //   B as [k][n], .trans: likewise
  const int l8 = lane % 8, l16 = lane % 16;
  const int hi8 = (lane / 16) * 8;       // 0 for lanes 0-15, 8 for 16-31
  const int mid8 = ((lane / 8) % 2) * 8;  // 0, 8, 0, 8 for the four lane octets

  // The pipeline: tile t goes to stage t % kStages, one cp.async group per tile
  // (empty groups past the end keep the count regular). Before tile kt is
  // computed, groups 0..kt must be complete: kt + kStages - 1 have been
  // committed, so at most kStages - 2 may still be in flight.
  const int64_t k_tiles = (p.K + kTcBK - 1) / kTcBK;
#pragma unroll
  for (int t = 0; t < kStages - 1; ++t) {
    if (t < k_tiles) stage(t, t * kTcBK);
    cp_async_commit();
  }
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    const int s = static_cast<int>(kt % kStages);
    cp_async_wait_stage();
    __syncthreads();  // tile kt is visible to all; every warp is done with tile kt - 1
    {
      // refill the stage tile kt - 1 used with tile kt + kStages - 1
      const int64_t next = kt + kStages - 1;
      if (next < k_tiles) stage(static_cast<int>(next % kStages), next * kTcBK);
      cp_async_commit();
    }

    const uint16_t* ta = sa + s * kTileElems;
    const uint16_t* tb = sb + s * kTileElems;
#pragma unroll
    for (int kk = 0; kk < kTcBK; kk += 16) {
      uint32_t af[4][4];
      uint32_t bfr[4][2];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        const int m = wm + mi * 16;
        if (p.a_kmajor)
          ldmatrix_x4(af[mi], ta + (m + l16) * kLdK + kk + hi8);
        else
          ldmatrix_x4_trans(af[mi], ta + (kk + l8 + hi8) * kLdMN + m + mid8);
      }
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) {
        const int n = wn + nj * 16;
        uint32_t r[4];
        if (p.b_kmajor)
          ldmatrix_x4(r, tb + (n + l8 + hi8) * kLdK + kk + mid8);
        else
          ldmatrix_x4_trans(r, tb + (kk + l8 + mid8) * kLdMN + n + hi8);
        bfr[2 * nj][0] = r[0];
        bfr[2 * nj][1] = r[1];
        bfr[2 * nj + 1][0] = r[2];
        bfr[2 * nj + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma_16816<Tr>(acc[mi][ni], af[mi], bfr[ni][0], bfr[ni][1]);
    }
  }

  // Accumulator e of tile (mi, ni) sits at row g (+8 for e >= 2), column 2t (+1 for odd e).
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t row = m0 + wm + mi * 16 + g + (e >= 2 ? 8 : 0);
        const int64_t col = n0 + wn + ni * 8 + 2 * t + (e & 1);
        epilogue<Tr>(p, row, col, acc[mi][ni][e]);
      }
#endif
}

// ---------------------------------------------------------------------------
// CUDA cores: float32 / float64
// ---------------------------------------------------------------------------

template <class Tr>
struct SimtShape {
  using S = typename Tr::S;
  static constexpr int kV = 16 / static_cast<int>(sizeof(S));  // elements per 16-byte vector: 4 / 2
  static constexpr int kTM = 2 * kV;                            // outputs per thread per dimension
  static constexpr int kBM = 16 * kTM;                          // 128 / 64 (16 x 16 threads)
  static constexpr int kBK = 8;
  static constexpr int kLd = kBM + kV;                          // padded, rows stay 16-byte aligned
  static constexpr int kLoads = kBM * kBK / 256;                // elements of A (and of B) per thread
};

template <class Tr>
__global__ void __launch_bounds__(256, 2) gemm_simt_kernel(const GemmParams<Tr> p) {
  using S = typename Tr::S;
  using A = typename Tr::A;
  using Sh = SimtShape<Tr>;
  constexpr int kV = Sh::kV, kTM = Sh::kTM, kBM = Sh::kBM, kBK = Sh::kBK, kLd = Sh::kLd;
  using Vec = std::conditional_t<std::is_same_v<S, float>, float4, double2>;
  __shared__ __align__(16) S sa[2][kBK * kLd];  // [k][m]
  __shared__ __align__(16) S sb[2][kBK * kLd];  // [k][n]

  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % 16, ty = tid / 16;
  const int64_t m0 = int64_t(blockIdx.x) * kBM;
  const int64_t n0 = int64_t(blockIdx.y) * kBM;
  // Which tile element each thread loads: consecutive threads walk the
  // operand's contiguous dimension, so the global reads coalesce.
  const bool a_kfast = p.a_kmajor, b_kfast = p.b_kmajor;

  S ra[Sh::kLoads], rb[Sh::kLoads];
  auto load = [&](int64_t k0) {
#pragma unroll
    for (int i = 0; i < Sh::kLoads; ++i) {
      const int e = tid + i * 256;
      int k = a_kfast ? e % kBK : e / kBM;
      int m = a_kfast ? e / kBK : e % kBM;
      int64_t gm = m0 + m, gk = k0 + k;
      ra[i] = (gm < p.M && gk < p.K) ? p.a[gm * p.sam + gk * p.sak] : S(0);
      k = b_kfast ? e % kBK : e / kBM;
      const int n = b_kfast ? e / kBK : e % kBM;
      const int64_t gn = n0 + n;
      gk = k0 + k;
      rb[i] = (gn < p.N && gk < p.K) ? p.b[gk * p.sbk + gn * p.sbn] : S(0);
    }
  };
  auto store = [&](int s) {
#pragma unroll
    for (int i = 0; i < Sh::kLoads; ++i) {
      const int e = tid + i * 256;
      sa[s][(a_kfast ? e % kBK : e / kBM) * kLd + (a_kfast ? e / kBK : e % kBM)] = ra[i];
      sb[s][(b_kfast ? e % kBK : e / kBM) * kLd + (b_kfast ? e / kBK : e % kBM)] = rb[i];
    }
  };

  A acc[kTM][kTM];
#pragma unroll
  for (int i = 0; i < kTM; ++i)
#pragma unroll
    for (int j = 0; j < kTM; ++j) acc[i][j] = A(0);

  const int64_t k_tiles = (p.K + kBK - 1) / kBK;
  if (k_tiles > 0) {
    load(0);
    store(0);
  }
  __syncthreads();
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    const int s = static_cast<int>(kt & 1);
    const bool more = kt + 1 < k_tiles;
    if (more) load((kt + 1) * kBK);  // in flight while this tile is computed
#pragma unroll
    for (int k = 0; k < kBK; ++k) {
      // this thread's rows: ty*kV + [0, kV) and kBM/2 + ty*kV + [0, kV); columns alike with tx
      A av[kTM], bv[kTM];
      const Vec a0 = *reinterpret_cast<const Vec*>(&sa[s][k * kLd + ty * kV]);
      const Vec a1 = *reinterpret_cast<const Vec*>(&sa[s][k * kLd + kBM / 2 + ty * kV]);
      const Vec b0 = *reinterpret_cast<const Vec*>(&sb[s][k * kLd + tx * kV]);
      const Vec b1 = *reinterpret_cast<const Vec*>(&sb[s][k * kLd + kBM / 2 + tx * kV]);
      *reinterpret_cast<Vec*>(&av[0]) = a0;
      *reinterpret_cast<Vec*>(&av[kV]) = a1;
      *reinterpret_cast<Vec*>(&bv[0]) = b0;
      *reinterpret_cast<Vec*>(&bv[kV]) = b1;
#pragma unroll
      for (int i = 0; i < kTM; ++i)
#pragma unroll
        for (int j = 0; j < kTM; ++j) acc[i][j] = fma(av[i], bv[j], acc[i][j]);
    }
    if (more) store(s ^ 1);  // that buffer was last read before the previous barrier
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kTM; ++i) {
    const int64_t row = m0 + (i < kV ? ty * kV + i : kBM / 2 + ty * kV + i - kV);
#pragma unroll
    for (int j = 0; j < kTM; ++j) {
      const int64_t col = n0 + (j < kV ? tx * kV + j : kBM / 2 + tx * kV + j - kV);
      epilogue<Tr>(p, row, col, acc[i][j]);
    }
  }
}

// ---------------------------------------------------------------------------
// linear backward helpers: g = grad_output * act'(preact) and bias-gradient partials
// ---------------------------------------------------------------------------

constexpr int kColTile = 32;  // columns per block (threadIdx.x)
constexpr int kRowLanes = 8;  // rows walked in parallel per block (threadIdx.y)
constexpr int64_t kMaxRowBlocks = 128;

// Block (x, y) covers columns [32x, 32x+32) and rows [y*rows_per, (y+1)*rows_per).
// g = grad_output * act'(preact) (grad_output for act == None) is written to
// g (contiguous [M, N]) unless g is null; partial[y][col] (unless null) gets the
// block's column sums of g (unrounded), added in a fixed order.
template <class Tr>
__global__ void __launch_bounds__(kColTile* kRowLanes)
    act_grad_colsum_kernel(const typename Tr::S* __restrict__ go, int64_t sgm, int64_t sgn,
                           const typename Tr::S* __restrict__ pre, int64_t spm, int64_t spn,
                           typename Tr::S* __restrict__ g, typename Tr::A* __restrict__ partial, int64_t M, int64_t N,
                           int64_t rows_per, Act act, typename Tr::A slope) {
  using A = typename Tr::A;
  __shared__ A part[kRowLanes][kColTile];
  const int64_t col = int64_t(blockIdx.x) * kColTile + threadIdx.x;
  const int64_t r_begin = int64_t(blockIdx.y) * rows_per;
  const int64_t r_end = std::min<int64_t>(M, r_begin + rows_per);
  A sum = A(0);
  if (col < N) {
    for (int64_t r = r_begin + threadIdx.y; r < r_end; r += kRowLanes) {
      A v = Tr::load(go[r * sgm + col * sgn]);
      if (act != Act::None) v *= mte::dev::act_grad(act, Tr::load(pre[r * spm + col * spn]), slope);
      if (g != nullptr) g[r * N + col] = Tr::store(v);
      sum += v;
    }
  }
  if (partial == nullptr) return;  // uniform over the block
  part[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && col < N) {
    A total = A(0);
#pragma unroll
    for (int y = 0; y < kRowLanes; ++y) total += part[y][threadIdx.x];
    partial[int64_t(blockIdx.y) * N + col] = total;
  }
}

// out[col] = sum over p of partial[p][col], p in order.
template <class Tr>
__global__ void colsum_finish_kernel(const typename Tr::A* __restrict__ partial, int64_t P, int64_t N,
                                     typename Tr::S* __restrict__ out) {
  const int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= N) return;
  typename Tr::A total = 0;
  for (int64_t q = 0; q < P; ++q) total += partial[q * N + col];
  out[col] = Tr::store(total);
}

// ---------------------------------------------------------------------------
// host side
// ---------------------------------------------------------------------------

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Stride along a dimension, or "infinitely far" when the dimension has size 1
// (its stride is then meaningless and must not pick the orientation).
int64_t eff_stride(const at::Tensor& t, int d) {
  return t.size(d) == 1 ? INT64_MAX : std::abs(t.stride(d));
}

// The operand tile orientation: true when the first-named dimension (k for A
// staged as [m][k]: the inner one) is the contiguous one. For A [M,K]: is K the
// fast dimension? For B [K,N]: is K the fast dimension?
bool k_is_fast(int64_t k_stride, int64_t other_stride) { return k_stride <= other_stride; }

template <class Tr>
void launch_gemm(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& c, double alpha,
                 double beta, const std::optional<at::Tensor>& bias, int64_t bias_dim, Act act, double slope,
                 const at::Tensor& out, const at::Tensor& preact) {
  using S = typename Tr::S;
  using A = typename Tr::A;
  GemmParams<Tr> p{};
  p.M = a.size(0);
  p.K = a.size(1);
  p.N = b.size(1);
  p.a = static_cast<const S*>(a.const_data_ptr());
  p.sam = a.stride(0);
  p.sak = a.stride(1);
  p.b = static_cast<const S*>(b.const_data_ptr());
  p.sbk = b.stride(0);
  p.sbn = b.stride(1);
  const bool use_c = present(c) && beta != 0.0;  // BLAS: beta == 0 does not read c (NaN in c stays out)
  p.c = use_c ? static_cast<const S*>(c->const_data_ptr()) : nullptr;
  p.scm = use_c ? c->stride(0) : 0;
  p.scn = use_c ? c->stride(1) : 0;
  p.bias = present(bias) ? static_cast<const S*>(bias->const_data_ptr()) : nullptr;
  p.sbias = present(bias) ? bias->stride(0) : 0;
  p.bias_dim = static_cast<int>(bias_dim);
  p.out = static_cast<S*>(out.data_ptr());
  p.preact = preact.defined() && preact.numel() > 0 ? static_cast<S*>(preact.data_ptr()) : nullptr;
  p.alpha = static_cast<A>(alpha);
  p.beta = static_cast<A>(beta);
  p.slope = static_cast<A>(slope);
  p.act = act;
  p.a_kmajor = k_is_fast(eff_stride(a, 1), eff_stride(a, 0));
  p.b_kmajor = k_is_fast(eff_stride(b, 0), eff_stride(b, 1));
  if (p.M == 0 || p.N == 0) return;

  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if constexpr (Tr::kTensorCore) {
    // 16-byte copies need the staged (contiguous) dimension at unit stride and
    // every tile row starting on a 16-byte boundary.
    auto vec_ok = [](const void* ptr, int64_t inner_stride, int64_t outer_size, int64_t outer_stride) {
      return inner_stride == 1 && (outer_size == 1 || outer_stride % 8 == 0) && aligned16(ptr);
    };
    p.a_vec = p.a_kmajor ? vec_ok(p.a, p.sak, p.M, p.sam) : vec_ok(p.a, p.sam, p.K, p.sak);
    p.b_vec = p.b_kmajor ? vec_ok(p.b, p.sbk, p.N, p.sbn) : vec_ok(p.b, p.sbn, p.K, p.sbk);
    const dim3 grid(static_cast<unsigned>(ceil_div(p.M, kTcBM)), static_cast<unsigned>(ceil_div(p.N, kTcBN)));
    // (per device and cheap: set on every launch rather than tracked)
    C10_CUDA_CHECK(cudaFuncSetAttribute(gemm_tc_kernel<Tr>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kTcSmemBytes)));
    gemm_tc_kernel<Tr><<<grid, kTcThreads, kTcSmemBytes, stream>>>(p);
  } else {
    constexpr int kBM = SimtShape<Tr>::kBM;
    const dim3 grid(static_cast<unsigned>(ceil_div(p.M, kBM)), static_cast<unsigned>(ceil_div(p.N, kBM)));
    gemm_simt_kernel<Tr><<<grid, 256, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Calls f(Traits{}) for a floating dtype (checked by the callers).
template <class F>
void with_traits(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(F32{}); return;
    case at::kDouble: f(F64{}); return;
    case at::kBFloat16: f(Bf16{}); return;
    case at::kHalf: f(Fp16{}); return;
    default: TORCH_CHECK(false, "gemm (CUDA): unsupported dtype ", t);
  }
}

// Runs the GEMM for a's dtype into `out` ([M, N] contiguous; preact likewise, or undefined).
void run_gemm(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& c, double alpha,
              double beta, const std::optional<at::Tensor>& bias, int64_t bias_dim, Act act, double slope,
              const at::Tensor& out, const at::Tensor& preact = at::Tensor()) {
  TORCH_INTERNAL_ASSERT(out.is_contiguous() && (!preact.defined() || preact.is_contiguous()));
  const bool tc = mte::is_reduced_float(a.scalar_type());
  const int64_t bn = tc ? kTcBN : (a.scalar_type() == at::kDouble ? SimtShape<F64>::kBM : SimtShape<F32>::kBM);
  TORCH_CHECK(ceil_div(b.size(1), bn) <= 65535, "gemm (CUDA): ", b.size(1),
              " output columns are more than one launch covers (", 65535 * bn, ")");
  if (tc) {
    int major = 0, minor = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, a.get_device()));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, a.get_device()));
    TORCH_CHECK(major >= 8, "gemm (CUDA): ", a.scalar_type(),
                " needs tensor cores of compute capability 8.0 or newer (this GPU is ", major, ".", minor, ")");
  }
  with_traits(a.scalar_type(), [&](auto tr) {
    launch_gemm<decltype(tr)>(a, b, c, alpha, beta, bias, bias_dim, act, slope, out, preact);
  });
}

// ---- argument checks ----------------------------------------------------------

void check_cuda(const at::Tensor& t, const char* name) {
  mte::check_float(t, name);
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got one on ", t.device());
}

void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  mte::check_float(t, name);
  mte::check_same_device(t, name, ref, ref_name);
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, ": expected dtype ", ref.scalar_type(), " (the dtype of ",
              ref_name, "), got ", t.scalar_type(), "; ", ref_name, " and ", name, " must have the same dtype");
}

// torch's wording for operands that cannot be multiplied: mat1 [M, K], mat2 [K', N].
void check_mm_shapes(int64_t m, int64_t k, int64_t k2, int64_t n) {
  TORCH_CHECK(k == k2, "mat1 and mat2 shapes cannot be multiplied (", m, "x", k, " and ", k2, "x", n, ")");
}

int64_t leading_rows(const at::Tensor& t) {
  int64_t m = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) m *= t.size(d);
  return m;
}

std::vector<int64_t> with_last(at::IntArrayRef sizes, int64_t last) {
  std::vector<int64_t> s(sizes.begin(), sizes.end());
  s.back() = last;
  return s;
}

// ---- the registered ops ---------------------------------------------------------

at::Tensor gemm_cuda(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& c, double alpha,
                     double beta, const std::optional<at::Tensor>& bias, int64_t bias_dim, c10::string_view act,
                     double slope) {
  check_cuda(a, "a");
  check_like(b, "b", a, "a");
  TORCH_CHECK(a.dim() == 2, "a: expected a 2-D tensor (a matrix), got ", a.dim(), "-D");
  TORCH_CHECK(b.dim() == 2, "b: expected a 2-D tensor (a matrix), got ", b.dim(), "-D");
  check_mm_shapes(a.size(0), a.size(1), b.size(0), b.size(1));
  const int64_t M = a.size(0), N = b.size(1);
  if (present(c)) {
    check_like(*c, "c", a, "a");
    TORCH_CHECK(c->dim() == 2 && c->size(0) == M && c->size(1) == N, "c: expected shape [", M, ", ", N,
                "] (rows of a, columns of b), got ", c->sizes());
  }
  if (present(bias)) {
    TORCH_CHECK_VALUE(bias_dim == 0 || bias_dim == 1, "bias_dim: expected 0 (a bias per row) or 1 (per column), got ",
                      bias_dim);
    check_like(*bias, "bias", a, "a");
    const int64_t want = bias_dim == 1 ? N : M;
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == want, "bias: expected shape [", want, "] (bias_dim=", bias_dim,
                ": one per ", bias_dim == 1 ? "column" : "row", "), got ", bias->sizes());
  }
  const Act ak = mte::parse_act(act);
  c10::cuda::CUDAGuard guard(a.device());
  at::Tensor out = mte::new_output({M, N}, a.options());
  run_gemm(a, b, c, alpha, beta, bias, bias_dim, ak, slope, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> linear_fwd_cuda(const at::Tensor& input, const at::Tensor& weight,
                                                   const std::optional<at::Tensor>& bias, c10::string_view act,
                                                   double slope) {
  check_cuda(input, "input");
  check_like(weight, "weight", input, "input");
  TORCH_CHECK(input.dim() >= 1, "input: expected at least 1 dimension, got a 0-D tensor");
  TORCH_CHECK(weight.dim() == 2, "weight: expected a 2-D tensor [out_features, in_features], got ", weight.dim(),
              "-D");
  const int64_t K = input.size(-1), M = leading_rows(input), N = weight.size(0);
  check_mm_shapes(M, K, weight.size(1), N);
  if (present(bias)) {
    check_like(*bias, "bias", input, "input");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, "bias: expected shape [", N, "] (out_features), got ",
                bias->sizes());
  }
  const Act ak = mte::parse_act(act);
  c10::cuda::CUDAGuard guard(input.device());
  const auto out_sizes = with_last(input.sizes(), N);
  at::Tensor out = mte::new_output(out_sizes, input.options());
  at::Tensor preact = ak != Act::None ? mte::new_output(out_sizes, input.options()) : at::empty({0}, input.options());
  if (M == 0 || N == 0) return {out, preact};
  const at::Tensor x = input.reshape({M, K});  // a view when the leading dims allow one
  run_gemm(x, weight.t(), std::nullopt, 1.0, 0.0, bias, 1, ak, slope, out.view({M, N}),
           ak != Act::None ? preact.view({M, N}) : at::Tensor());
  return {out, preact};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_bwd_cuda(const at::Tensor& grad_output,
                                                               const at::Tensor& input, const at::Tensor& weight,
                                                               const at::Tensor& preact, c10::string_view act,
                                                               double slope, std::array<bool, 3> output_mask) {
  check_cuda(input, "input");
  check_like(weight, "weight", input, "input");
  check_like(grad_output, "grad_output", input, "input");
  TORCH_CHECK(input.dim() >= 1, "input: expected at least 1 dimension, got a 0-D tensor");
  TORCH_CHECK(weight.dim() == 2, "weight: expected a 2-D tensor [out_features, in_features], got ", weight.dim(),
              "-D");
  const int64_t K = input.size(-1), M = leading_rows(input), N = weight.size(0);
  check_mm_shapes(M, K, weight.size(1), N);
  const auto out_sizes = with_last(input.sizes(), N);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(out_sizes), "grad_output: expected shape ",
              at::IntArrayRef(out_sizes), " (input's leading dims, out_features), got ", grad_output.sizes());
  const Act ak = mte::parse_act(act);
  if (ak != Act::None) {
    check_like(preact, "preact", input, "input");
    TORCH_CHECK(preact.sizes() == grad_output.sizes(), "preact: expected shape ", grad_output.sizes(),
                " (the shape of grad_output), got ", preact.sizes());
  }
  c10::cuda::CUDAGuard guard(input.device());
  const auto opts = input.options();
  at::Tensor grad_input = output_mask[0] ? mte::new_output(input.sizes(), opts) : at::empty({0}, opts);
  at::Tensor grad_weight = output_mask[1] ? mte::new_output(weight.sizes(), opts) : at::empty({0}, opts);
  at::Tensor grad_bias = output_mask[2] ? mte::new_output({N}, opts) : at::empty({0}, opts);
  if (M == 0) {  // nothing to sum over: zero gradients for the parameters
    if (output_mask[1]) grad_weight.zero_();
    if (output_mask[2]) grad_bias.zero_();
    return {grad_input, grad_weight, grad_bias};
  }
  if (N == 0) {  // no outputs: nothing flows back
    if (output_mask[0]) grad_input.zero_();
    return {grad_input, grad_weight, grad_bias};
  }
  if (!output_mask[0] && !output_mask[1] && !output_mask[2]) return {grad_input, grad_weight, grad_bias};

  const at::Tensor go = grad_output.reshape({M, N});
  const at::Tensor x = input.reshape({M, K});
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  // g = grad_output * act'(preact) (grad_output itself for act == none; stored
  // only when a GEMM needs it), and the bias gradient's column partials, in one pass.
  at::Tensor g = go;
  const bool store_g = ak != Act::None && (output_mask[0] || output_mask[1]);
  const bool need_db = output_mask[2];
  if (store_g || need_db) {
    const at::Tensor pre = ak != Act::None ? preact.reshape({M, N}) : at::Tensor();
    if (store_g) g = at::empty({M, N}, opts);
    // Row blocks of about 128 rows, at most kMaxRowBlocks of them: fixed for a
    // given M, so the summation order does not depend on the device.
    const int64_t P = std::min<int64_t>(ceil_div(M, 128), kMaxRowBlocks);
    const int64_t rows_per = ceil_div(M, P);
    const auto acc_dtype = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    const at::Tensor part = need_db ? at::empty({P, N}, opts.dtype(acc_dtype)) : at::Tensor();
    with_traits(input.scalar_type(), [&](auto tr) {
      using Tr = decltype(tr);
      using S = typename Tr::S;
      using A = typename Tr::A;
      const bool act_on = ak != Act::None;
      const dim3 grid(static_cast<unsigned>(ceil_div(N, kColTile)), static_cast<unsigned>(P));
      act_grad_colsum_kernel<Tr><<<grid, dim3(kColTile, kRowLanes), 0, stream>>>(
          static_cast<const S*>(go.const_data_ptr()), go.stride(0), go.stride(1),
          act_on ? static_cast<const S*>(pre.const_data_ptr()) : nullptr, act_on ? pre.stride(0) : 0,
          act_on ? pre.stride(1) : 0, store_g ? static_cast<S*>(g.data_ptr()) : nullptr,
          need_db ? static_cast<A*>(part.data_ptr()) : nullptr, M, N, rows_per, ak, static_cast<A>(slope));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (need_db) {
        colsum_finish_kernel<Tr><<<static_cast<unsigned>(ceil_div(N, 256)), 256, 0, stream>>>(
            static_cast<const A*>(part.const_data_ptr()), P, N, static_cast<S*>(grad_bias.data_ptr()));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }

  if (output_mask[0]) run_gemm(g, weight, std::nullopt, 1.0, 0.0, std::nullopt, 1, Act::None, 0.0,
                               grad_input.view({M, K}));  // dx = g @ W
  if (output_mask[1]) run_gemm(g.t(), x, std::nullopt, 1.0, 0.0, std::nullopt, 1, Act::None, 0.0,
                               grad_weight);  // dW = g^T @ x
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(minitorch_ext, CUDA, m) {
  m.impl("gemm", &gemm_cuda);
  m.impl("linear_fwd", &linear_fwd_cuda);
  m.impl("linear_bwd", &linear_bwd_cuda);
}
