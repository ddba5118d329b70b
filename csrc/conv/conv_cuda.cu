// The conv family on CUDA: torch.ops.minitorch_ext.{conv_fwd, conv_bwd} for CUDA
// tensors (schemas and contract: csrc/ops.cpp; CPU reference: conv_cpu.cpp).
// 2-D on [N, C, H, W] tensors with any strides (contiguous, channels_last or
// neither: every operand is read through its four strides, every result written
// through its own), groups, dilation, asymmetric padding and the padding modes
// zeros / reflect / replicate / circular, applied by the index mapping of the
// gathers (pad_map below, the CPU's vmap as a formula): no padded copy is made.
//
// One implicit-GEMM kernel (igemm_kernel) with three gathers, a template
// parameter each (per group g, blockIdx.z):
//   kFwd     out[m = (n, oh, ow), o] = sum_k X[m, k] W[k, o],  k = (c, i, j)
//            X[m, k] = x[n, g*Cg + c, map(oh*sH - pT + i*dH), map(ow*sW - pL + j*dW)]
//            epilogue: + bias[o], activation (common/act_cuda.cuh), one rounding.
//   kBwdIn   grad_input as the transposed gather: for each (padded) input pixel
//            m = (n, r, q) and input channel c,
//            gp[m, c] = sum_{k = (o, i, j)} go[n, g*Og + o, (r - i*dH)/sH, (q - j*dW)/sW] W[o, c, i, j]
//            (a term only where the divisions are exact and in range). Every output is
//            written by one thread: no scatter, no atomics. zeros mode: r runs over the
//            input rows (r = ih + pT) and the result is grad_input itself; other modes:
//            r runs over the padded rows into a float workspace, then fold_kernel sums,
//            for every input element, the padded positions that map onto it (a fixed
//            order: the element itself, then the left and right pad regions).
//   kBwdW    grad_weight[o, kk = (c, i, j)] = sum_{p = (n, oh, ow)} go[n, o, oh, ow] X[p, kk]:
//            the reduction over P = N*Ho*Wo is cut into S slots (S from the sizes only),
//            each slot's blocks write their own partial into a float workspace, and
//            reduce_slots_kernel sums the slots in slot order: bitwise repeatable, no
//            atomics.
// grad_bias: one block per channel, each thread a fixed stride of the N*Ho*Wo
// values, then a fixed-shape tree in shared memory (bias_grad_kernel).
//
// Tiles (one block per 64x64 output tile, walking K in steps of BK):
// * bfloat16 / float16: tensor cores, mma.sync m16n8k16 with float32 accumulators
//   (sm_80+). 4 warps as 2x2, each 32x32 = 2x4 mma tiles. The gathered A tile is
//   kept as [m][k] and B as [n][k] (both k-contiguous, rows padded by 16 bytes so an
//   ldmatrix phase hits 8 distinct bank groups); fragments come from ldmatrix.x4.
// * float32 / float64: CUDA cores, 256 threads, 4x4 outputs per thread, A as [k][m]
//   and B as [k][n] in shared memory. float32 math stays float32 (no TF32).
// The gather is element-wise (a thread computes the (n, oh, ow) / (c, i, j) of the
// elements it loads; consecutive threads take consecutive pixels, the contiguous
// direction of an NCHW plane), staged through shared memory once per k-step.
//
// Cg == 1 (depthwise, and any conv with one input channel per group): direct
// kernels, one thread per output element (forward), per input element (grad_input)
// and one block per weight element (grad_weight, fixed-order tree): the implicit
// GEMM's 64-wide tiles would be mostly empty there.
//
// Memory traffic: forward reads each input element about kH*kW/(sH*sW) times per
// 64 output channels (from L1/L2 after the first), the weight once per 64 output
// pixels, and writes the output once. No im2col buffer exists; the workspaces are
// the padded-grad (non-zeros padding modes only) and the slot partials of grad_weight
// (capped at 16M floats).
//
// Build size: 4 dtypes x (3 GEMM gathers + 3 direct kernels + 3 small reductions) = 36
// kernels. nvcc 13.0, setup.py's flags, sm_90, -Xptxas -v: 0 bytes spilled everywhere;
// igemm_kernel 61-62 registers (bf16/fp16, 10 KB smem), 64-79 (fp32, 8.3 KB),
// 72-114 (fp64, 16.6 KB); the direct and reduction kernels 31-46. ptxas ~9 s in all;
// the whole file ~82 s of CPU on this 2-core build machine, of which ~65 s is the
// house headers alone (a .cu with ATen.h + torch/library.h and one trivial kernel).
// Not measured on a GPU yet: the tests (tests/test_conv_cuda.py) run on the lent device.
//
// Headers: c10/cuda only (as gemm_cuda.cu).
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
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

#include "common/act_cuda.cuh"
#include "common/act_kind.h"
#include "common/alloc.h"
#include "common/checks.h"

namespace {

using mte::Act;

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

template <class F>
void with_traits(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(F32{}); return;
    case at::kDouble: f(F64{}); return;
    case at::kBFloat16: f(Bf16{}); return;
    case at::kHalf: f(Fp16{}); return;
    default: TORCH_CHECK(false, "conv (CUDA): unsupported dtype ", t);
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------
// geometry
// ---------------------------------------------------------------------------

enum PadMode : int { kZeros = 0, kReflect = 1, kReplicate = 2, kCircular = 3 };

// The input index padded position v (v = 0 is the first real element) reads along an
// axis of `in` elements, or -1 for a zero (the CPU's vmap, as a formula).
__host__ __device__ __forceinline__ int pad_map(int v, int in, int mode) {
  if (v >= 0 && v < in) return v;
  if (in <= 0) return -1;
  switch (mode) {
    case kReflect: {
      if (in == 1) return 0;
      const int period = 2 * (in - 1);
      const int u = ((v % period) + period) % period;
      return u < in ? u : period - u;
    }
    case kReplicate: return v < 0 ? 0 : in - 1;
    case kCircular: return ((v % in) + in) % in;
    default: return -1;
  }
}

struct Strides {
  int64_t n, c, h, w;
};
Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// Everything a kernel launch needs (sizes of the forward conv).
// Sizes are int: the host checks that every index space a kernel decomposes is < 2^31.
struct Geo {
  int N, C, H, W, O, Ho, Wo;
  int kh, kw, sh, sw, dh, dw, pt, pl;
  int G, Cg, Og;
  int mode;
};

enum Gather : int { kFwd = 0, kBwdIn = 1, kBwdW = 2 };

template <class Tr>
struct IgParams {
  using S = typename Tr::S;
  using A = typename Tr::A;
  Geo g;
  const S* x;  Strides xs;   // input
  const S* w;  Strides ws;   // weight [O, Cg, kh, kw]
  const S* go; Strides gs;   // grad_output
  const S* bias;             // [O] contiguous, or null
  void* dst;   Strides ds;   // output (kFwd, kBwdIn) in S, or (dst_acc) in A
  bool dst_acc;
  int Hr, Wr, roff_h, roff_w;  // kBwdIn: the row grid (input rows or padded rows) and its offset
  int P;                       // kBwdW: N*Ho*Wo
  int slots;                   // kBwdW: S
  int M, Nc, K;                // GEMM sizes per group (kBwdW: K is the whole P)
  Act act;
  A slope;
};

// ---- the gathers: element (row, col) of the A operand (M x K) and B operand (K x Nc) ----
// Coordinates are 32-bit (the host checks every index space is < 2^31: 32-bit division is
// a few instructions, 64-bit a long sequence); offsets are 64-bit.

__device__ __forceinline__ void split3(int v, int b, int c, int& x, int& y, int& z) {  // v = (x*b + y)*c + z
  const int q = v / c;
  z = v - q * c;
  x = q / b;
  y = q - x * b;
}

template <class Tr, int MODE>
__device__ __forceinline__ typename Tr::S gather_a(const IgParams<Tr>& p, int grp, int m, int k) {
  using S = typename Tr::S;
  const Geo& g = p.g;
  if constexpr (MODE == kFwd) {
    int n, oh, ow, c, i, j;
    split3(m, g.Ho, g.Wo, n, oh, ow);
    split3(k, g.kh, g.kw, c, i, j);
    const int ih = pad_map(oh * g.sh - g.pt + i * g.dh, g.H, g.mode);
    const int iw = pad_map(ow * g.sw - g.pl + j * g.dw, g.W, g.mode);
    if (ih < 0 || iw < 0) return S(0);
    return p.x[n * p.xs.n + (grp * g.Cg + c) * p.xs.c + ih * p.xs.h + iw * p.xs.w];
  } else if constexpr (MODE == kBwdIn) {
    int n, r, q, o, i, j;
    split3(m, p.Hr, p.Wr, n, r, q);
    split3(k, g.kh, g.kw, o, i, j);
    const int th = r + p.roff_h - i * g.dh, tw = q + p.roff_w - j * g.dw;
    if (th < 0 || tw < 0) return S(0);
    const int oh = th / g.sh, ow = tw / g.sw;
    if (oh * g.sh != th || ow * g.sw != tw || oh >= g.Ho || ow >= g.Wo) return S(0);
    return p.go[n * p.gs.n + (grp * g.Og + o) * p.gs.c + oh * p.gs.h + ow * p.gs.w];
  } else {  // kBwdW: A[o, p] = go
    int n, oh, ow;
    split3(k, g.Ho, g.Wo, n, oh, ow);
    return p.go[n * p.gs.n + (grp * g.Og + m) * p.gs.c + oh * p.gs.h + ow * p.gs.w];
  }
}

template <class Tr, int MODE>
__device__ __forceinline__ typename Tr::S gather_b(const IgParams<Tr>& p, int grp, int k, int nc) {
  using S = typename Tr::S;
  const Geo& g = p.g;
  if constexpr (MODE == kFwd) {  // B[k = (c, i, j), o] = w[o, c, i, j]
    int c, i, j;
    split3(k, g.kh, g.kw, c, i, j);
    return p.w[(grp * g.Og + nc) * p.ws.n + c * p.ws.c + i * p.ws.h + j * p.ws.w];
  } else if constexpr (MODE == kBwdIn) {  // B[k = (o, i, j), c] = w[o, c, i, j]
    int o, i, j;
    split3(k, g.kh, g.kw, o, i, j);
    return p.w[(grp * g.Og + o) * p.ws.n + nc * p.ws.c + i * p.ws.h + j * p.ws.w];
  } else {  // kBwdW: B[p, kk = (c, i, j)] = the input patch
    int n, oh, ow, c, i, j;
    split3(k, g.Ho, g.Wo, n, oh, ow);
    split3(nc, g.kh, g.kw, c, i, j);
    const int ih = pad_map(oh * g.sh - g.pt + i * g.dh, g.H, g.mode);
    const int iw = pad_map(ow * g.sw - g.pl + j * g.dw, g.W, g.mode);
    if (ih < 0 || iw < 0) return S(0);
    return p.x[n * p.xs.n + (grp * g.Cg + c) * p.xs.c + ih * p.xs.h + iw * p.xs.w];
  }
}

// The epilogue on one accumulator at (row m, column nc) of group grp (slot s for kBwdW).
template <class Tr, int MODE>
__device__ __forceinline__ void store_out(const IgParams<Tr>& p, int grp, int s, int m, int nc, typename Tr::A v) {
  using S = typename Tr::S;
  using A = typename Tr::A;
  const Geo& g = p.g;
  if constexpr (MODE == kFwd) {
    int n, oh, ow;
    split3(m, g.Ho, g.Wo, n, oh, ow);
    const int o = grp * g.Og + nc;
    if (p.bias != nullptr) v += Tr::load(p.bias[o]);
    v = mte::dev::act(p.act, v, p.slope);
    static_cast<S*>(p.dst)[n * p.ds.n + o * p.ds.c + oh * p.ds.h + ow * p.ds.w] = Tr::store(v);
  } else if constexpr (MODE == kBwdIn) {
    int n, r, q;
    split3(m, p.Hr, p.Wr, n, r, q);
    const int64_t off = n * p.ds.n + (grp * g.Cg + nc) * p.ds.c + r * p.ds.h + q * p.ds.w;
    if (p.dst_acc) static_cast<A*>(p.dst)[off] = v;
    else static_cast<S*>(p.dst)[off] = Tr::store(v);
  } else {  // slot partial [S, G, Og, Cg*kh*kw]
    static_cast<A*>(p.dst)[(int64_t(s * g.G + grp) * g.Og + m) * p.Nc + nc] = v;
  }
}

// ---------------------------------------------------------------------------
// the implicit-GEMM kernel
// ---------------------------------------------------------------------------

constexpr int kBM = 64, kBN = 64;
constexpr int kTcBK = 32, kTcThreads = 128, kTcLd = kTcBK + 8;  // rows padded by 16 bytes
constexpr int kSimtBK = 16, kSimtThreads = 256;

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
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

// Block (bx, by, bz): rows [bx*64, +64), columns [by*64, +64) of group bz % G
// (kBwdW: slot bz / G, its reduction range [P*s/S, P*(s+1)/S)).
template <class Tr, int MODE>
__global__ void __launch_bounds__(Tr::kTensorCore ? kTcThreads : kSimtThreads)
    igemm_kernel(const IgParams<Tr> p) {
  using S = typename Tr::S;
  using A = typename Tr::A;
  const int grp = static_cast<int>(blockIdx.z) % p.g.G;
  const int slot = static_cast<int>(blockIdx.z) / p.g.G;
  const int m0 = static_cast<int>(blockIdx.x) * kBM, n0 = static_cast<int>(blockIdx.y) * kBN;
  int k_begin = 0, k_end = p.K;
  if constexpr (MODE == kBwdW) {
    k_begin = static_cast<int>(int64_t(p.P) * slot / p.slots);
    k_end = static_cast<int>(int64_t(p.P) * (slot + 1) / p.slots);
  }
  const int tid = static_cast<int>(threadIdx.x);
  // A is pixel-fast (consecutive threads, consecutive rows m) for kFwd/kBwdIn; the
  // reduction index is the contiguous one for kBwdW's A and for every B.
  constexpr bool kAmFast = MODE != kBwdW;

  if constexpr (Tr::kTensorCore) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // the host refuses these GPUs before launching
#else
    __shared__ __align__(16) uint16_t sa[kBM * kTcLd];
    __shared__ __align__(16) uint16_t sb[kBN * kTcLd];
    const int lane = tid % 32, warp = tid / 32;
    const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
    const int l8 = lane % 8, l16 = lane % 16, hi8 = (lane / 16) * 8, mid8 = ((lane / 8) % 2) * 8;
    float acc[2][4][4];
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int b = 0; b < 4; ++b)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[a][b][e] = 0.f;
    constexpr int kPer = kBM * kTcBK / kTcThreads;  // 16 elements per thread and operand
    for (int k0 = k_begin; k0 < k_end; k0 += kTcBK) {
#pragma unroll 1
      for (int e = 0; e < kPer; ++e) {
        const int idx = tid + e * kTcThreads;
        int r, c;
        if (kAmFast) { r = idx % kBM; c = idx / kBM; } else { c = idx % kTcBK; r = idx / kTcBK; }
        const int m = m0 + r, k = k0 + c;
        sa[r * kTcLd + c] = (m < p.M && k < k_end) ? gather_a<Tr, MODE>(p, grp, m, k) : S(0);
      }
#pragma unroll 1
      for (int e = 0; e < kPer; ++e) {
        const int idx = tid + e * kTcThreads;
        const int c = idx % kTcBK, r = idx / kTcBK;
        const int nc = n0 + r, k = k0 + c;
        sb[r * kTcLd + c] = (nc < p.Nc && k < k_end) ? gather_b<Tr, MODE>(p, grp, k, nc) : S(0);
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kTcBK; kk += 16) {
        uint32_t af[2][4], bfr[4][2];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) ldmatrix_x4(af[mi], sa + (wm + mi * 16 + l16) * kTcLd + kk + hi8);
#pragma unroll
        for (int nj = 0; nj < 2; ++nj) {
          uint32_t r4[4];
          ldmatrix_x4(r4, sb + (wn + nj * 16 + l8 + hi8) * kTcLd + kk + mid8);
          bfr[2 * nj][0] = r4[0];
          bfr[2 * nj][1] = r4[1];
          bfr[2 * nj + 1][0] = r4[2];
          bfr[2 * nj + 1][1] = r4[3];
        }
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int ni = 0; ni < 4; ++ni) mma_16816<Tr>(acc[mi][ni], af[mi], bfr[ni][0], bfr[ni][1]);
      }
      __syncthreads();
    }
    // accumulator e of tile (mi, ni): row lane/4 (+8 for e >= 2), column 2*(lane%4) (+1 for odd e)
    const int gr = lane / 4, gc = lane % 4;
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int m = m0 + wm + mi * 16 + gr + (e >= 2 ? 8 : 0);
          const int nc = n0 + wn + ni * 8 + 2 * gc + (e & 1);
          if (m < p.M && nc < p.Nc) store_out<Tr, MODE>(p, grp, slot, m, nc, acc[mi][ni][e]);
        }
#endif
  } else {
    __shared__ A sa[kSimtBK][kBM + 1];
    __shared__ A sb[kSimtBK][kBN + 1];
    const int tx = tid % 16, ty = tid / 16;
    A acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int b = 0; b < 4; ++b) acc[a][b] = A(0);
    constexpr int kPer = kBM * kSimtBK / kSimtThreads;  // 4
    for (int k0 = k_begin; k0 < k_end; k0 += kSimtBK) {
#pragma unroll
      for (int e = 0; e < kPer; ++e) {
        const int idx = tid + e * kSimtThreads;
        int r, c;
        if (kAmFast) { r = idx % kBM; c = idx / kBM; } else { c = idx % kSimtBK; r = idx / kSimtBK; }
        const int m = m0 + r, k = k0 + c;
        sa[c][r] = (m < p.M && k < k_end) ? Tr::load(gather_a<Tr, MODE>(p, grp, m, k)) : A(0);
      }
#pragma unroll
      for (int e = 0; e < kPer; ++e) {
        const int idx = tid + e * kSimtThreads;
        const int c = idx % kSimtBK, r = idx / kSimtBK;
        const int nc = n0 + r, k = k0 + c;
        sb[c][r] = (nc < p.Nc && k < k_end) ? Tr::load(gather_b<Tr, MODE>(p, grp, k, nc)) : A(0);
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kSimtBK; ++kk) {
        A av[4], bv[4];
#pragma unroll
        for (int a = 0; a < 4; ++a) av[a] = sa[kk][ty + 16 * a];
#pragma unroll
        for (int b = 0; b < 4; ++b) bv[b] = sb[kk][tx + 16 * b];
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
          for (int b = 0; b < 4; ++b) acc[a][b] = fma(av[a], bv[b], acc[a][b]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const int m = m0 + ty + 16 * a, nc = n0 + tx + 16 * b;
        if (m < p.M && nc < p.Nc) store_out<Tr, MODE>(p, grp, slot, m, nc, acc[a][b]);
      }
  }
}

template <class Tr, int MODE>
void launch_igemm(const IgParams<Tr>& p, int64_t zdim, cudaStream_t stream) {
  if (p.M == 0 || p.Nc == 0 || zdim == 0) return;
  TORCH_CHECK(ceil_div(p.Nc, kBN) <= 65535 && zdim <= 65535 && ceil_div(p.M, kBM) <= 2147483647LL,
              "conv (CUDA): the problem is larger than one launch covers");
  const dim3 grid(static_cast<unsigned>(ceil_div(p.M, kBM)), static_cast<unsigned>(ceil_div(p.Nc, kBN)),
                  static_cast<unsigned>(zdim));
  igemm_kernel<Tr, MODE><<<grid, Tr::kTensorCore ? kTcThreads : kSimtThreads, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------
// direct kernels (Cg == 1) and the small reductions
// ---------------------------------------------------------------------------

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>(std::max<int64_t>(1, ceil_div(n, kThreads))); }

// One thread per output element (NCHW order of the linear index).
template <class Tr>
__global__ void __launch_bounds__(kThreads) direct_fwd_kernel(const IgParams<Tr> p, int total) {
  using A = typename Tr::A;
  const Geo& g = p.g;
  const int e = static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x);
  if (e >= total) return;
  int no, oh, ow;
  split3(e, g.Ho, g.Wo, no, oh, ow);
  const int n = no / g.O, o = no - n * g.O;
  const int grp = o / g.Og;
  A acc = A(0);
  for (int c = 0; c < g.Cg; ++c) {
    const auto* xc = p.x + n * p.xs.n + (grp * g.Cg + c) * p.xs.c;
    const auto* wc = p.w + o * p.ws.n + c * p.ws.c;
    for (int i = 0; i < g.kh; ++i) {
      const int ih = pad_map(oh * g.sh - g.pt + i * g.dh, g.H, g.mode);
      if (ih < 0) continue;
      for (int j = 0; j < g.kw; ++j) {
        const int iw = pad_map(ow * g.sw - g.pl + j * g.dw, g.W, g.mode);
        if (iw < 0) continue;
        acc += Tr::load(xc[ih * p.xs.h + iw * p.xs.w]) * Tr::load(wc[i * p.ws.h + j * p.ws.w]);
      }
    }
  }
  if (p.bias != nullptr) acc += Tr::load(p.bias[o]);
  acc = mte::dev::act(p.act, acc, p.slope);
  static_cast<typename Tr::S*>(p.dst)[n * p.ds.n + o * p.ds.c + oh * p.ds.h + ow * p.ds.w] = Tr::store(acc);
}

// One thread per element of the kBwdIn row grid (the same gather as gather_a, summed directly).
template <class Tr>
__global__ void __launch_bounds__(kThreads) direct_bwd_in_kernel(const IgParams<Tr> p, int total) {
  using A = typename Tr::A;
  const Geo& g = p.g;
  const int e = static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x);
  if (e >= total) return;
  int nci, r, q;
  split3(e, p.Hr, p.Wr, nci, r, q);
  const int n = nci / g.C, ci = nci - n * g.C;
  const int grp = ci / g.Cg, c = ci - grp * g.Cg;
  A acc = A(0);
  for (int o = grp * g.Og; o < (grp + 1) * g.Og; ++o) {
    const auto* gop = p.go + n * p.gs.n + o * p.gs.c;
    const auto* wp = p.w + o * p.ws.n + c * p.ws.c;
    for (int i = 0; i < g.kh; ++i) {
      const int th = r + p.roff_h - i * g.dh;
      if (th < 0) break;  // th falls with i
      const int oh = th / g.sh;
      if (oh * g.sh != th || oh >= g.Ho) continue;
      for (int j = 0; j < g.kw; ++j) {
        const int tw = q + p.roff_w - j * g.dw;
        if (tw < 0) break;
        const int ow = tw / g.sw;
        if (ow * g.sw != tw || ow >= g.Wo) continue;
        acc += Tr::load(gop[oh * p.gs.h + ow * p.gs.w]) * Tr::load(wp[i * p.ws.h + j * p.ws.w]);
      }
    }
  }
  const int64_t off = n * p.ds.n + ci * p.ds.c + r * p.ds.h + q * p.ds.w;
  if (p.dst_acc) static_cast<A*>(p.dst)[off] = acc;
  else static_cast<typename Tr::S*>(p.dst)[off] = Tr::store(acc);
}

// Fixed-shape tree over kThreads values in shared memory; the result in s[0].
template <typename A>
__device__ __forceinline__ void block_tree(A* s) {
#pragma unroll
  for (int w = kThreads / 2; w > 0; w /= 2) {
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < w) s[threadIdx.x] += s[threadIdx.x + w];
  }
  __syncthreads();
}

// One block per weight element (o, c, i, j): sum over P = N*Ho*Wo, thread t takes p = t, t + 256, ...
template <class Tr>
__global__ void __launch_bounds__(kThreads) direct_bwd_w_kernel(const IgParams<Tr> p, typename Tr::S* gw) {
  using A = typename Tr::A;
  __shared__ A red[kThreads];
  const Geo& g = p.g;
  const int e = static_cast<int>(blockIdx.x);  // [O, Cg, kh, kw] contiguous
  int oc, i, j;
  split3(e, g.kh, g.kw, oc, i, j);
  const int o = oc / g.Cg, c = oc - o * g.Cg;
  const int grp = o / g.Og;
  A acc = A(0);
  for (int q = static_cast<int>(threadIdx.x); q < p.P; q += kThreads) {
    int n, oh, ow;
    split3(q, g.Ho, g.Wo, n, oh, ow);
    const int ih = pad_map(oh * g.sh - g.pt + i * g.dh, g.H, g.mode);
    const int iw = pad_map(ow * g.sw - g.pl + j * g.dw, g.W, g.mode);
    if (ih < 0 || iw < 0) continue;
    acc += Tr::load(p.go[n * p.gs.n + o * p.gs.c + oh * p.gs.h + ow * p.gs.w]) *
           Tr::load(p.x[n * p.xs.n + (grp * g.Cg + c) * p.xs.c + ih * p.xs.h + iw * p.xs.w]);
  }
  red[threadIdx.x] = acc;
  block_tree(red);
  if (threadIdx.x == 0) gw[e] = Tr::store(red[0]);
}

// grad_bias[o] = sum over (n, oh, ow) of go, one block per channel, fixed order.
template <class Tr>
__global__ void __launch_bounds__(kThreads) bias_grad_kernel(const typename Tr::S* go, Strides gs, int Ho, int Wo,
                                                             int P, typename Tr::S* gb) {
  using A = typename Tr::A;
  __shared__ A red[kThreads];
  const int o = static_cast<int>(blockIdx.x);
  A acc = A(0);
  for (int q = static_cast<int>(threadIdx.x); q < P; q += kThreads) {
    int n, oh, ow;
    split3(q, Ho, Wo, n, oh, ow);
    acc += Tr::load(go[n * gs.n + o * gs.c + oh * gs.h + ow * gs.w]);
  }
  red[threadIdx.x] = acc;
  block_tree(red);
  if (threadIdx.x == 0) gb[o] = Tr::store(red[0]);
}

// gw[e] = sum over the slots s (in order) of part[s * total + e].
template <class Tr>
__global__ void __launch_bounds__(kThreads) reduce_slots_kernel(const typename Tr::A* part, int slots, int total,
                                                                typename Tr::S* gw) {
  const int e = static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x);
  if (e >= total) return;
  typename Tr::A v = part[e];
  for (int s = 1; s < slots; ++s) v += part[int64_t(s) * total + e];
  gw[e] = Tr::store(v);
}

// Candidate k of the padded positions that map onto input index v along an axis:
// k == 0 is v itself (padded v + pad0), then the pad0 left and pad1 right pad positions.
__device__ __forceinline__ int fold_cand(int v, int k, int in, int pad0, int mode) {
  if (k == 0) return v + pad0;
  const int r = k <= pad0 ? k - 1 : in + k - 1;  // padded index of the (k-1)-th pad position
  return pad_map(r - pad0, in, mode) == v ? r : -1;
}

// gi[n, c, ih, iw] = sum of the padded-grid gradient gp ([N, C, Hp, Wp] contiguous, A)
// over the padded positions that read (ih, iw); one thread per input element.
template <class Tr>
__global__ void __launch_bounds__(kThreads) fold_kernel(const typename Tr::A* gp, Geo g, int Hp, int Wp, int pb,
                                                        int pr, typename Tr::S* gi, Strides is, int total) {
  using A = typename Tr::A;
  const int e = static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x);
  if (e >= total) return;
  int nc, ih, iw;
  split3(e, g.H, g.W, nc, ih, iw);
  const int n = nc / g.C, c = nc - n * g.C;
  const A* plane = gp + int64_t(nc) * Hp * Wp;
  A acc = A(0);
  for (int a = 0; a <= g.pt + pb; ++a) {
    const int r = fold_cand(ih, a, g.H, g.pt, g.mode);
    if (r < 0) continue;
    for (int b = 0; b <= g.pl + pr; ++b) {
      const int q = fold_cand(iw, b, g.W, g.pl, g.mode);
      if (q < 0) continue;
      acc += plane[int64_t(r) * Wp + q];
    }
  }
  gi[n * is.n + c * is.c + ih * is.h + iw * is.w] = Tr::store(acc);
}

// ---------------------------------------------------------------------------
// host side: checks (as conv_cpu.cpp) and the ops
// ---------------------------------------------------------------------------

struct Params {
  int64_t sh, sw, pt, pb, pl, pr, dh, dw, G;
  int mode;
};

int parse_pad_mode(c10::string_view s) {
  if (s == "zeros") return kZeros;
  if (s == "reflect") return kReflect;
  if (s == "replicate") return kReplicate;
  if (s == "circular") return kCircular;
  TORCH_CHECK_VALUE(false, "padding_mode must be one of 'zeros', 'reflect', 'replicate' or 'circular', but got "
                    "padding_mode='", std::string(s), "'");
}

Params parse_params(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                    c10::string_view padding_mode) {
  TORCH_CHECK(stride.size() == 2, "conv: expected stride to have 2 values (H, W), got ", stride);
  TORCH_CHECK(dilation.size() == 2, "conv: expected dilation to have 2 values (H, W), got ", dilation);
  TORCH_CHECK(padding.size() == 2 || padding.size() == 4,
              "conv: expected padding to have 2 values (H, W) or 4 (top, bottom, left, right), got ", padding);
  Params p;
  p.sh = stride[0]; p.sw = stride[1];
  p.dh = dilation[0]; p.dw = dilation[1];
  if (padding.size() == 2) { p.pt = p.pb = padding[0]; p.pl = p.pr = padding[1]; }
  else { p.pt = padding[0]; p.pb = padding[1]; p.pl = padding[2]; p.pr = padding[3]; }
  p.G = groups;
  p.mode = parse_pad_mode(padding_mode);
  TORCH_CHECK(p.sh > 0 && p.sw > 0, "non-positive stride is not supported");
  TORCH_CHECK(p.dh > 0 && p.dw > 0, "dilation should be greater than zero, but got ", dilation);
  TORCH_CHECK(p.pt >= 0 && p.pb >= 0 && p.pl >= 0 && p.pr >= 0, "negative padding is not supported");
  TORCH_CHECK(groups > 0, "non-positive groups is not supported");
  return p;
}

void check_conv(const at::Tensor& input, const at::Tensor& weight, const Params& p) {
  mte::check_float(input, "input");
  mte::check_float(weight, "weight");
  TORCH_CHECK(input.is_cuda(), "input: expected a CUDA tensor, got one on ", input.device());
  TORCH_CHECK(input.dim() == 4, "conv: expected a 4-D input [N, C, H, W], got a ", input.dim(),
              "-D tensor of size ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, "conv: expected a 4-D weight [O, C/groups, kH, kW], got a ", weight.dim(),
              "-D tensor of size ", weight.sizes());
  mte::check_same_device(weight, "weight", input, "input");
  TORCH_CHECK(input.dtype() == weight.dtype(), "Input type (", input.scalar_type(), ") and weight type (",
              weight.scalar_type(), ") should be the same");
  TORCH_CHECK(weight.size(0) % p.G == 0, "Given groups=", p.G, ", expected weight to be divisible by ", p.G,
              " at dimension 0, but got weight of size ", weight.sizes(), " instead");
  TORCH_CHECK(input.size(1) == weight.size(1) * p.G, "Given groups=", p.G, ", weight of size ", weight.sizes(),
              ", expected input", input.sizes(), " to have ", weight.size(1) * p.G, " channels, but got ",
              input.size(1), " channels instead");
  const int64_t Hp = input.size(2) + p.pt + p.pb, Wp = input.size(3) + p.pl + p.pr;
  const int64_t eh = p.dh * (weight.size(2) - 1) + 1, ew = p.dw * (weight.size(3) - 1) + 1;
  TORCH_CHECK(Hp >= eh && Wp >= ew, "Calculated padded input size per channel: (", Hp, " x ", Wp,
              "). Kernel size: (", eh, " x ", ew, "). Kernel size can't be greater than actual input size");
  if (p.mode == kReflect)
    TORCH_CHECK(p.pt < input.size(2) && p.pb < input.size(2) && p.pl < input.size(3) && p.pr < input.size(3),
                "padding_mode='reflect': padding size should be less than the corresponding input dimension, but "
                "got padding (", p.pt, ", ", p.pb, ", ", p.pl, ", ", p.pr, ") for input ", input.sizes());
  if (p.mode == kCircular)
    TORCH_CHECK(p.pt <= input.size(2) && p.pb <= input.size(2) && p.pl <= input.size(3) && p.pr <= input.size(3),
                "padding_mode='circular': padding value causes wrapping around more than once (padding (", p.pt,
                ", ", p.pb, ", ", p.pl, ", ", p.pr, ") for input ", input.sizes(), ")");
  if (mte::is_reduced_float(input.scalar_type())) {
    int major = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, input.get_device()));
    TORCH_CHECK(major >= 8, "conv (CUDA): ", input.scalar_type(),
                " needs tensor cores of compute capability 8.0 or newer");
  }
}

bool is_cl(const at::Tensor& t) { return t.dim() == 4 && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast; }

at::Tensor new_out4(int64_t N, int64_t C, int64_t H, int64_t W, bool cl, const at::TensorOptions& o) {
  if (!cl) return mte::new_output({N, C, H, W}, o);
  return mte::new_output({N, H, W, C}, o).permute({0, 3, 1, 2});
}

// The kernels decompose 32-bit indices: every index space (the input and output
// elements, the padded grid, the weight) must stay below 2^31.
constexpr int64_t kMaxIndex = 2147483647LL - 1024;  // (tile ends may run a block past the end)

Geo make_geo(const at::Tensor& input, const at::Tensor& weight, const Params& p) {
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t O = weight.size(0), kh = weight.size(2), kw = weight.size(3);
  const int64_t Ho = (H + p.pt + p.pb - p.dh * (kh - 1) - 1) / p.sh + 1;
  const int64_t Wo = (W + p.pl + p.pr - p.dw * (kw - 1) - 1) / p.sw + 1;
  const int64_t Hp = H + p.pt + p.pb, Wp = W + p.pl + p.pr;
  const bool fits = N * C * Hp * Wp <= kMaxIndex && N * std::max<int64_t>(O, 1) * Ho * Wo <= kMaxIndex && weight.numel() <= kMaxIndex &&
                    p.sh * Ho + p.dh * kh + Hp <= kMaxIndex && p.sw * Wo + p.dw * kw + Wp <= kMaxIndex;
  TORCH_CHECK(fits, "conv (CUDA): tensors with 2^31 or more elements (input ", input.sizes(), ", weight ",
              weight.sizes(), ") are not supported");
  Geo g;
  g.N = int(N); g.C = int(C); g.H = int(H); g.W = int(W);
  g.O = int(O); g.kh = int(kh); g.kw = int(kw);
  g.sh = int(p.sh); g.sw = int(p.sw); g.dh = int(p.dh); g.dw = int(p.dw); g.pt = int(p.pt); g.pl = int(p.pl);
  g.Ho = int(Ho); g.Wo = int(Wo);
  g.G = int(p.G); g.Cg = int(weight.size(1)); g.Og = int(O / p.G);
  g.mode = p.mode;
  return g;
}

template <class Tr>
IgParams<Tr> base_params(const Geo& g) {
  IgParams<Tr> q{};
  q.g = g;
  q.act = Act::None;
  q.slope = typename Tr::A(0);
  return q;
}

template <class T>
const T* cptr(const at::Tensor& t) { return static_cast<const T*>(t.const_data_ptr()); }

at::Tensor conv_fwd_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                         c10::string_view padding_mode, c10::string_view act_name) {
  const Act act = mte::parse_act(act_name);
  const Params pr = parse_params(stride, padding, dilation, groups, padding_mode);
  check_conv(input, weight, pr);
  c10::cuda::CUDAGuard guard(input.device());
  const Geo g = make_geo(input, weight, pr);
  at::Tensor bias_c;
  if (bias.has_value() && bias->defined()) {
    mte::check_same_device(*bias, "bias", input, "input");
    TORCH_CHECK(bias->dtype() == input.dtype(), "Input type (", input.scalar_type(), ") and bias type (",
                bias->scalar_type(), ") should be the same");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.O, "Given weight of size ", weight.sizes(),
                ", expected bias to be 1-dimensional with ", g.O, " elements, but got bias of size ", bias->sizes(),
                " instead");
    bias_c = bias->contiguous();
  }
  const bool cl = is_cl(input) || is_cl(weight);
  at::Tensor out = new_out4(g.N, g.O, g.Ho, g.Wo, cl, input.options());
  if (out.numel() == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  with_traits(input.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    using S = typename Tr::S;
    IgParams<Tr> q = base_params<Tr>(g);
    q.x = cptr<S>(input); q.xs = strides_of(input);
    q.w = cptr<S>(weight); q.ws = strides_of(weight);
    q.bias = bias_c.defined() ? cptr<S>(bias_c) : nullptr;
    q.dst = out.data_ptr(); q.ds = strides_of(out);
    q.act = act;
    q.slope = typename Tr::A(0.01);  // the schema has no slope: leaky_relu's default, as the CPU kernel
    if (g.Cg == 1) {
      const int total = static_cast<int>(out.numel());
      direct_fwd_kernel<Tr><<<blocks_for(total), kThreads, 0, stream>>>(q, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      q.M = g.N * g.Ho * g.Wo; q.Nc = g.Og; q.K = g.Cg * g.kh * g.kw;
      launch_igemm<Tr, kFwd>(q, g.G, stream);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_bwd_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                                             const at::Tensor& weight, at::IntArrayRef stride,
                                                             at::IntArrayRef padding, at::IntArrayRef dilation,
                                                             int64_t groups, c10::string_view padding_mode,
                                                             std::array<bool, 3> output_mask) {
  const Params pr = parse_params(stride, padding, dilation, groups, padding_mode);
  check_conv(input, weight, pr);
  c10::cuda::CUDAGuard guard(input.device());
  const Geo g = make_geo(input, weight, pr);
  mte::check_same_device(grad_output, "grad_output", input, "input");
  TORCH_CHECK(grad_output.dtype() == input.dtype(), "grad_output: expected dtype ", input.dtype(), ", got ",
              grad_output.dtype());
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == g.N && grad_output.size(1) == g.O &&
                  grad_output.size(2) == g.Ho && grad_output.size(3) == g.Wo,
              "grad_output: expected size [", g.N, ", ", g.O, ", ", g.Ho, ", ", g.Wo, "] (the conv's output), got ",
              grad_output.sizes());
  const auto opts = input.options();
  const bool cl = is_cl(input) || is_cl(weight);
  at::Tensor gi = output_mask[0] ? new_out4(g.N, g.C, g.H, g.W, cl, opts) : at::empty({0}, opts);
  at::Tensor gw = output_mask[1] ? mte::new_output(weight.sizes(), opts) : at::empty({0}, opts);
  at::Tensor gb = output_mask[2] ? mte::new_output({g.O}, opts) : at::empty({0}, opts);
  if (g.N == 0) {  // an empty batch: zero weight and bias gradients
    if (output_mask[1]) gw.zero_();
    if (output_mask[2]) gb.zero_();
    return {gi, gw, gb};
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int P = g.N * g.Ho * g.Wo;
  const auto acc_dtype = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  with_traits(input.scalar_type(), [&](auto tr) {
    using Tr = decltype(tr);
    using S = typename Tr::S;
    using A = typename Tr::A;
    IgParams<Tr> base = base_params<Tr>(g);
    base.x = cptr<S>(input); base.xs = strides_of(input);
    base.w = cptr<S>(weight); base.ws = strides_of(weight);
    base.go = cptr<S>(grad_output); base.gs = strides_of(grad_output);
    base.P = P;

    if (output_mask[0] && gi.numel() > 0) {
      IgParams<Tr> q = base;
      at::Tensor gp;  // the padded-grid gradient (modes other than zeros)
      const int Hp = g.H + int(pr.pt + pr.pb), Wp = g.W + int(pr.pl + pr.pr);
      if (g.mode == kZeros) {
        q.Hr = g.H; q.Wr = g.W; q.roff_h = g.pt; q.roff_w = g.pl;
        q.dst = gi.data_ptr(); q.ds = strides_of(gi); q.dst_acc = false;
      } else {
        gp = at::empty({g.N, g.C, Hp, Wp}, opts.dtype(acc_dtype));
        q.Hr = Hp; q.Wr = Wp; q.roff_h = 0; q.roff_w = 0;
        q.dst = gp.data_ptr(); q.ds = strides_of(gp); q.dst_acc = true;
      }
      if (g.Cg == 1 || g.Og == 0) {
        const int total = g.N * g.C * q.Hr * q.Wr;
        direct_bwd_in_kernel<Tr><<<blocks_for(total), kThreads, 0, stream>>>(q, total);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else {
        q.M = g.N * q.Hr * q.Wr; q.Nc = g.Cg; q.K = g.Og * g.kh * g.kw;
        launch_igemm<Tr, kBwdIn>(q, g.G, stream);
      }
      if (g.mode != kZeros) {
        const int total = static_cast<int>(gi.numel());
        fold_kernel<Tr><<<blocks_for(total), kThreads, 0, stream>>>(cptr<A>(gp), g, Hp, Wp, int(pr.pb), int(pr.pr),
                                                                    static_cast<S*>(gi.data_ptr()), strides_of(gi),
                                                                    total);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }

    if (output_mask[1] && gw.numel() > 0) {
      S* gwp = static_cast<S*>(gw.data_ptr());  // new_output: contiguous [O, Cg, kh, kw]
      const int Kw = g.Cg * g.kh * g.kw;
      if (g.Cg == 1) {
        direct_bwd_w_kernel<Tr><<<static_cast<unsigned>(gw.numel()), kThreads, 0, stream>>>(base, gwp);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else {
        // slots: fixed by the sizes alone (never by the device), the workspace capped at 16M values
        const int cap = std::max(1, (1 << 24) / std::max(1, g.O * Kw));
        int slots = std::max(1, std::min({P / 1024, 256, cap}));
        slots = std::min(slots, std::max(1, 65535 / g.G));
        at::Tensor part = at::empty({slots, g.O * Kw}, opts.dtype(acc_dtype));
        IgParams<Tr> q = base;
        q.dst = part.data_ptr(); q.dst_acc = true;
        q.slots = slots;
        q.M = g.Og; q.Nc = Kw; q.K = P;
        launch_igemm<Tr, kBwdW>(q, g.G * slots, stream);
        const int total = g.O * Kw;
        reduce_slots_kernel<Tr><<<blocks_for(total), kThreads, 0, stream>>>(cptr<A>(part), slots, total, gwp);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }

    if (output_mask[2] && gb.numel() > 0) {
      bias_grad_kernel<Tr><<<static_cast<unsigned>(g.O), kThreads, 0, stream>>>(
          cptr<S>(grad_output), strides_of(grad_output), g.Ho, g.Wo, P, static_cast<S*>(gb.data_ptr()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {gi, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(minitorch_ext, CUDA, m) {
  m.impl("conv_fwd", &conv_fwd_cuda);
  m.impl("conv_bwd", &conv_bwd_cuda);
}
