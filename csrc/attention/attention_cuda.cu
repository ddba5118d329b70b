// The attention family on CUDA: torch.ops.minitorch_ext.{attention_fwd, attention_bwd,
// attention_weights}, FlashAttention-2 style (Dao, "FlashAttention-2: Faster Attention
// with Better Parallelism and Work Partitioning", 2023). Semantics: the end of
// csrc/ops.cpp (normalized 4-D layout, GQA, strided/broadcast mask, top-left causal,
// empty rows, Philox dropout).
//
//     S = scale * Q K^T + mask,  P = softmax(S),  O = dropout(P) V
//
// Nothing of size Lq x Lk is ever stored (except grad_attn_mask, when asked for, and
// attention_weights' output): P is rebuilt block by block from the forward's
// logsumexp, the dropout mask from (seed, counter) by Philox4x32-10.
//
// bfloat16 / float16: tensor cores, mma.sync m16n8k16 with float32 accumulators,
// fragments read from shared memory with ldmatrix(.trans), tiles filled with cp.async
// (16-byte copies with zero-fill; strided or misaligned operands take element loads
// into the same layout, as gemm_cuda.cu). 4 warps (128 threads) per block, each warp
// owns 16 rows of the block's output; the head dimension is padded to HD = 64, 128 or
// 256 (zero-filled in shared memory, so padding contributes exact zeros); D and Dv may
// differ (both padded to the same HD). A block's output columns are a slice of HO =
// min(HD, 128) columns; HD = 256 runs two slices (a second grid slot) that recompute
// the scores: twice the QK^T work at D > 128, but the accumulators stay in registers
// without spilling.
//
// * fwd_tc_kernel: one block per (64 query rows, b, h, slice). Q [64 x HD] staged
//   once; per key block (64 keys) K [64 x HD] and the V slice [64 x HO] are staged
//   (two cp.async groups: the QK^T product and the softmax run while V lands).
//   Online softmax in the log2 domain (scores times scale*log2e, exp2f, as FA2);
//   each thread holds two rows of the 16x64 score tile and reduces over its quad.
//   The probabilities are converted in registers from the accumulator layout to the
//   A-operand layout of the next mma (the FA2 register trick: no trip through shared
//   memory). O is rescaled by 1/l and 1/(1-p) once at the end; logsumexp =
//   (m + log2 l) * ln 2 is written by slice 0. Memory: Q read once, K and V once per
//   query block (from L2 after the first), O and logsumexp written once.
// * delta_kernel: D_i = rowsum(dO * O) in the accumulator type, one warp per row.
// * dkdv_tc_kernel: one block per (64 keys, b, hkv, slice); K and V [64 x HD] stay
//   in shared memory while the block loops over the group's query heads (GQA: no
//   atomics, the group's sum is this loop) and their query blocks of BQ rows (BQ = 64
//   for HO = 64, 32 for HO = 128); per query block Q, dO, logsumexp and D are staged.
//   Each warp computes 16 keys x BQ of S^T = K Q^T and dP^T = V dO^T, rebuilds
//   P^T = exp2(S^T - lse), dS^T = P^T (dP^T Z - D), and accumulates dV += (P Z)^T dO
//   and dK += dS^T Q in registers, where Z is the dropout's keep mask times 1/(1-p).
//   grad_attn_mask = dS is stored from here (slice 0): every (h, i, j) is visited
//   once. Causal blocks skip the query blocks wholly above the diagonal (the host
//   zero-fills grad_attn_mask first in that case).
// * dq_tc_kernel: one block per (64 query rows, b, h, slice), a loop over key blocks
//   of 32: S, dP, dS as above, dQ += dS K in registers.
// float32 / float64: SIMT kernels, one warp per output row (lanes across the head
// dimension, up to 8 values a lane, a butterfly shuffle sum per dot product: the same
// fixed order in every lane and every run), float32 (float64) math. Simple and
// correct: float64 serves gradcheck on GPU; float32 is not tuned.
// attention_weights: one thread per element of P (any dtype), dot product in the
// accumulator type, exp2 of the score minus logsumexp.
//
// Exactness rules: masked, causal and out-of-range scores become -inf by predicate
// (never by multiplying), the running max of a row with nothing yet is replaced by 0
// before it is subtracted (no -inf - -inf), an empty row (all masked, all -inf, or
// Lk == 0) gives O = 0 and logsumexp = +inf, and backward P = exp2(s - lse) is then
// exactly 0, dS is set to 0 where P is 0 (no 0 * inf). dropout_p == 1 keeps nothing
// (1/(1-p) is never formed). No atomics, no split reductions: bitwise repeatable.
// Dropout: element (b, h, i, j) is dropped iff word c & 3 of
// Philox4x32-10(key = seed, counter = c >> 2) < thresh, c = ((b*Hq + h)*Lq + i)*Lk + j,
// regenerated identically in forward and both backward kernels (matches
// minitorch_ext/_philox.py, the CPU and the Triton kernels bit for bit).
//
// Instantiations (template fan-out): tensor cores 3 kernels x 2 dtypes x 3 head dims
// = 18; SIMT 3 kernels x 2 dtypes = 6; delta 4 and weights 4 (one per dtype):
// 32 kernels in all.
//
// Registers (nvcc 13.0, setup.py's nvcc flags + torch's, -Xptxas -v, sm_90; bf16 and
// fp16 alike; 0 bytes spilled everywhere):
//                      HD=64   HD=128  HD=256   shared memory (dynamic) at 64/128/256
//   fwd_tc_kernel       189     254     254      27 / 51 / 85 KB
//   dkdv_tc_kernel      242     251     244      37 / 51 / 101 KB
//   dq_tc_kernel        176     170     240      37 / 51 / 101 KB
//   SIMT fwd / dkdv / dq: f32 113 / 181 / 134, f64 151 / 248 / 165; delta 40, weights 32-39.
// sm_80 (checked before fwd's Philox call was split out): the same within ~10 registers, but
// fwd spills 40 B (HD=128) / 216 B (HD=256) and dkdv 20 B / 48 B there.
// One sm_90 compile of this file takes ~2 min of CPU (2m4s user) on the 2-core build machine.
// The register counts are high for the accumulator sizes (the unrolled per-element mask,
// causal and dropout predicates are scheduled for ILP): one block of 4 warps needs 32K
// registers, so at most 2 blocks per SM. Tuning (register caps, K/V double buffering
// across iterations, wider key blocks, packed-mask reads) is left for when a GPU can
// measure it.
//
// Headers: c10/cuda only (as norm_cuda.cu and gemm_cuda.cu).
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
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>

#include "common/alloc.h"
#include "common/checks.h"
#include "common/philox_cuda.cuh"

namespace {

// ---------------------------------------------------------------------------
// dtypes: storage type S, accumulator type A
// ---------------------------------------------------------------------------

struct Bf16 {
  using S = uint16_t;  // raw bits (torch builds with __CUDA_NO_*_CONVERSIONS__)
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

__device__ __forceinline__ float ex2(float x) { return exp2f(x); }  // ex2.approx: exp2(-inf) == 0
__device__ __forceinline__ double ex2(double x) { return exp2(x); }
__device__ __forceinline__ float lg2(float x) { return log2f(x); }
__device__ __forceinline__ double lg2(double x) { return log2(x); }
template <class A>
__device__ __forceinline__ A ninf() {
  return -std::numeric_limits<A>::infinity();
}
template <class A>
__device__ __forceinline__ A pinf() {
  return std::numeric_limits<A>::infinity();
}

constexpr double kLog2e = 1.4426950408889634074;
constexpr double kLn2 = 0.69314718055994530942;

// philox_w0 (the dropout word of element c): csrc/common/philox_cuda.cuh

// Everything a launch needs. Strides in elements; outputs contiguous.
struct Params {
  const void* q;
  const void* k;
  const void* v;
  const void* mask;  // bool (uint8) or the input dtype; mask_kind 1 / 2
  const void* dout;  // backward: grad_output, any strides
  const void* o;     // backward (delta): the forward output, any strides
  const void* lse;   // [B, Hq, Lq] contiguous, accumulator type
  const void* delta;
  void* out;  // fwd: O; weights: P
  void* out_lse;
  void* out_delta;
  void* dq;
  void* dk;
  void* dv;
  void* dmask;
  int64_t sq[4], sk[4], sv[4], sm[4], sdo[4], so[4];
  int64_t B, Hq, Hkv, Lq, Lk, D, Dv, group;
  double scale;
  int mask_kind;
  bool causal;
  bool dropout, drop_all;
  uint32_t thresh, seed_lo, seed_hi;
  double keep_scale;  // 1/(1-p), 0 when p == 1
  bool q_vec, k_vec, v_vec, do_vec;
};

// Whether (b, h, i, j) takes part, and the additive mask value.
template <class Tr>
__device__ __forceinline__ bool takes_part(const Params& p, int64_t b, int64_t h, int64_t i, int64_t j,
                                           typename Tr::A& madd) {
  madd = 0;
  if (i >= p.Lq || j >= p.Lk || (p.causal && j > i)) return false;
  if (p.mask_kind == 0) return true;
  const int64_t off = b * p.sm[0] + h * p.sm[1] + i * p.sm[2] + j * p.sm[3];
  if (p.mask_kind == 1) return static_cast<const uint8_t*>(p.mask)[off] != 0;
  madd = Tr::load(static_cast<const typename Tr::S*>(p.mask)[off]);
  return true;
}

// The same, not inlined: the forward tensor-core kernel calls it for 32 elements of an
// unrolled tile, and 32 inlined copies cost it ~55 registers (243 -> 189 at HD = 64, and
// no spill at HD = 128 on sm_90); in the backward kernels the call's register saves spill
// instead, so they inline it.
__device__ __noinline__ uint32_t philox_w0_call(uint32_t k0, uint32_t k1, uint64_t c) {
  return philox_w0(k0, k1, c);
}

template <bool kCall = false>
__device__ __forceinline__ bool kept(const Params& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  if (!p.dropout) return true;
  if (p.drop_all) return false;
  const uint64_t c = static_cast<uint64_t>(((b * p.Hq + h) * p.Lq + i) * p.Lk + j);
  return (kCall ? philox_w0_call(p.seed_lo, p.seed_hi, c) : philox_w0(p.seed_lo, p.seed_hi, c)) >= p.thresh;
}

template <class A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;  // a butterfly: every lane adds the same pairs, so every lane holds the same sum
}

// ---------------------------------------------------------------------------
// tensor-core helpers (as gemm_cuda.cu)
// ---------------------------------------------------------------------------

constexpr int kThreads = 128;  // 4 warps
constexpr int kPad = 8;        // 16 bytes per staged row: ldmatrix phases hit distinct bank groups

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
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

template <class Tr>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  return static_cast<uint32_t>(Tr::store(lo)) | (static_cast<uint32_t>(Tr::store(hi)) << 16);
}

// Stages a ROWS x COLS tile (row length COLS + kPad) from src, element (r, c) =
// src[(r0+r)*s_row + (c0+c)*s_col], zero outside rows < R, cols < C. 8-element
// chunks: one cp.async each with `vec` (s_col == 1, 16-byte aligned rows), else loads.
template <int ROWS, int COLS>
__device__ __forceinline__ void stage_tile(uint16_t* smem, const uint16_t* src, int64_t s_row, int64_t s_col,
                                           int64_t r0, int64_t c0, int64_t R, int64_t C, bool vec) {
  constexpr int kChunksPerRow = COLS / 8;
  constexpr int kChunks = ROWS * kChunksPerRow;
  static_assert(kChunks % kThreads == 0, "whole chunks per thread");
#pragma unroll
  for (int it = 0; it < kChunks / kThreads; ++it) {
    const int ch = static_cast<int>(threadIdx.x) + it * kThreads;
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

// acc[NT] (16 x NT*8) += A (16 x KD, smem [m][k], from a) * B^T (B smem [n][k], from b).
template <class Tr, int NT, int KD>
__device__ __forceinline__ void mma_ss(float (&acc)[NT][4], const uint16_t* a, int lda, const uint16_t* b, int ldb,
                                       int lane) {
  static_assert(NT % 2 == 0 && KD % 16 == 0, "tile shape");
  const int l8 = lane % 8, l16 = lane % 16, hi8 = (lane / 16) * 8, mid8 = ((lane / 8) % 2) * 8;
#pragma unroll
  for (int kk = 0; kk < KD; kk += 16) {
    uint32_t af[4];
    ldmatrix_x4(af, a + l16 * lda + kk + hi8);
#pragma unroll
    for (int nj = 0; nj < NT / 2; ++nj) {
      uint32_t r[4];
      ldmatrix_x4(r, b + (nj * 16 + l8 + hi8) * ldb + kk + mid8);
      mma_16816<Tr>(acc[2 * nj], af, r[0], r[1]);
      mma_16816<Tr>(acc[2 * nj + 1], af, r[2], r[3]);
    }
  }
}

// acc[NT] (16 x NT*8) += P (16 x KP, accumulator-layout registers pc, rounded to Tr)
//                         * B (smem [k][n], from b: rows 0..KP, NT*8 columns).
template <class Tr, int NT, int KP>
__device__ __forceinline__ void mma_rs(float (&acc)[NT][4], const float (&pc)[KP / 8][4], const uint16_t* b, int ldb,
                                       int lane) {
  static_assert(NT % 2 == 0 && KP % 16 == 0, "tile shape");
  const int l8 = lane % 8, hi8 = (lane / 16) * 8, mid8 = ((lane / 8) % 2) * 8;
#pragma unroll
  for (int ks = 0; ks < KP / 16; ++ks) {
    // accumulator layout (row g / g+8, cols 2t, 2t+1 of two n8 tiles) == A-operand layout
    const uint32_t af[4] = {pack2<Tr>(pc[2 * ks][0], pc[2 * ks][1]), pack2<Tr>(pc[2 * ks][2], pc[2 * ks][3]),
                            pack2<Tr>(pc[2 * ks + 1][0], pc[2 * ks + 1][1]),
                            pack2<Tr>(pc[2 * ks + 1][2], pc[2 * ks + 1][3])};
#pragma unroll
    for (int nj = 0; nj < NT / 2; ++nj) {
      uint32_t r[4];
      ldmatrix_x4_trans(r, b + (ks * 16 + l8 + mid8) * ldb + nj * 16 + hi8);
      mma_16816<Tr>(acc[2 * nj], af, r[0], r[1]);
      mma_16816<Tr>(acc[2 * nj + 1], af, r[2], r[3]);
    }
  }
}

template <int NT>
__device__ __forceinline__ void zero_acc(float (&acc)[NT][4]) {
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.f;
}

template <int HD>
struct TcShape {
  static constexpr int HO = HD < 128 ? HD : 128;  // output columns per block (slice)
  static constexpr int LDH = HD + kPad;
  static constexpr int LDO = HO + kPad;
  static constexpr int kFwdBM = 64, kFwdBN = 64;
  static constexpr int kKvBN = 64, kKvBQ = HO >= 128 ? 32 : 64;
  static constexpr int kDqBM = 64, kDqBN = HO >= 128 ? 32 : 64;
  static constexpr size_t kFwdSmem = size_t(kFwdBM * LDH + kFwdBN * LDH + kFwdBN * LDO) * 2;
  static constexpr size_t kKvSmem = size_t(2 * kKvBN * LDH + 2 * kKvBQ * LDH) * 2 + 2 * kKvBQ * sizeof(float);
  static constexpr size_t kDqSmem = size_t(2 * kDqBM * LDH + 2 * kDqBN * LDH) * 2;
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define MTE_TC_UNSUPPORTED 1
#endif

// ---- forward ------------------------------------------------------------------

template <class Tr, int HD>
__global__ void __launch_bounds__(kThreads) fwd_tc_kernel(const Params p, int64_t n_qb, int n_slices) {
#ifdef MTE_TC_UNSUPPORTED
  __trap();
#else
  using Sh = TcShape<HD>;
  constexpr int BM = Sh::kFwdBM, BN = Sh::kFwdBN, HO = Sh::HO, LDH = Sh::LDH, LDO = Sh::LDO;
  constexpr int NS = BN / 8, NO = HO / 8;
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* const sQ = smem;
  uint16_t* const sK = sQ + BM * LDH;
  uint16_t* const sV = sK + BN * LDH;

  int64_t idx = blockIdx.x;
  const int slice = static_cast<int>(idx % n_slices);
  idx /= n_slices;
  const int64_t qb = idx % n_qb;
  const int64_t bh = idx / n_qb;
  const int64_t b = bh / p.Hq, h = bh % p.Hq, hk = h / p.group;
  const int64_t i0 = qb * BM;
  const int c0 = slice * HO;
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int g = lane / 4, t = lane % 4;

  const uint16_t* q = static_cast<const uint16_t*>(p.q) + b * p.sq[0] + h * p.sq[1];
  const uint16_t* k = static_cast<const uint16_t*>(p.k) + b * p.sk[0] + hk * p.sk[1];
  const uint16_t* v = static_cast<const uint16_t*>(p.v) + b * p.sv[0] + hk * p.sv[1];

  stage_tile<BM, HD>(sQ, q, p.sq[2], p.sq[3], i0, 0, p.Lq, p.D, p.q_vec);
  cp_async_commit();

  const float sl2 = static_cast<float>(p.scale * kLog2e);
  const float l2e = static_cast<float>(kLog2e);
  float m[2] = {ninf<float>(), ninf<float>()}, l[2] = {0.f, 0.f};
  float o[NO][4];
  zero_acc(o);

  const int64_t i_last = std::min<int64_t>(i0 + BM, p.Lq);  // one past the block's last row
  const int64_t kend = p.causal ? std::min<int64_t>(p.Lk, i_last) : p.Lk;
  const int64_t n_kb = (kend + BN - 1) / BN;
  int64_t rows[2];
  rows[0] = i0 + warp * 16 + g;
  rows[1] = rows[0] + 8;

  for (int64_t kb = 0; kb < n_kb; ++kb) {
    const int64_t j0 = kb * BN;
    __syncthreads();  // every warp is done with the previous K and V
    stage_tile<BN, HD>(sK, k, p.sk[2], p.sk[3], j0, 0, p.Lk, p.D, p.k_vec);
    cp_async_commit();
    stage_tile<BN, HO>(sV, v, p.sv[2], p.sv[3], j0, c0, p.Lk, p.Dv, p.v_vec);
    cp_async_commit();
    cp_async_wait<1>();  // Q and K
    __syncthreads();

    float s[NS][4];
    zero_acc(s);
    mma_ss<Tr, NS, HD>(s, sQ + warp * 16 * LDH, LDH, sK, LDH, lane);

    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int n = 0; n < NS; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t i = rows[e / 2], j = j0 + n * 8 + 2 * t + (e & 1);
        float madd;
        const bool ok = takes_part<Tr>(p, b, h, i, j, madd);
        const float x = ok ? s[n][e] * sl2 + madd * l2e : ninf<float>();
        s[n][e] = x;
        mx[e / 2] = fmaxf(mx[e / 2], x);
      }
    float alpha[2], mu[2], rs[2] = {0.f, 0.f};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      mu[r] = mx[r] == ninf<float>() ? 0.f : mx[r];  // nothing in this row yet: subtract 0
      alpha[r] = ex2(m[r] - mu[r]);                   // m == -inf: 0 (o and l are 0 anyway)
      m[r] = mx[r];
    }
#pragma unroll
    for (int n = 0; n < NS; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pe = ex2(s[n][e] - mu[e / 2]);  // exp2(-inf) == 0
        rs[e / 2] += pe;
        s[n][e] = pe;
      }
    if (p.dropout) {
#pragma unroll
      for (int n = 0; n < NS; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t i = rows[e / 2], j = j0 + n * 8 + 2 * t + (e & 1);
          if (s[n][e] != 0.f && !kept<true>(p, b, h, i, j)) s[n][e] = 0.f;
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 1);
      rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 2);
      l[r] = l[r] * alpha[r] + rs[r];
    }
#pragma unroll
    for (int n = 0; n < NO; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[n][e] *= alpha[e / 2];

    cp_async_wait<0>();  // V
    __syncthreads();
    mma_rs<Tr, NO, BN>(o, s, sV, LDO, lane);
  }
  cp_async_wait<0>();  // (Lk == 0: the Q copy is still to be retired)

  using S = typename Tr::S;
  S* out = static_cast<S*>(p.out) + bh * p.Lq * p.Dv;
  const float ks = static_cast<float>(p.keep_scale);
  float f[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) f[r] = l[r] > 0.f ? (p.dropout ? ks : 1.f) / l[r] : 0.f;
#pragma unroll
  for (int n = 0; n < NO; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t i = rows[e / 2];
      const int64_t col = c0 + n * 8 + 2 * t + (e & 1);
      if (i < p.Lq && col < p.Dv) out[i * p.Dv + col] = Tr::store(o[n][e] * f[e / 2]);
    }
  if (slice == 0 && t == 0) {
    float* lse = static_cast<float*>(p.out_lse) + bh * p.Lq;
#pragma unroll
    for (int r = 0; r < 2; ++r)
      if (rows[r] < p.Lq) lse[rows[r]] = l[r] > 0.f ? (m[r] + lg2(l[r])) * static_cast<float>(kLn2) : pinf<float>();
  }
#endif
}

// ---- backward: D = rowsum(dO * O) --------------------------------------------------

template <class Tr>
__global__ void __launch_bounds__(kThreads) delta_kernel(const Params p) {
  using A = typename Tr::A;
  using S = typename Tr::S;
  const int64_t row = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  if (row >= p.B * p.Hq * p.Lq) return;
  const int64_t i = row % p.Lq, bh = row / p.Lq, b = bh / p.Hq, h = bh % p.Hq;
  const S* dout = static_cast<const S*>(p.dout) + b * p.sdo[0] + h * p.sdo[1] + i * p.sdo[2];
  const S* o = static_cast<const S*>(p.o) + b * p.so[0] + h * p.so[1] + i * p.so[2];
  A acc = 0;
  for (int64_t d = lane; d < p.Dv; d += 32) acc += Tr::load(dout[d * p.sdo[3]]) * Tr::load(o[d * p.so[3]]);
  acc = warp_sum(acc);
  if (lane == 0) static_cast<A*>(p.out_delta)[row] = acc;
}

// ---- backward: dK, dV (and grad_attn_mask) ----------------------------------------

template <class Tr, int HD>
__global__ void __launch_bounds__(kThreads) dkdv_tc_kernel(const Params p, int64_t n_kb, int n_slices) {
#ifdef MTE_TC_UNSUPPORTED
  __trap();
#else
  using Sh = TcShape<HD>;
  using S = typename Tr::S;
  constexpr int BN = Sh::kKvBN, BQ = Sh::kKvBQ, HO = Sh::HO, LDH = Sh::LDH;
  constexpr int NQ = BQ / 8, NO = HO / 8;
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* const sK = smem;
  uint16_t* const sV = sK + BN * LDH;
  uint16_t* const sQ = sV + BN * LDH;
  uint16_t* const sdO = sQ + BQ * LDH;
  float* const sL = reinterpret_cast<float*>(sdO + BQ * LDH);  // lse * log2e of the BQ rows
  float* const sD = sL + BQ;                                   // delta

  int64_t idx = blockIdx.x;
  const int slice = static_cast<int>(idx % n_slices);
  idx /= n_slices;
  const int64_t kb = idx % n_kb;
  const int64_t bhk = idx / n_kb;
  const int64_t b = bhk / p.Hkv, hk = bhk % p.Hkv;
  const int64_t j0 = kb * BN;
  const int c0 = slice * HO;
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int g = lane / 4, t = lane % 4;

  const uint16_t* k = static_cast<const uint16_t*>(p.k) + b * p.sk[0] + hk * p.sk[1];
  const uint16_t* v = static_cast<const uint16_t*>(p.v) + b * p.sv[0] + hk * p.sv[1];
  stage_tile<BN, HD>(sK, k, p.sk[2], p.sk[3], j0, 0, p.Lk, p.D, p.k_vec);
  stage_tile<BN, HD>(sV, v, p.sv[2], p.sv[3], j0, 0, p.Lk, p.Dv, p.v_vec);
  cp_async_commit();

  const float sl2 = static_cast<float>(p.scale * kLog2e);
  const float l2e = static_cast<float>(kLog2e);
  const float ks = static_cast<float>(p.keep_scale);
  float dk[NO][4], dv[NO][4];
  zero_acc(dk);
  zero_acc(dv);
  int64_t keys[2];
  keys[0] = j0 + warp * 16 + g;
  keys[1] = keys[0] + 8;
  const bool write_mask = p.dmask != nullptr && slice == 0;
  const int64_t qb0 = p.causal ? j0 / BQ : 0;
  const int64_t n_qb = (p.Lq + BQ - 1) / BQ;

  for (int64_t hh = 0; hh < p.group; ++hh) {
    const int64_t h = hk * p.group + hh;
    const uint16_t* q = static_cast<const uint16_t*>(p.q) + b * p.sq[0] + h * p.sq[1];
    const uint16_t* dout = static_cast<const uint16_t*>(p.dout) + b * p.sdo[0] + h * p.sdo[1];
    const float* lse = static_cast<const float*>(p.lse) + (b * p.Hq + h) * p.Lq;
    const float* delta = static_cast<const float*>(p.delta) + (b * p.Hq + h) * p.Lq;
    for (int64_t qb = qb0; qb < n_qb; ++qb) {
      const int64_t i0 = qb * BQ;
      __syncthreads();  // every warp is done with the previous Q, dO
      stage_tile<BQ, HD>(sQ, q, p.sq[2], p.sq[3], i0, 0, p.Lq, p.D, p.q_vec);
      stage_tile<BQ, HD>(sdO, dout, p.sdo[2], p.sdo[3], i0, 0, p.Lq, p.Dv, p.do_vec);
      cp_async_commit();
      for (int r = static_cast<int>(threadIdx.x); r < BQ; r += kThreads) {
        const int64_t i = i0 + r;
        sL[r] = i < p.Lq ? lse[i] * l2e : pinf<float>();
        sD[r] = i < p.Lq ? delta[i] : 0.f;
      }
      cp_async_wait<0>();
      __syncthreads();

      float st[NQ][4], dpt[NQ][4];  // S^T, dP^T: 16 keys x BQ queries
      zero_acc(st);
      zero_acc(dpt);
      mma_ss<Tr, NQ, HD>(st, sK + warp * 16 * LDH, LDH, sQ, LDH, lane);
      mma_ss<Tr, NQ, HD>(dpt, sV + warp * 16 * LDH, LDH, sdO, LDH, lane);
#pragma unroll
      for (int n = 0; n < NQ; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int ci = n * 8 + 2 * t + (e & 1);
          const int64_t i = i0 + ci, j = keys[e / 2];
          float madd;
          const bool ok = takes_part<Tr>(p, b, h, i, j, madd);
          const float pe = ok ? ex2(st[n][e] * sl2 + madd * l2e - sL[ci]) : 0.f;
          float ds = 0.f, pz = pe;
          if (pe != 0.f) {
            const bool keep = kept(p, b, h, i, j);
            const float dpz = keep ? dpt[n][e] * (p.dropout ? ks : 1.f) : 0.f;
            pz = keep ? pe : 0.f;
            ds = pe * (dpz - sD[ci]);
          }
          if (write_mask && i < p.Lq && j < p.Lk)
            static_cast<S*>(p.dmask)[((b * p.Hq + h) * p.Lq + i) * p.Lk + j] = Tr::store(ds);
          st[n][e] = pz;  // P^T Z (without 1/(1-p): applied to dV at the end)
          dpt[n][e] = ds;
        }
      mma_rs<Tr, NO, BQ>(dv, st, sdO + c0, LDH, lane);
      mma_rs<Tr, NO, BQ>(dk, dpt, sQ + c0, LDH, lane);
    }
  }
  cp_async_wait<0>();

  const float fk = static_cast<float>(p.scale), fv = p.dropout ? ks : 1.f;
  S* gk = static_cast<S*>(p.dk) + bhk * p.Lk * p.D;
  S* gv = static_cast<S*>(p.dv) + bhk * p.Lk * p.Dv;
#pragma unroll
  for (int n = 0; n < NO; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t j = keys[e / 2];
      const int64_t col = c0 + n * 8 + 2 * t + (e & 1);
      if (j >= p.Lk) continue;
      if (p.dk != nullptr && col < p.D) gk[j * p.D + col] = Tr::store(dk[n][e] * fk);
      if (p.dv != nullptr && col < p.Dv) gv[j * p.Dv + col] = Tr::store(dv[n][e] * fv);
    }
#endif
}

// ---- backward: dQ ---------------------------------------------------------------------

template <class Tr, int HD>
__global__ void __launch_bounds__(kThreads) dq_tc_kernel(const Params p, int64_t n_qb, int n_slices) {
#ifdef MTE_TC_UNSUPPORTED
  __trap();
#else
  using Sh = TcShape<HD>;
  using S = typename Tr::S;
  constexpr int BM = Sh::kDqBM, BN = Sh::kDqBN, HO = Sh::HO, LDH = Sh::LDH;
  constexpr int NS = BN / 8, NO = HO / 8;
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* const sQ = smem;
  uint16_t* const sdO = sQ + BM * LDH;
  uint16_t* const sK = sdO + BM * LDH;
  uint16_t* const sV = sK + BN * LDH;

  int64_t idx = blockIdx.x;
  const int slice = static_cast<int>(idx % n_slices);
  idx /= n_slices;
  const int64_t qb = idx % n_qb;
  const int64_t bh = idx / n_qb;
  const int64_t b = bh / p.Hq, h = bh % p.Hq, hk = h / p.group;
  const int64_t i0 = qb * BM;
  const int c0 = slice * HO;
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int g = lane / 4, t = lane % 4;

  const uint16_t* q = static_cast<const uint16_t*>(p.q) + b * p.sq[0] + h * p.sq[1];
  const uint16_t* dout = static_cast<const uint16_t*>(p.dout) + b * p.sdo[0] + h * p.sdo[1];
  const uint16_t* k = static_cast<const uint16_t*>(p.k) + b * p.sk[0] + hk * p.sk[1];
  const uint16_t* v = static_cast<const uint16_t*>(p.v) + b * p.sv[0] + hk * p.sv[1];
  stage_tile<BM, HD>(sQ, q, p.sq[2], p.sq[3], i0, 0, p.Lq, p.D, p.q_vec);
  stage_tile<BM, HD>(sdO, dout, p.sdo[2], p.sdo[3], i0, 0, p.Lq, p.Dv, p.do_vec);
  cp_async_commit();

  const float sl2 = static_cast<float>(p.scale * kLog2e);
  const float l2e = static_cast<float>(kLog2e);
  const float ks = static_cast<float>(p.keep_scale);
  int64_t rows[2];
  rows[0] = i0 + warp * 16 + g;
  rows[1] = rows[0] + 8;
  float lse2[2], dl[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool in = rows[r] < p.Lq;
    lse2[r] = in ? static_cast<const float*>(p.lse)[bh * p.Lq + rows[r]] * l2e : pinf<float>();
    dl[r] = in ? static_cast<const float*>(p.delta)[bh * p.Lq + rows[r]] : 0.f;
  }
  float dq[NO][4];
  zero_acc(dq);

  const int64_t i_last = std::min<int64_t>(i0 + BM, p.Lq);
  const int64_t kend = p.causal ? std::min<int64_t>(p.Lk, i_last) : p.Lk;
  const int64_t n_kb = (kend + BN - 1) / BN;
  for (int64_t kb = 0; kb < n_kb; ++kb) {
    const int64_t j0 = kb * BN;
    __syncthreads();
    stage_tile<BN, HD>(sK, k, p.sk[2], p.sk[3], j0, 0, p.Lk, p.D, p.k_vec);
    stage_tile<BN, HD>(sV, v, p.sv[2], p.sv[3], j0, 0, p.Lk, p.Dv, p.v_vec);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    float s[NS][4], dp[NS][4];
    zero_acc(s);
    zero_acc(dp);
    mma_ss<Tr, NS, HD>(s, sQ + warp * 16 * LDH, LDH, sK, LDH, lane);
    mma_ss<Tr, NS, HD>(dp, sdO + warp * 16 * LDH, LDH, sV, LDH, lane);
#pragma unroll
    for (int n = 0; n < NS; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t i = rows[e / 2], j = j0 + n * 8 + 2 * t + (e & 1);
        float madd;
        const bool ok = takes_part<Tr>(p, b, h, i, j, madd);
        const float pe = ok ? ex2(s[n][e] * sl2 + madd * l2e - lse2[e / 2]) : 0.f;
        float ds = 0.f;
        if (pe != 0.f) {
          const bool keep = kept(p, b, h, i, j);
          const float dpz = keep ? dp[n][e] * (p.dropout ? ks : 1.f) : 0.f;
          ds = pe * (dpz - dl[e / 2]);
        }
        s[n][e] = ds;
      }
    mma_rs<Tr, NO, BN>(dq, s, sK + c0, LDH, lane);
  }
  cp_async_wait<0>();

  S* gq = static_cast<S*>(p.dq) + bh * p.Lq * p.D;
  const float fq = static_cast<float>(p.scale);
#pragma unroll
  for (int n = 0; n < NO; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t i = rows[e / 2];
      const int64_t col = c0 + n * 8 + 2 * t + (e & 1);
      if (i < p.Lq && col < p.D) gq[i * p.D + col] = Tr::store(dq[n][e] * fq);
    }
#endif
}

// ---------------------------------------------------------------------------
// SIMT: float32 / float64, one warp per row, lanes across the head dimension
// ---------------------------------------------------------------------------

constexpr int kMaxPerLane = 8;  // head dims up to 256

template <class Tr>
__device__ __forceinline__ void load_row(typename Tr::A (&x)[kMaxPerLane], const typename Tr::S* row, int64_t stride,
                                         int64_t n, int lane) {
#pragma unroll
  for (int r = 0; r < kMaxPerLane; ++r) {
    const int64_t d = lane + 32 * r;
    x[r] = d < n ? Tr::load(row[d * stride]) : typename Tr::A(0);
  }
}

template <class Tr>
__device__ __forceinline__ typename Tr::A dot_row(const typename Tr::A (&x)[kMaxPerLane], const typename Tr::S* row,
                                                  int64_t stride, int64_t n, int lane) {
  typename Tr::A acc = 0;
#pragma unroll
  for (int r = 0; r < kMaxPerLane; ++r) {
    const int64_t d = lane + 32 * r;
    if (d < n) acc += x[r] * Tr::load(row[d * stride]);
  }
  return warp_sum(acc);
}

template <class Tr>
__global__ void __launch_bounds__(kThreads) fwd_simt_kernel(const Params p) {
  using A = typename Tr::A;
  using S = typename Tr::S;
  const int64_t row = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  if (row >= p.B * p.Hq * p.Lq) return;
  const int64_t i = row % p.Lq, bh = row / p.Lq, b = bh / p.Hq, h = bh % p.Hq, hk = h / p.group;
  const S* k = static_cast<const S*>(p.k) + b * p.sk[0] + hk * p.sk[1];
  const S* v = static_cast<const S*>(p.v) + b * p.sv[0] + hk * p.sv[1];
  A q[kMaxPerLane], o[kMaxPerLane];
  load_row<Tr>(q, static_cast<const S*>(p.q) + b * p.sq[0] + h * p.sq[1] + i * p.sq[2], p.sq[3], p.D, lane);
#pragma unroll
  for (int r = 0; r < kMaxPerLane; ++r) o[r] = 0;
  const A sl2 = static_cast<A>(p.scale * kLog2e), l2e = static_cast<A>(kLog2e);
  A m = ninf<A>(), l = 0;
  const int64_t kend = p.causal ? std::min<int64_t>(p.Lk, i + 1) : p.Lk;
  for (int64_t j = 0; j < kend; ++j) {
    A madd;
    if (!takes_part<Tr>(p, b, h, i, j, madd)) continue;  // uniform across the warp
    const A s = dot_row<Tr>(q, k + j * p.sk[2], p.sk[3], p.D, lane) * sl2 + madd * l2e;
    if (s == ninf<A>()) continue;
    const A mn = s > m ? s : m;
    const A alpha = ex2(m - mn);  // m == -inf: 0
    const A pe = ex2(s - mn);
    m = mn;
    l = l * alpha + pe;
    const A pz = kept(p, b, h, i, j) ? pe : A(0);
    const S* vr = v + j * p.sv[2];
#pragma unroll
    for (int r = 0; r < kMaxPerLane; ++r) {
      const int64_t d = lane + 32 * r;
      o[r] = o[r] * alpha + (d < p.Dv ? pz * Tr::load(vr[d * p.sv[3]]) : A(0));
    }
  }
  const A f = l > 0 ? (p.dropout ? static_cast<A>(p.keep_scale) : A(1)) / l : A(0);
  S* out = static_cast<S*>(p.out) + row * p.Dv;
#pragma unroll
  for (int r = 0; r < kMaxPerLane; ++r) {
    const int64_t d = lane + 32 * r;
    if (d < p.Dv) out[d] = Tr::store(o[r] * f);
  }
  if (lane == 0) static_cast<A*>(p.out_lse)[row] = l > 0 ? (m + lg2(l)) * static_cast<A>(kLn2) : pinf<A>();
}

template <class Tr>
__global__ void __launch_bounds__(kThreads) dkdv_simt_kernel(const Params p) {
  using A = typename Tr::A;
  using S = typename Tr::S;
  const int64_t row = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;  // (b, hk, j)
  const int lane = static_cast<int>(threadIdx.x) % 32;
  if (row >= p.B * p.Hkv * p.Lk) return;
  const int64_t j = row % p.Lk, bhk = row / p.Lk, b = bhk / p.Hkv, hk = bhk % p.Hkv;
  A kr[kMaxPerLane], vr[kMaxPerLane], dk[kMaxPerLane], dv[kMaxPerLane];
  load_row<Tr>(kr, static_cast<const S*>(p.k) + b * p.sk[0] + hk * p.sk[1] + j * p.sk[2], p.sk[3], p.D, lane);
  load_row<Tr>(vr, static_cast<const S*>(p.v) + b * p.sv[0] + hk * p.sv[1] + j * p.sv[2], p.sv[3], p.Dv, lane);
#pragma unroll
  for (int r = 0; r < kMaxPerLane; ++r) dk[r] = dv[r] = 0;
  const A sl2 = static_cast<A>(p.scale * kLog2e), l2e = static_cast<A>(kLog2e);
  const A ks = p.dropout ? static_cast<A>(p.keep_scale) : A(1);
  for (int64_t hh = 0; hh < p.group; ++hh) {
    const int64_t h = hk * p.group + hh;
    const S* q = static_cast<const S*>(p.q) + b * p.sq[0] + h * p.sq[1];
    const S* dout = static_cast<const S*>(p.dout) + b * p.sdo[0] + h * p.sdo[1];
    const A* lse = static_cast<const A*>(p.lse) + (b * p.Hq + h) * p.Lq;
    const A* delta = static_cast<const A*>(p.delta) + (b * p.Hq + h) * p.Lq;
    S* dmask = p.dmask != nullptr ? static_cast<S*>(p.dmask) + (b * p.Hq + h) * p.Lq * p.Lk : nullptr;
    for (int64_t i = p.causal ? j : 0; i < p.Lq; ++i) {
      A madd, ds = 0;
      if (takes_part<Tr>(p, b, h, i, j, madd)) {
        const S* qi = q + i * p.sq[2];
        const A pe = ex2(dot_row<Tr>(kr, qi, p.sq[3], p.D, lane) * sl2 + madd * l2e - lse[i] * l2e);
        if (pe != A(0)) {
          const S* doi = dout + i * p.sdo[2];
          const A dp = dot_row<Tr>(vr, doi, p.sdo[3], p.Dv, lane);
          const bool keep = kept(p, b, h, i, j);
          ds = pe * ((keep ? dp * ks : A(0)) - delta[i]);
          const A pz = keep ? pe * ks : A(0);
#pragma unroll
          for (int r = 0; r < kMaxPerLane; ++r) {
            const int64_t d = lane + 32 * r;
            if (d < p.Dv) dv[r] += pz * Tr::load(doi[d * p.sdo[3]]);
            if (d < p.D) dk[r] += ds * Tr::load(qi[d * p.sq[3]]);
          }
        }
      }
      if (dmask != nullptr && lane == 0) dmask[i * p.Lk + j] = Tr::store(ds);
    }
  }
  const A sc = static_cast<A>(p.scale);
#pragma unroll
  for (int r = 0; r < kMaxPerLane; ++r) {
    const int64_t d = lane + 32 * r;
    if (p.dk != nullptr && d < p.D) static_cast<S*>(p.dk)[row * p.D + d] = Tr::store(dk[r] * sc);
    if (p.dv != nullptr && d < p.Dv) static_cast<S*>(p.dv)[row * p.Dv + d] = Tr::store(dv[r]);
  }
}

template <class Tr>
__global__ void __launch_bounds__(kThreads) dq_simt_kernel(const Params p) {
  using A = typename Tr::A;
  using S = typename Tr::S;
  const int64_t row = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  if (row >= p.B * p.Hq * p.Lq) return;
  const int64_t i = row % p.Lq, bh = row / p.Lq, b = bh / p.Hq, h = bh % p.Hq, hk = h / p.group;
  const S* k = static_cast<const S*>(p.k) + b * p.sk[0] + hk * p.sk[1];
  const S* v = static_cast<const S*>(p.v) + b * p.sv[0] + hk * p.sv[1];
  A q[kMaxPerLane], dO[kMaxPerLane], dq[kMaxPerLane];
  load_row<Tr>(q, static_cast<const S*>(p.q) + b * p.sq[0] + h * p.sq[1] + i * p.sq[2], p.sq[3], p.D, lane);
  load_row<Tr>(dO, static_cast<const S*>(p.dout) + b * p.sdo[0] + h * p.sdo[1] + i * p.sdo[2], p.sdo[3], p.Dv, lane);
#pragma unroll
  for (int r = 0; r < kMaxPerLane; ++r) dq[r] = 0;
  const A sl2 = static_cast<A>(p.scale * kLog2e), l2e = static_cast<A>(kLog2e);
  const A ks = p.dropout ? static_cast<A>(p.keep_scale) : A(1);
  const A lse2 = static_cast<const A*>(p.lse)[row] * l2e, dl = static_cast<const A*>(p.delta)[row];
  const int64_t kend = p.causal ? std::min<int64_t>(p.Lk, i + 1) : p.Lk;
  for (int64_t j = 0; j < kend; ++j) {
    A madd;
    if (!takes_part<Tr>(p, b, h, i, j, madd)) continue;
    const S* kj = k + j * p.sk[2];
    const A pe = ex2(dot_row<Tr>(q, kj, p.sk[3], p.D, lane) * sl2 + madd * l2e - lse2);
    if (pe == A(0)) continue;
    const A dp = dot_row<Tr>(dO, v + j * p.sv[2], p.sv[3], p.Dv, lane);
    const A ds = pe * ((kept(p, b, h, i, j) ? dp * ks : A(0)) - dl);
#pragma unroll
    for (int r = 0; r < kMaxPerLane; ++r) {
      const int64_t d = lane + 32 * r;
      if (d < p.D) dq[r] += ds * Tr::load(kj[d * p.sk[3]]);
    }
  }
  const A sc = static_cast<A>(p.scale);
#pragma unroll
  for (int r = 0; r < kMaxPerLane; ++r) {
    const int64_t d = lane + 32 * r;
    if (d < p.D) static_cast<S*>(p.dq)[row * p.D + d] = Tr::store(dq[r] * sc);
  }
}

// attention_weights: one thread per element of P.
template <class Tr>
__global__ void __launch_bounds__(256) weights_kernel(const Params p) {
  using A = typename Tr::A;
  using S = typename Tr::S;
  const int64_t e = int64_t(blockIdx.x) * 256 + threadIdx.x;
  if (e >= p.B * p.Hq * p.Lq * p.Lk) return;
  const int64_t j = e % p.Lk, row = e / p.Lk, i = row % p.Lq, bh = row / p.Lq, b = bh / p.Hq, h = bh % p.Hq;
  const int64_t hk = h / p.group;
  A madd, pe = 0;
  if (takes_part<Tr>(p, b, h, i, j, madd)) {
    const S* q = static_cast<const S*>(p.q) + b * p.sq[0] + h * p.sq[1] + i * p.sq[2];
    const S* k = static_cast<const S*>(p.k) + b * p.sk[0] + hk * p.sk[1] + j * p.sk[2];
    A s = 0;
    for (int64_t d = 0; d < p.D; ++d) s += Tr::load(q[d * p.sq[3]]) * Tr::load(k[d * p.sk[3]]);
    const A l2e = static_cast<A>(kLog2e);
    pe = ex2(s * static_cast<A>(p.scale * kLog2e) + madd * l2e - static_cast<const A*>(p.lse)[row] * l2e);
  }
  static_cast<S*>(p.out)[e] = Tr::store(pe);
}

// ---------------------------------------------------------------------------
// host
// ---------------------------------------------------------------------------

bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }
bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// 16-byte copies of a [B, H, L, D] operand: unit inner stride, every row start 16-byte aligned.
bool vec_ok(const at::Tensor& t) {
  if (t.stride(3) != 1 && t.size(3) > 1) return false;
  for (int d = 0; d < 3; ++d)
    if (t.size(d) > 1 && t.stride(d) % 8 != 0) return false;
  return aligned16(t.const_data_ptr());
}

template <class F>
void with_traits(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(F32{}); return;
    case at::kDouble: f(F64{}); return;
    case at::kBFloat16: f(Bf16{}); return;
    case at::kHalf: f(Fp16{}); return;
    default: TORCH_CHECK(false, "attention (CUDA): unsupported dtype ", t);
  }
}

template <class F>
void with_hd(int64_t hd, F&& f) {
  if (hd <= 64)
    f(std::integral_constant<int, 64>{});
  else if (hd <= 128)
    f(std::integral_constant<int, 128>{});
  else
    f(std::integral_constant<int, 256>{});
}

void check_cuda4(const at::Tensor& t, const char* name) {
  mte::check_float(t, name);
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.dim() == 4, name, ": expected a 4-D tensor [B, H, L, D], got ", t.dim(), "-D");
}

void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref) {
  mte::check_same_device(t, name, ref, "query");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, ": expected dtype ", ref.scalar_type(),
              " (the dtype of query), got ", t.scalar_type());
}

void check_tc_device(const at::Tensor& q) {
  if (!mte::is_reduced_float(q.scalar_type())) return;
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, q.get_device()));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, q.get_device()));
  TORCH_CHECK(major >= 8, "attention (CUDA): ", q.scalar_type(),
              " needs tensor cores of compute capability 8.0 or newer (this GPU is ", major, ".", minor, ")");
}

// Checks q, k, v (and the mask) and fills the shape, stride, mask and dropout fields.
Params make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const std::optional<at::Tensor>& mask, double dropout_p, bool is_causal, double scale,
                   int64_t seed) {
  check_cuda4(q, "query");
  check_cuda4(k, "key");
  check_cuda4(v, "value");
  check_like(k, "key", q);
  check_like(v, "value", q);
  Params p{};
  p.B = q.size(0);
  p.Hq = q.size(1);
  p.Lq = q.size(2);
  p.D = q.size(3);
  p.Hkv = k.size(1);
  p.Lk = k.size(2);
  p.Dv = v.size(3);
  TORCH_CHECK(k.size(0) == p.B && k.size(3) == p.D, "key: expected shape [", p.B, ", Hkv, Lk, ", p.D,
              "] (batch and head dim of query), got ", k.sizes());
  TORCH_CHECK(v.size(0) == p.B && v.size(1) == p.Hkv && v.size(2) == p.Lk, "value: expected shape [", p.B, ", ",
              p.Hkv, ", ", p.Lk, ", Dv] (batch, heads and length of key), got ", v.sizes());
  TORCH_CHECK(p.Hkv > 0 ? p.Hq % p.Hkv == 0 : p.Hq == 0, "key: the number of query heads (", p.Hq,
              ") must be a multiple of the number of key/value heads (", p.Hkv, ")");
  TORCH_CHECK(p.D <= 256, "query: head dimension ", p.D, " is more than the CUDA kernels support (256)");
  TORCH_CHECK(p.Dv <= 256, "value: head dimension ", p.Dv, " is more than the CUDA kernels support (256)");
  p.group = p.Hkv > 0 ? p.Hq / p.Hkv : 1;
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.v = v.const_data_ptr();
  for (int d = 0; d < 4; ++d) {
    p.sq[d] = q.stride(d);
    p.sk[d] = k.stride(d);
    p.sv[d] = v.stride(d);
  }
  if (present(mask)) {
    const at::Tensor& m = *mask;
    TORCH_CHECK(m.dim() == 4 && m.size(0) == p.B && m.size(1) == p.Hq && m.size(2) == p.Lq && m.size(3) == p.Lk,
                "attn_mask: expected shape [", p.B, ", ", p.Hq, ", ", p.Lq, ", ", p.Lk,
                "] (a broadcast mask as an expanded view), got ", m.sizes());
    mte::check_same_device(m, "attn_mask", q, "query");
    TORCH_CHECK(m.scalar_type() == at::kBool || m.scalar_type() == q.scalar_type(),
                "attn_mask: expected dtype bool or ", q.scalar_type(), " (the dtype of query), got ", m.scalar_type());
    p.mask_kind = m.scalar_type() == at::kBool ? 1 : 2;
    p.mask = m.const_data_ptr();
    for (int d = 0; d < 4; ++d) p.sm[d] = m.stride(d);
  }
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p <= 1.0, "dropout_p: expected a probability in [0, 1], got ", dropout_p);
  p.causal = is_causal;
  p.scale = scale;
  p.dropout = dropout_p > 0.0;
  p.drop_all = dropout_p >= 1.0;
  p.thresh = static_cast<uint32_t>(std::min<double>(std::floor(dropout_p * 4294967296.0), 4294967295.0));
  p.keep_scale = p.drop_all ? 0.0 : 1.0 / (1.0 - dropout_p);
  const uint64_t s = static_cast<uint64_t>(seed);
  p.seed_lo = static_cast<uint32_t>(s & 0xffffffffu);
  p.seed_hi = static_cast<uint32_t>(s >> 32);
  p.q_vec = vec_ok(q);
  p.k_vec = vec_ok(k);
  p.v_vec = vec_ok(v);
  return p;
}

unsigned grid_of(int64_t n, int64_t per) {
  const int64_t g = ceil_div(n, per);
  TORCH_CHECK(g <= std::numeric_limits<int32_t>::max(), "attention (CUDA): the problem is too large for one launch (",
              g, " blocks)");
  return static_cast<unsigned>(g);
}

template <class K>
void set_smem(K kernel, size_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cuda(const at::Tensor& query, const at::Tensor& key,
                                                      const at::Tensor& value,
                                                      const std::optional<at::Tensor>& attn_mask, double dropout_p,
                                                      bool is_causal, double scale, int64_t seed) {
  Params p = make_params(query, key, value, attn_mask, dropout_p, is_causal, scale, seed);
  c10::cuda::CUDAGuard guard(query.device());
  at::Tensor out = mte::new_output({p.B, p.Hq, p.Lq, p.Dv}, query.options());
  at::Tensor lse = mte::new_output({p.B, p.Hq, p.Lq}, query.options().dtype(mte::stat_dtype(query.scalar_type())));
  const int64_t rows = p.B * p.Hq * p.Lq;
  if (rows == 0) return {out, lse};
  check_tc_device(query);
  p.out = out.data_ptr();
  p.out_lse = lse.data_ptr();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  with_traits(query.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    if constexpr (Tr::kTensorCore) {
      with_hd(std::max(p.D, p.Dv), [&](auto hdc) {
        constexpr int HD = decltype(hdc)::value;
        using Sh = TcShape<HD>;
        const int64_t n_qb = ceil_div(p.Lq, Sh::kFwdBM);
        const int n_slices = static_cast<int>(std::max<int64_t>(ceil_div(p.Dv, Sh::HO), 1));
        set_smem(fwd_tc_kernel<Tr, HD>, Sh::kFwdSmem);
        fwd_tc_kernel<Tr, HD><<<grid_of(p.B * p.Hq * n_qb * n_slices, 1), kThreads, Sh::kFwdSmem, stream>>>(
            p, n_qb, n_slices);
      });
    } else {
      fwd_simt_kernel<Tr><<<grid_of(rows, kThreads / 32), kThreads, 0, stream>>>(p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_bwd_cuda(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& output, const at::Tensor& logsumexp, const std::optional<at::Tensor>& attn_mask,
    double dropout_p, bool is_causal, double scale, int64_t seed, std::array<bool, 4> output_mask) {
  Params p = make_params(query, key, value, attn_mask, dropout_p, is_causal, scale, seed);
  check_cuda4(grad_output, "grad_output");
  check_cuda4(output, "output");
  check_like(grad_output, "grad_output", query);
  check_like(output, "output", query);
  const std::array<int64_t, 4> osz{p.B, p.Hq, p.Lq, p.Dv};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(osz), "grad_output: expected shape ", at::IntArrayRef(osz),
              " (the output's), got ", grad_output.sizes());
  TORCH_CHECK(output.sizes() == at::IntArrayRef(osz), "output: expected shape ", at::IntArrayRef(osz), ", got ",
              output.sizes());
  const auto st = mte::stat_dtype(query.scalar_type());
  mte::check_same_device(logsumexp, "logsumexp", query, "query");
  TORCH_CHECK(logsumexp.scalar_type() == st, "logsumexp: expected dtype ", st, ", got ", logsumexp.scalar_type());
  TORCH_CHECK(logsumexp.dim() == 3 && logsumexp.size(0) == p.B && logsumexp.size(1) == p.Hq &&
                  logsumexp.size(2) == p.Lq,
              "logsumexp: expected shape [", p.B, ", ", p.Hq, ", ", p.Lq, "], got ", logsumexp.sizes());
  c10::cuda::CUDAGuard guard(query.device());
  const auto opts = query.options();
  auto empty0 = [&] { return at::empty({0}, opts); };
  at::Tensor gq = output_mask[0] ? mte::new_output(query.sizes(), opts) : empty0();
  at::Tensor gk = output_mask[1] ? mte::new_output(key.sizes(), opts) : empty0();
  at::Tensor gv = output_mask[2] ? mte::new_output(value.sizes(), opts) : empty0();
  at::Tensor gm = output_mask[3] ? mte::new_output({p.B, p.Hq, p.Lq, p.Lk}, opts) : empty0();
  const bool want_kv = output_mask[1] || output_mask[2] || output_mask[3];
  if (!output_mask[0] && !want_kv) return {gq, gk, gv, gm};
  const int64_t rows = p.B * p.Hq * p.Lq, keys = p.B * p.Hkv * p.Lk;
  if (rows == 0 || p.Lk == 0) {  // no query, or no key: nothing flows
    if (output_mask[0]) gq.zero_();
    if (output_mask[1]) gk.zero_();
    if (output_mask[2]) gv.zero_();
    return {gq, gk, gv, gm};
  }
  check_tc_device(query);
  if (output_mask[3] && is_causal) gm.zero_();  // the blocks above the diagonal are skipped
  const at::Tensor lse = logsumexp.contiguous();
  at::Tensor delta = at::empty({p.B, p.Hq, p.Lq}, opts.dtype(st));
  p.dout = grad_output.const_data_ptr();
  p.o = output.const_data_ptr();
  for (int d = 0; d < 4; ++d) {
    p.sdo[d] = grad_output.stride(d);
    p.so[d] = output.stride(d);
  }
  p.do_vec = vec_ok(grad_output);
  p.lse = lse.const_data_ptr();
  p.out_delta = delta.data_ptr();
  p.delta = delta.const_data_ptr();
  p.dq = output_mask[0] ? gq.data_ptr() : nullptr;
  p.dk = output_mask[1] ? gk.data_ptr() : nullptr;
  p.dv = output_mask[2] ? gv.data_ptr() : nullptr;
  p.dmask = output_mask[3] ? gm.data_ptr() : nullptr;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  with_traits(query.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    delta_kernel<Tr><<<grid_of(rows, kThreads / 32), kThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if constexpr (Tr::kTensorCore) {
      with_hd(std::max(p.D, p.Dv), [&](auto hdc) {
        constexpr int HD = decltype(hdc)::value;
        using Sh = TcShape<HD>;
        if (want_kv) {
          const int64_t n_kb = ceil_div(p.Lk, Sh::kKvBN);
          const int n_slices = static_cast<int>(std::max<int64_t>(ceil_div(std::max(p.D, p.Dv), Sh::HO), 1));
          set_smem(dkdv_tc_kernel<Tr, HD>, Sh::kKvSmem);
          dkdv_tc_kernel<Tr, HD><<<grid_of(p.B * p.Hkv * n_kb * n_slices, 1), kThreads, Sh::kKvSmem, stream>>>(
              p, n_kb, n_slices);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (output_mask[0]) {
          const int64_t n_qb = ceil_div(p.Lq, Sh::kDqBM);
          const int n_slices = static_cast<int>(std::max<int64_t>(ceil_div(p.D, Sh::HO), 1));
          set_smem(dq_tc_kernel<Tr, HD>, Sh::kDqSmem);
          dq_tc_kernel<Tr, HD><<<grid_of(p.B * p.Hq * n_qb * n_slices, 1), kThreads, Sh::kDqSmem, stream>>>(
              p, n_qb, n_slices);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
    } else {
      if (want_kv) {
        dkdv_simt_kernel<Tr><<<grid_of(keys, kThreads / 32), kThreads, 0, stream>>>(p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (output_mask[0]) {
        dq_simt_kernel<Tr><<<grid_of(rows, kThreads / 32), kThreads, 0, stream>>>(p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  });
  return {gq, gk, gv, gm};
}

at::Tensor attention_weights_cuda(const at::Tensor& query, const at::Tensor& key,
                                  const std::optional<at::Tensor>& attn_mask, bool is_causal, double scale,
                                  const at::Tensor& logsumexp) {
  // value only supplies shapes in make_params: key stands in for it
  Params p = make_params(query, key, key, attn_mask, 0.0, is_causal, scale, 0);
  const auto st = mte::stat_dtype(query.scalar_type());
  mte::check_same_device(logsumexp, "logsumexp", query, "query");
  TORCH_CHECK(logsumexp.scalar_type() == st, "logsumexp: expected dtype ", st, ", got ", logsumexp.scalar_type());
  TORCH_CHECK(logsumexp.dim() == 3 && logsumexp.size(0) == p.B && logsumexp.size(1) == p.Hq &&
                  logsumexp.size(2) == p.Lq,
              "logsumexp: expected shape [", p.B, ", ", p.Hq, ", ", p.Lq, "], got ", logsumexp.sizes());
  c10::cuda::CUDAGuard guard(query.device());
  at::Tensor out = mte::new_output({p.B, p.Hq, p.Lq, p.Lk}, query.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  const at::Tensor lse = logsumexp.contiguous();
  p.lse = lse.const_data_ptr();
  p.out = out.data_ptr();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  with_traits(query.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    weights_kernel<Tr><<<grid_of(n, 256), 256, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(minitorch_ext, CUDA, m) {
  m.impl("attention_fwd", &attention_fwd_cuda);
  m.impl("attention_bwd", &attention_bwd_cuda);
  m.impl("attention_weights", &attention_weights_cuda);
}
