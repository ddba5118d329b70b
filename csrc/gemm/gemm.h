// The CPU GEMM core: the internal C++ API that Linear, conv, attention and the
// RNN cells call (implementation: csrc/gemm/gemm_cpu.cpp; ops: linear_cpu.cpp).
//
//   out[M,N] = act(alpha * A[M,K] . B[K,N] + beta * c[M,N] + bias) , preact = the value before act
//
// * Operands are strided views (Mat: element (i,k) at p[i*rs + k*cs]); a
//   transposed operand is only other strides, never a copy.
// * T (the element type of every operand and of the output) is float, double or
//   c10::BFloat16. The math is in Acc<T> (float for float and bfloat16, double
//   for double): bfloat16 is widened while packing and rounded once on store.
// * Results are bitwise the same for any thread count (the K blocking is fixed
//   by Blocking<Acc>, never by the threads).
//
// Five entry points, from the most to the least packaged:
//   gemm(M,N,K, a, b, out, ldo, ep)            the whole thing, threaded
//   gemm_packed_a(M,N,K, apack, b, out, ldo, ep) the same with the caller packing A
//                                              (conv: panels straight from patches)
//   pack_a / pack_b                            the panel formats, for callers that pack
//   micro_tile(kc, ap, bp, c, ldc, accumulate) one MR x NR register tile on packed
//                                              panels into an L1 tile (attention)
// and Epilogue (alpha, beta*c, bias per row or column, activation, preact and a
// per-row hook for RNN gate arithmetic), applied while the tile is in registers.
#pragma once
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <type_traits>

#include "common/act_kind.h"

namespace mte::gemm {

template <typename T>
using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;

// A strided, read-only matrix view: element (i, j) is p[i*rs + j*cs].
template <typename T>
struct Mat {
  const T* p = nullptr;
  int64_t rs = 0, cs = 0;
  const T* at(int64_t i, int64_t j) const { return p + i * rs + j * cs; }
};

// Register tile and cache blocking for the accumulation type A, fixed at build
// time by the vector width (the same source builds AVX2 and AVX-512):
//   MR x NR  the register tile (MR rows x NV vectors of accumulators):
//            AVX2 float 4x24 (12 ymm: 4 broadcasts + 3 loads per 12 FMAs),
//            AVX2 double 6x8, AVX-512 float 6x64 (24 zmm), AVX-512 double 6x32
//   KC       the K block: an MR x KC A strip and a KC x NR B micro-panel sit in L1
//            (AVX2 float: 4 KiB + 24 KiB of the 32 KiB L1d)
//   MC       rows of the packed A block (MC x KC, in L2)
//   NC       columns of the packed B panel (KC x NC, in L3)
template <typename A>
struct Blocking {
  static constexpr int64_t W = at::vec::Vectorized<A>::size();
  static constexpr bool kAvx2Float = W * sizeof(A) == 32 && sizeof(A) == 4;
  static constexpr int64_t MR = kAvx2Float ? 4 : 6;
  static constexpr int64_t NV = W * sizeof(A) >= 64 ? 4 : (kAvx2Float ? 3 : 2);
  static constexpr int64_t NR = NV * W;
  static constexpr int64_t KC = W * sizeof(A) >= 64 ? 128 : 256;  // KC*NR*sizeof(A): 32 KiB or 16 KiB
  static constexpr int64_t MC = std::is_same_v<A, double> ? 72 : 144;
  static constexpr int64_t NC = 4096;
};

// What happens to the product before it is stored, per element (i, j):
//   v = alpha * acc;  v += beta * c(i,j)  (when c, and beta != 0: beta == 0 never reads c)
//   v += bias[j] (bias_dim 1) or bias[i] (bias_dim 0);  row_fn(...) may rewrite v;
//   preact(i,j) = v (when preact);  out(i,j) = act(v)
// c and preact are in T (c any strides; preact row-major with leading dim preact_ld);
// bias is contiguous T.
template <typename T>
struct Epilogue {
  double alpha = 1.0;
  double beta = 0.0;
  const T* c = nullptr;
  int64_t c_rs = 0, c_cs = 0;
  const T* bias = nullptr;
  int bias_dim = 1;
  Act act = Act::None;
  double slope = 0.01;
  T* preact = nullptr;
  int64_t preact_ld = 0;
  // Optional hook (RNN cells): called with n <= NR final values of row i,
  // columns j..j+n, after bias and before preact/act; may rewrite them in place.
  void (*row_fn)(void* ctx, int64_t i, int64_t j, int64_t n, Acc<T>* v) = nullptr;
  void* row_ctx = nullptr;
};

// The packed A source for gemm_packed_a: fill dst with the rows [i0, i0+mc) and
// the columns [p0, p0+kc) of A in pack_a's format. Called once per MC x KC
// block, from several threads at once (it must be reentrant).
template <typename T>
struct APacker {
  void (*fn)(const void* ctx, int64_t i0, int64_t mc, int64_t p0, int64_t kc, Acc<T>* dst) = nullptr;
  const void* ctx = nullptr;
};

// out (row-major, leading dim ldo) = the epilogue of a . b, with a [M,K] and b [K,N].
// Threads over the M x N blocks with at::parallel_for unless allow_threads is
// false or it is called inside a parallel region (then single-threaded).
// K == 0: out = act(beta*c + bias); M == 0 or N == 0: nothing to do.
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, Mat<T> a, Mat<T> b, T* out, int64_t ldo, const Epilogue<T>& ep,
          bool allow_threads = true);

template <typename T>
void gemm_packed_a(int64_t M, int64_t N, int64_t K, const APacker<T>& apack, Mat<T> b, T* out, int64_t ldo,
                   const Epilogue<T>& ep, bool allow_threads = true);

// Panel formats (A = Acc<T>, zero padded to whole strips/panels):
//   pack_a: strips of MR rows; strip s holds A(s*MR + r, k) at dst[s*MR*kc + k*MR + r]
//   pack_b: micro-panels of NR columns; panel q holds B(k, q*NR + c) at dst[q*NR*kc + k*NR + c]
// Sizes: pack_a needs ceil(mc/MR)*MR*kc elements, pack_b ceil(nc/NR)*NR*kc.
template <typename T>
void pack_a(Mat<T> a, int64_t mc, int64_t kc, Acc<T>* dst);
template <typename T>
void pack_b(Mat<T> b, int64_t kc, int64_t nc, Acc<T>* dst);

// One MR x NR tile: c[r*ldc + j] (+)= sum_k ap[k*MR + r] * bp[k*NR + j], for a packed
// A strip and B micro-panel (accumulate false: overwrite). A = float or double.
template <typename A>
void micro_tile(int64_t kc, const A* ap, const A* bp, A* c, int64_t ldc, bool accumulate);

}  // namespace mte::gemm
