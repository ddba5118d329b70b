// The CPU GEMM core (API and panel formats: gemm.h).
//
// Algorithm: Goto/BLIS. Five loops around a register-tiled micro-kernel:
//   jc over N in NC columns   - pack the KC x NC panel of B (micro-panels NR wide, K-major)
//     pc over K in KC steps   - (the K blocking: fixed, so any thread count sums alike)
//       ic over M in MC rows  - pack the MC x KC block of A (strips MR tall)
//         jr over NR columns  - one B micro-panel (KC x NR) stays in L1 ...
//           ir over MR rows   - ... while A strips stream from L2: micro-kernel
// The micro-kernel holds an MR x NR tile of C in registers (AVX2 float: 4 x 24
// = 12 ymm accumulators, + 3 B vectors + 1 broadcast = 16 registers) and
// per k does NV vector loads of B, MR broadcasts of A and MR*NV FMAs: nothing
// else in the inner loop (objdump-checked on the AVX2 and AVX-512 builds). It is written on at::vec::Vectorized, so the same
// source compiles to AVX2 here and to AVX-512 zmm tiles where built so.
// Memory traffic: B is read once per M-part (packed once per jc/pc), A once per
// NC columns, C read+written once per KC step of K (out is its own accumulator
// for float/double; bfloat16 keeps float partials in a per-thread buffer).
// Packing reads any strides (a transposed operand is only strides) and widens
// bfloat16 to float, so one float micro-kernel serves both; rounding happens
// once, on the final store.
// Epilogue (alpha, beta*c, bias, activation, preact) runs on the accumulators
// of the last K step before the store: one pass over C.
// Threads: the M x N plane is cut into T rectangles (more cuts along the
// dimension whose duplicated packing costs less: splitting N repacks A in each
// part, splitting M repacks B), one at::parallel_for task each, each with its
// own thread-local packing buffers (grown once, reused: a fresh buffer costs
// page faults on every call). Every output element is computed by the same
// instruction sequence whichever rectangle holds it, so results are bitwise
// identical for any thread count.
// Small M is bandwidth bound (W is read once for few rows): no packing.
//   M <= 32, B K-contiguous (Linear's x . W^T): W streamed once, 3 x 4 dot
//     products vectorised along K, each 4-row group of W reused from L2;
//   M <= 4, B N-contiguous (g . W of linear_bwd): rows of B streamed once into
//     M x JB partial sums held in L1.
// Both sum K in KC chunks, like the packed path, and split N over threads.
// Small K (K <= 16, grad_weight from a few tokens): rows of out built directly
// from B widened once, no tiles (a tile would store C after a few FMAs).
#include "gemm/gemm.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common/vec_reduce.h"
#include "common/act.h"

namespace mte::gemm {
namespace {

using mte::hsum;

using at::vec::Vectorized;

#define MTE_INLINE inline __attribute__((always_inline))

// ---- thread-local workspaces -------------------------------------------------

template <typename A>
struct Buf {
  A* p = nullptr;
  size_t n = 0;
  A* get(size_t m) {
    if (m > n) {
      std::free(p);
      const size_t bytes = ((m * sizeof(A) + 63) / 64) * 64;
      p = static_cast<A*>(std::aligned_alloc(64, bytes));
      TORCH_CHECK(p != nullptr, "gemm: out of memory for a ", bytes, "-byte packing buffer");
      n = m;
    }
    return p;
  }
  ~Buf() { std::free(p); }
};

template <typename A>
struct Workspace {
  Buf<A> a, b, cacc, rows;
};

template <typename A>
Workspace<A>& workspace() {
  thread_local Workspace<A> w;
  return w;
}

// ---- loads and stores of T as Acc vectors -------------------------------------

template <typename T>
struct Io {
  using A = Acc<T>;
  using V = Vectorized<A>;
  static constexpr int64_t W = V::size();
  static constexpr bool kSame = std::is_same_v<T, A>;

  // n (<= W) contiguous values, zeros past n
  static MTE_INLINE V load(const T* p, int64_t n) {
    if constexpr (kSame) {
      return n == W ? V::loadu(p) : V::loadu(p, n);
    } else {
      if (n == W) {
        V v;
        at::vec::load_to_float(p, v);
        return v;
      }
      A tmp[W] = {};
      for (int64_t k = 0; k < n; ++k) tmp[k] = static_cast<A>(p[k]);
      return V::loadu(tmp);
    }
  }
  static MTE_INLINE V load_strided(const T* p, int64_t s, int64_t n) {
    if (s == 1) return load(p, n);
    A tmp[W] = {};
    for (int64_t k = 0; k < n; ++k) tmp[k] = static_cast<A>(p[k * s]);
    return V::loadu(tmp);
  }
  static MTE_INLINE void store(const V& v, T* p, int64_t n) {
    if constexpr (kSame) {
      if (n == W) v.store(p); else v.store(p, n);
    } else {
      at::vec::convert_from_float<T>(v, v).store(p, n);  // round to nearest even, once
    }
  }
};

// ---- the epilogue --------------------------------------------------------------

template <typename T>
struct Epi {
  using A = Acc<T>;
  using V = Vectorized<A>;
  using IO = Io<T>;
  static constexpr int64_t W = V::size();
  static constexpr int64_t NV = Blocking<A>::NV;

  A alpha, beta, slope;
  bool scale, use_c;
  const T* c;
  int64_t c_rs, c_cs;
  const T* bias;
  int bias_dim;
  Act act;
  T* pre;
  int64_t pre_ld;
  void (*row_fn)(void*, int64_t, int64_t, int64_t, A*);
  void* row_ctx;
  T* out;
  int64_t ldo;

  Epi(const Epilogue<T>& e, T* out_, int64_t ldo_)
      : alpha(static_cast<A>(e.alpha)), beta(static_cast<A>(e.beta)), slope(static_cast<A>(e.slope)),
        scale(e.alpha != 1.0), use_c(e.c != nullptr && e.beta != 0.0), c(e.c), c_rs(e.c_rs), c_cs(e.c_cs),
        bias(e.bias), bias_dim(e.bias_dim), act(e.act), pre(e.preact), pre_ld(e.preact_ld), row_fn(e.row_fn),
        row_ctx(e.row_ctx), out(out_), ldo(ldo_) {}

  // alpha, beta*c, bias on one vector of row i, columns j..j+n (n <= W)
  MTE_INLINE V pre_act(V v, int64_t i, int64_t j, int64_t n) const {
    if (scale) v = v * V(alpha);
    if (use_c) v = at::vec::fmadd(V(beta), IO::load_strided(c + i * c_rs + j * c_cs, c_cs, n), v);
    if (bias) v = v + (bias_dim == 1 ? IO::load(bias + j, n) : V(static_cast<A>(bias[i])));
    return v;
  }
  MTE_INLINE void post_act(V v, int64_t i, int64_t j, int64_t n) const {
    if (pre) IO::store(v, pre + i * pre_ld + j, n);
    if (act != Act::None) v = act_vec<A>(act, v, slope);
    IO::store(v, out + i * ldo + j, n);
  }
  // A row segment of n <= NV*W columns held in NV vectors (lanes past n: anything).
  MTE_INLINE void row(V* v, int64_t i, int64_t j, int64_t n) const {
#pragma GCC unroll 8
    for (int64_t q = 0; q < NV; ++q) {
      const int64_t cnt = std::min<int64_t>(W, n - q * W);
      if (cnt > 0) v[q] = pre_act(v[q], i, j + q * W, cnt);
    }
    if (row_fn) {
      A tmp[NV * W];
      for (int64_t q = 0; q < NV; ++q) v[q].store(tmp + q * W);
      row_fn(row_ctx, i, j, n, tmp);
      for (int64_t q = 0; q < NV; ++q) v[q] = V::loadu(tmp + q * W);
    }
#pragma GCC unroll 8
    for (int64_t q = 0; q < NV; ++q) {
      const int64_t cnt = std::min<int64_t>(W, n - q * W);
      if (cnt > 0) post_act(v[q], i, j + q * W, cnt);
    }
  }
};

// ---- the micro-kernel -------------------------------------------------------------

// c[MR][NV] = sum over k of A strip (broadcast) x B micro-panel (vectors).
template <typename A>
MTE_INLINE void kernel(int64_t kc, const A* __restrict ap, const A* __restrict bp,
                       Vectorized<A> (&c)[Blocking<A>::MR][Blocking<A>::NV]) {
  using V = Vectorized<A>;
  constexpr int64_t MR = Blocking<A>::MR, NV = Blocking<A>::NV, W = Blocking<A>::W, NR = Blocking<A>::NR;
#pragma GCC unroll 8
  for (int64_t r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int64_t q = 0; q < NV; ++q) c[r][q] = V(A(0));
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    V b[NV];
#pragma GCC unroll 8
    for (int64_t q = 0; q < NV; ++q) b[q] = V::loadu(bp + q * W);
#pragma GCC unroll 8
    for (int64_t r = 0; r < MR; ++r) {
      const V a(ap[r]);
#pragma GCC unroll 8
      for (int64_t q = 0; q < NV; ++q) c[r][q] = at::vec::fmadd(a, b[q], c[r][q]);
    }
    ap += MR;
    bp += NR;
  }
}

// One tile of the driver (not inlined into the driver on purpose: inside the
// large driver function GCC spilled the 24 zmm accumulators of the AVX-512
// tile; on its own the k loop keeps all of them in registers, checked with
// objdump on both the AVX2 and the AVX-512 build): the product of a packed strip and micro-panel over
// this K block, added to the partial sums of the earlier K blocks (cacc, when
// not first), then either kept as partial sums (not last) or finished by the
// epilogue into out (last). mr x nr is the valid part of the tile.
template <typename T>
__attribute__((noinline)) void tile(int64_t kc, const Acc<T>* ap, const Acc<T>* bp, int64_t mr, int64_t nr, bool first, bool last,
                     Acc<T>* cacc, int64_t ldacc, const Epi<T>& epi, int64_t i, int64_t j) {
  using A = Acc<T>;
  using V = Vectorized<A>;
  constexpr int64_t MR = Blocking<A>::MR, NV = Blocking<A>::NV, W = Blocking<A>::W, NR = Blocking<A>::NR;
  // Start fetching the C rows this tile will read or write at its end: the
  // k loop (~kc*NV*MR/2 cycles) hides the miss that would otherwise stall it.
  if (!first || !last) {
    for (int64_t r = 0; r < mr; ++r) {
      __builtin_prefetch(cacc + r * ldacc, 1, 3);
      __builtin_prefetch(cacc + r * ldacc + NR - 1, 1, 3);
    }
  }
  if (last) {
    for (int64_t r = 0; r < mr; ++r) {
      const T* o = epi.out + (i + r) * epi.ldo + j;
      __builtin_prefetch(o, 1, 3);
      __builtin_prefetch(o + NR - 1, 1, 3);
    }
  }
  V c[MR][NV];
  kernel<A>(kc, ap, bp, c);
#pragma GCC unroll 8
  for (int64_t r = 0; r < MR; ++r) {
    if (r >= mr) break;
    if (!first) {
#pragma GCC unroll 8
      for (int64_t q = 0; q < NV; ++q) {
        const int64_t cnt = std::min<int64_t>(W, nr - q * W);
        if (cnt <= 0) break;
        const A* p = cacc + r * ldacc + q * W;
        c[r][q] = (cnt == W ? V::loadu(p) : V::loadu(p, cnt)) + c[r][q];
      }
    }
    if (!last) {
#pragma GCC unroll 8
      for (int64_t q = 0; q < NV; ++q) {
        const int64_t cnt = std::min<int64_t>(W, nr - q * W);
        if (cnt <= 0) break;
        A* p = cacc + r * ldacc + q * W;
        if (cnt == W) c[r][q].store(p); else c[r][q].store(p, cnt);
      }
    } else {
      epi.row(c[r], i + r, j, nr);
    }
  }
}

// ---- packing ---------------------------------------------------------------------

template <typename T>
void pack_a_impl(Mat<T> a, int64_t mc, int64_t kc, Acc<T>* dst) {
  using A = Acc<T>;
  constexpr int64_t MR = Blocking<A>::MR;
  for (int64_t s = 0; s < mc; s += MR) {
    const int64_t mr = std::min(MR, mc - s);
    A* d = dst + s * kc;
    if (mr == MR && a.cs == 1) {  // rows contiguous along k: gather MR rows
      const T* rows[MR];
      for (int64_t r = 0; r < MR; ++r) rows[r] = a.at(s + r, 0);
      for (int64_t k = 0; k < kc; ++k)
#pragma GCC unroll 8
        for (int64_t r = 0; r < MR; ++r) d[k * MR + r] = static_cast<A>(rows[r][k]);
    } else if (mr == MR && a.rs == 1) {  // columns contiguous along i (a transposed)
      for (int64_t k = 0; k < kc; ++k) {
        const T* col = a.at(s, k);
#pragma GCC unroll 8
        for (int64_t r = 0; r < MR; ++r) d[k * MR + r] = static_cast<A>(col[r]);
      }
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t r = 0; r < MR; ++r) d[k * MR + r] = r < mr ? static_cast<A>(*a.at(s + r, k)) : A(0);
    }
  }
}

template <typename T>
void pack_b_impl(Mat<T> b, int64_t kc, int64_t nc, Acc<T>* dst) {
  using A = Acc<T>;
  constexpr int64_t NR = Blocking<A>::NR, W = Blocking<A>::W;
  using V = Vectorized<A>;
  for (int64_t q = 0; q < nc; q += NR) {
    const int64_t nr = std::min(NR, nc - q);
    A* d = dst + q * kc;
    if (nr == NR && b.cs == 1) {  // rows of B contiguous along n: vector copies (widening bf16)
      for (int64_t k = 0; k < kc; ++k) {
        const T* src = b.at(k, q);
#pragma GCC unroll 8
        for (int64_t v = 0; v < NR; v += W) Io<T>::load(src + v, W).store(d + k * NR + v);
      }
    } else if (b.rs == 1 && std::is_same_v<T, float> && nr == NR && NR % 8 == 0) {
      // columns contiguous along k (B = W^T of a Linear): 8 x 8 register transposes
      const float* src = reinterpret_cast<const float*>(b.at(0, q));
      float* df = reinterpret_cast<float*>(d);
      int64_t k = 0;
      for (; k + 8 <= kc; k += 8)
        for (int64_t c = 0; c < NR; c += 8) at::vec::transpose_mxn<float, 8, 8>(src + c * b.cs + k, b.cs, df + k * NR + c, NR);
      for (; k < kc; ++k)
        for (int64_t c = 0; c < NR; ++c) df[k * NR + c] = src[c * b.cs + k];
    } else if (b.rs == 1) {  // columns contiguous along k: transpose
      for (int64_t c = 0; c < nr; ++c) {
        const T* col = b.at(0, q + c);
        for (int64_t k = 0; k < kc; ++k) d[k * NR + c] = static_cast<A>(col[k]);
      }
      for (int64_t c = nr; c < NR; ++c)
        for (int64_t k = 0; k < kc; ++k) d[k * NR + c] = A(0);
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t c = 0; c < NR; ++c) d[k * NR + c] = c < nr ? static_cast<A>(*b.at(k, q + c)) : A(0);
    }
    (void)sizeof(V);
  }
}

template <typename T>
void strided_apack(const void* ctx, int64_t i0, int64_t mc, int64_t p0, int64_t kc, Acc<T>* dst) {
  const Mat<T>& a = *static_cast<const Mat<T>*>(ctx);
  pack_a_impl<T>(Mat<T>{a.at(i0, p0), a.rs, a.cs}, mc, kc, dst);
}

// ---- the blocked driver on one rectangle [i0,i1) x [j0,j1) of out ------------------

template <typename T>
void run_region(int64_t i0, int64_t i1, int64_t j0, int64_t j1, int64_t K, const APacker<T>& apack, Mat<T> b,
                const Epi<T>& epi) {
  using A = Acc<T>;
  using Bk = Blocking<A>;
  constexpr int64_t MR = Bk::MR, NR = Bk::NR, KC = Bk::KC, MC = Bk::MC;
  if (i0 >= i1 || j0 >= j1) return;
  auto& ws = workspace<A>();
  const int64_t rows = i1 - i0;
  // float/double: out is its own accumulator between K blocks; bfloat16 with
  // more than one K block keeps float partial sums of rows x nc in ws.cacc
  // (nc capped so that buffer stays within 4M floats).
  constexpr bool kSame = std::is_same_v<T, A>;
  const bool need_cacc = !kSame && K > KC;
  int64_t NC = Bk::NC;
  if (need_cacc) NC = std::max<int64_t>(NR, std::min<int64_t>(NC, ((int64_t(4) << 20) / rows) / NR * NR));
  A* bpack = ws.b.get(static_cast<size_t>(KC * (std::min(NC, j1 - j0) + NR)));
  A* apack_buf = ws.a.get(static_cast<size_t>((MC + MR) * KC));
  A* cacc = need_cacc ? ws.cacc.get(static_cast<size_t>(rows * NC)) : nullptr;

  for (int64_t jc = j0; jc < j1; jc += NC) {
    const int64_t nc = std::min(NC, j1 - jc);
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = std::min(KC, K - pc);
      const bool first = pc == 0, last = pc + kc == K;
      pack_b_impl<T>(Mat<T>{b.at(pc, jc), b.rs, b.cs}, kc, nc, bpack);
      for (int64_t ic = i0; ic < i1; ic += MC) {
        const int64_t mc = std::min(MC, i1 - ic);
        apack.fn(apack.ctx, ic, mc, pc, kc, apack_buf);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int64_t nr = std::min(NR, nc - jr);
          const A* bp = bpack + jr * kc;
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int64_t mr = std::min(MR, mc - ir);
            const int64_t i = ic + ir, j = jc + jr;
            A* cp;
            int64_t ldacc;
            if constexpr (kSame) {
              cp = epi.out + i * epi.ldo + j;
              ldacc = epi.ldo;
            } else {
              cp = cacc ? cacc + (i - i0) * nc + jr : nullptr;
              ldacc = nc;
            }
            tile<T>(kc, apack_buf + ir * kc, bp, mr, nr, first, last, cp, ldacc, epi, i, j);
          }
        }
      }
    }
  }
}

// ---- K == 0: out = act(beta*c + bias) --------------------------------------------

template <typename T>
void epilogue_only(int64_t M, int64_t N, const Epi<T>& epi, bool threads) {
  using A = Acc<T>;
  using V = Vectorized<A>;
  constexpr int64_t NR = Blocking<A>::NR, NV = Blocking<A>::NV;
  auto body = [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i)
      for (int64_t j = 0; j < N; j += NR) {
        V v[NV];
        for (int64_t q = 0; q < NV; ++q) v[q] = V(A(0));
        epi.row(v, i, j, std::min(NR, N - j));
      }
  };
  if (threads) at::parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(N, 1)), body);
  else body(0, M);
}

// ---- small M: dot products along K, W streamed once --------------------------------

// res[m*ldr + j] = sum_k a[m*lda + k] * w[j*ldw + k] for MB rows x NJ columns.
// K is summed in chunks of kChunk (lane-wise partials added into a running
// vector total): a two-level sum, far more accurate than one long chain.
template <typename T, int MB, int NJ>
void dot_tile(int64_t K, const Acc<T>* a, int64_t lda, const T* w, int64_t ldw, Acc<T>* res, int64_t ldr) {
  using A = Acc<T>;
  using V = Vectorized<A>;
  constexpr int64_t W = V::size();
  constexpr int64_t kChunk = 256;
  V tot[MB][NJ], acc[MB][NJ];
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < NJ; ++j) tot[m][j] = V(A(0));
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    const int64_t k1 = std::min(K, k0 + kChunk);
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m)
#pragma GCC unroll 8
      for (int j = 0; j < NJ; ++j) acc[m][j] = V(A(0));
    int64_t k = k0;
    for (; k + W <= k1; k += W) {
      V av[MB];
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) av[m] = V::loadu(a + m * lda + k);
#pragma GCC unroll 8
      for (int j = 0; j < NJ; ++j) {
        const V wv = Io<T>::load(w + j * ldw + k, W);
#pragma GCC unroll 8
        for (int m = 0; m < MB; ++m) acc[m][j] = at::vec::fmadd(av[m], wv, acc[m][j]);
      }
    }
    if (k < k1) {
      const int64_t n = k1 - k;
      V av[MB];
      for (int m = 0; m < MB; ++m) av[m] = V::loadu(a + m * lda + k, n);
      for (int j = 0; j < NJ; ++j) {
        const V wv = Io<T>::load(w + j * ldw + k, n);
        for (int m = 0; m < MB; ++m) acc[m][j] = at::vec::fmadd(av[m], wv, acc[m][j]);
      }
    }
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m)
#pragma GCC unroll 8
      for (int j = 0; j < NJ; ++j) tot[m][j] = tot[m][j] + acc[m][j];
  }
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < NJ; ++j) res[m * ldr + j] = hsum(tot[m][j]);
}

template <typename T, int NJ>
void dot_rows(int64_t mb, int64_t K, const Acc<T>* a, int64_t lda, const T* w, int64_t ldw, Acc<T>* res,
              int64_t ldr) {
  switch (mb) {
    case 1: dot_tile<T, 1, NJ>(K, a, lda, w, ldw, res, ldr); break;
    case 2: dot_tile<T, 2, NJ>(K, a, lda, w, ldw, res, ldr); break;
    default: dot_tile<T, 3, NJ>(K, a, lda, w, ldw, res, ldr); break;
  }
}

constexpr int64_t kSmallM = 32;  // the dot path beats packing W up to about M = 64 (4096 x 4096, measured)
constexpr int64_t kSmallNN = 4;  // above, packing B pays off (measured on 4096 x 4096: M = 8 already runs faster packed)

// The M (<= kSmallM) rows of A as Acc rows contiguous along K: A itself when it
// is already that, else a copy in the calling thread's workspace.
template <typename T>
const Acc<T>* acc_rows(int64_t M, int64_t K, Mat<T> a, int64_t& lda) {
  using A = Acc<T>;
  if (std::is_same_v<T, A> && a.cs == 1) {
    lda = a.rs;
    return reinterpret_cast<const A*>(a.p);
  }
  A* buf = workspace<A>().rows.get(static_cast<size_t>(M * K));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) buf[m * K + k] = static_cast<A>(*a.at(m, k));
  lda = K;
  return buf;
}

// out = epilogue(a . b) for M <= kSmallM and b.cs == 1 (rows of B contiguous:
// grad_input = g . W of a Linear at decode). B is streamed once, unpacked, row
// by row: a column block of JB columns keeps M x JB partial sums in L1, and for
// each k the contiguous segment B[k, j0:j0+JB] is read once and FMA'd into
// every row's partials (long contiguous reads: a narrow tile walking down the
// rows of B would touch a new page per k). K runs in chunks of KC rows, the
// chunk sums added in order (the general path's summation order).
template <typename T>
void small_m_nn(int64_t M, int64_t N, int64_t K, Mat<T> a, Mat<T> b, const Epi<T>& epi, int64_t nthreads) {
  const bool threads = nthreads > 1;
  using A = Acc<T>;
  using V = Vectorized<A>;
  constexpr int64_t W = V::size(), NV = Blocking<A>::NV, NR = Blocking<A>::NR, KC = Blocking<A>::KC;
  // M x JB partials in at most 16 KiB of L1, JB a multiple of NR, and one block
  // per thread when that fits (long rows stream best; the column grouping does
  // not change any element's arithmetic, so it may depend on the thread count)
  const int64_t per_thread = (N + nthreads - 1) / nthreads;
  const int64_t JB = std::max<int64_t>(
      NR, std::min<int64_t>((per_thread + NR - 1) / NR * NR, (16384 / int64_t(sizeof(A)) / M) / NR * NR));
  int64_t lda;
  const A* ar = acc_rows<T>(M, K, a, lda);
  const int64_t nblocks = (N + JB - 1) / JB;
  auto body = [&](int64_t b0, int64_t b1) {
    A* buf = workspace<A>().cacc.get(static_cast<size_t>(2 * M * JB));
    A* part = buf;
    A* tot = buf + M * JB;
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t j0 = blk * JB, nb = std::min(JB, N - j0);
      const int64_t nfull = nb / W * W;
      for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t k1 = std::min(K, k0 + KC);
        std::fill(part, part + M * JB, A(0));
        for (int64_t k = k0; k < k1; ++k) {
          const T* brow = b.at(k, j0);
          for (int64_t m = 0; m < M; ++m) {
            const V av(ar[m * lda + k]);
            A* p = part + m * JB;
            int64_t v = 0;
            for (; v + 2 * W <= nfull; v += 2 * W) {
              at::vec::fmadd(av, Io<T>::load(brow + v, W), V::loadu(p + v)).store(p + v);
              at::vec::fmadd(av, Io<T>::load(brow + v + W, W), V::loadu(p + v + W)).store(p + v + W);
            }
            for (; v < nfull; v += W) at::vec::fmadd(av, Io<T>::load(brow + v, W), V::loadu(p + v)).store(p + v);
            if (v < nb) at::vec::fmadd(av, Io<T>::load(brow + v, nb - v), V::loadu(p + v)).store(p + v);
          }
        }
        for (int64_t e = 0; e < M * JB; e += W) {
          const V pv = V::loadu(part + e);
          (k0 == 0 ? pv : V::loadu(tot + e) + pv).store(tot + e);
        }
      }
      for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < nb; j += NR) {
          V v[NV];
          for (int64_t q = 0; q < NV; ++q) v[q] = V::loadu(tot + m * JB + j + q * W);
          epi.row(v, m, j0 + j, std::min(NR, nb - j));
        }
    }
  };
  if (threads) at::parallel_for(0, nblocks, 1, body);
  else body(0, nblocks);
}

// out = epilogue(a . b) for M <= kSmallM and b.rs == 1 (column j of B is the
// contiguous row j of W, leading dim b.cs).
template <typename T>
void small_m(int64_t M, int64_t N, int64_t K, Mat<T> a, Mat<T> b, const Epi<T>& epi, bool threads) {
  using A = Acc<T>;
  using V = Vectorized<A>;
  constexpr int64_t W = V::size(), NV = Blocking<A>::NV, NR = Blocking<A>::NR;
  constexpr int64_t JB = 4 * NR, NJ = 4, MB = 3;
  static_assert(JB % NR == 0, "column block must hold whole epilogue rows");
  int64_t lda;
  const A* ar = acc_rows<T>(M, K, a, lda);
  const int64_t nblocks = (N + JB - 1) / JB;
  auto body = [&](int64_t b0, int64_t b1) {
    A res[kSmallM * JB];
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t j0 = blk * JB, nb = std::min(JB, N - j0);
      int64_t jj = 0;
      for (; jj + NJ <= nb; jj += NJ)
        for (int64_t m0 = 0; m0 < M; m0 += MB)
          dot_rows<T, NJ>(std::min(MB, M - m0), K, ar + m0 * lda, lda, b.at(0, j0 + jj), b.cs, res + m0 * JB + jj,
                          JB);
      for (; jj < nb; ++jj)
        for (int64_t m0 = 0; m0 < M; m0 += MB)
          dot_rows<T, 1>(std::min(MB, M - m0), K, ar + m0 * lda, lda, b.at(0, j0 + jj), b.cs, res + m0 * JB + jj,
                         JB);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < nb; j += NR) {
          V v[NV];
          for (int64_t q = 0; q < NV; ++q) v[q] = V::loadu(res + m * JB + j + q * W);
          epi.row(v, m, j0 + j, std::min(NR, nb - j));
        }
    }
  };
  if (threads) at::parallel_for(0, nblocks, 1, body);
  else body(0, nblocks);
}

// ---- small K: rank-K updates (grad_weight = g^T . x with a handful of tokens) -------

constexpr int64_t kSmallK = 16;

// With K <= kSmallK a packed tile would do a few FMAs per load and store of C:
// instead each row of out is built directly, vectorised along N, from B
// widened once into a zero-padded [K, ldb] buffer (at most 16 rows, in L2).
// Per element the k order is the packed path's (one chunk, from zero).
template <typename T>
void small_k(int64_t M, int64_t N, int64_t K, Mat<T> a, Mat<T> b, const Epi<T>& epi, bool threads) {
  using A = Acc<T>;
  using V = Vectorized<A>;
  constexpr int64_t W = V::size(), NV = Blocking<A>::NV, NR = Blocking<A>::NR;
  const int64_t ldb = (N + NR - 1) / NR * NR;
  A* bb = workspace<A>().b.get(static_cast<size_t>(K * ldb));
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t j = 0; j < N; ++j) bb[k * ldb + j] = static_cast<A>(*b.at(k, j));
    for (int64_t j = N; j < ldb; ++j) bb[k * ldb + j] = A(0);
  }
  auto body = [&](int64_t r0, int64_t r1) {
    A arow[kSmallK];
    for (int64_t i = r0; i < r1; ++i) {
      for (int64_t k = 0; k < K; ++k) arow[k] = static_cast<A>(*a.at(i, k));
      for (int64_t j = 0; j < N; j += NR) {
        V acc[NV];
#pragma GCC unroll 8
        for (int64_t q = 0; q < NV; ++q) acc[q] = V(A(0));
        for (int64_t k = 0; k < K; ++k) {
          const V av(arow[k]);
#pragma GCC unroll 8
          for (int64_t q = 0; q < NV; ++q) acc[q] = at::vec::fmadd(av, V::loadu(bb + k * ldb + j + q * W), acc[q]);
        }
        epi.row(acc, i, j, std::min(NR, N - j));
      }
    }
  };
  if (threads) at::parallel_for(0, M, std::max<int64_t>(1, 65536 / std::max<int64_t>(N * (K + 1), 1)), body);
  else body(0, M);
}

// ---- threads ----------------------------------------------------------------------

int64_t num_threads(int64_t M, int64_t N, int64_t K, bool allow) {
  if (!allow || at::in_parallel_region()) return 1;
  const double flops = 2.0 * double(M) * double(N) * double(K);
  const int64_t by_work = std::max<int64_t>(1, static_cast<int64_t>(flops / 4e6));  // >= ~20 us per thread
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), by_work));
}

template <typename T>
void driver(int64_t M, int64_t N, int64_t K, const APacker<T>& apack, Mat<T> b, T* out, int64_t ldo,
            const Epilogue<T>& ep, bool allow_threads, const Mat<T>* a_small) {
  using A = Acc<T>;
  constexpr int64_t MR = Blocking<A>::MR, NR = Blocking<A>::NR;
  if (M <= 0 || N <= 0) return;
  const Epi<T> epi(ep, out, ldo);
  const int64_t T_ = num_threads(M, N, K, allow_threads);
  if (K == 0) return epilogue_only<T>(M, N, epi, T_ > 1 || (allow_threads && !at::in_parallel_region()));
  if (a_small && M <= kSmallM && b.rs == 1) return small_m<T>(M, N, K, *a_small, b, epi, T_ > 1);
  if (a_small && M <= kSmallNN && b.cs == 1) return small_m_nn<T>(M, N, K, *a_small, b, epi, T_);
  if (a_small && K <= kSmallK) return small_k<T>(M, N, K, *a_small, b, epi, T_ > 1);
  // Cut M x N into tm x tn rectangles (tm * tn = T_), minimising the duplicated
  // packing: each of the tn column parts packs all of A, each row part all of B.
  const int64_t mt = (M + MR - 1) / MR, nt = (N + NR - 1) / NR;
  int64_t tm = 1, tn = 1;
  double best = -1;
  for (int64_t d = 1; d <= T_; ++d) {
    if (T_ % d) continue;
    const int64_t cn = d, cm = T_ / d;
    if (cn > nt || cm > mt) continue;
    const double cost = double(cn) * double(M) + double(cm) * double(N);
    if (best < 0 || cost < best) { best = cost; tm = cm; tn = cn; }
  }
  if (best < 0) { tm = 1; tn = 1; }
  const int64_t mpart = (mt + tm - 1) / tm * MR, npart = (nt + tn - 1) / tn * NR;
  auto region = [&](int64_t r) {
    const int64_t ri = r / tn, rj = r % tn;
    run_region<T>(ri * mpart, std::min(M, (ri + 1) * mpart), rj * npart, std::min(N, (rj + 1) * npart), K, apack,
                  b, epi);
  };
  const int64_t nreg = tm * tn;
  if (nreg == 1) return region(0);
  at::parallel_for(0, nreg, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) region(r);
  });
}

}  // namespace

// ---- the API of gemm.h -------------------------------------------------------------------

template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, Mat<T> a, Mat<T> b, T* out, int64_t ldo, const Epilogue<T>& ep,
          bool allow_threads) {
  const APacker<T> pa{&strided_apack<T>, &a};
  driver<T>(M, N, K, pa, b, out, ldo, ep, allow_threads, &a);
}

template <typename T>
void gemm_packed_a(int64_t M, int64_t N, int64_t K, const APacker<T>& apack, Mat<T> b, T* out, int64_t ldo,
                   const Epilogue<T>& ep, bool allow_threads) {
  driver<T>(M, N, K, apack, b, out, ldo, ep, allow_threads, nullptr);
}

template <typename T>
void pack_a(Mat<T> a, int64_t mc, int64_t kc, Acc<T>* dst) {
  pack_a_impl<T>(a, mc, kc, dst);
}

template <typename T>
void pack_b(Mat<T> b, int64_t kc, int64_t nc, Acc<T>* dst) {
  pack_b_impl<T>(b, kc, nc, dst);
}

template <typename A>
void micro_tile(int64_t kc, const A* ap, const A* bp, A* c, int64_t ldc, bool accumulate) {
  using V = Vectorized<A>;
  constexpr int64_t MR = Blocking<A>::MR, NV = Blocking<A>::NV, W = Blocking<A>::W;
  V acc[MR][NV];
  kernel<A>(kc, ap, bp, acc);
  for (int64_t r = 0; r < MR; ++r)
    for (int64_t q = 0; q < NV; ++q) {
      A* p = c + r * ldc + q * W;
      (accumulate ? V::loadu(p) + acc[r][q] : acc[r][q]).store(p);
    }
}

#define MTE_GEMM_INSTANTIATE(T)                                                                                  \
  template void gemm<T>(int64_t, int64_t, int64_t, Mat<T>, Mat<T>, T*, int64_t, const Epilogue<T>&, bool);     \
  template void gemm_packed_a<T>(int64_t, int64_t, int64_t, const APacker<T>&, Mat<T>, T*, int64_t,            \
                                 const Epilogue<T>&, bool);                                                    \
  template void pack_a<T>(Mat<T>, int64_t, int64_t, Acc<T>*);                                                  \
  template void pack_b<T>(Mat<T>, int64_t, int64_t, Acc<T>*);
MTE_GEMM_INSTANTIATE(float)
MTE_GEMM_INSTANTIATE(double)
MTE_GEMM_INSTANTIATE(c10::BFloat16)
#undef MTE_GEMM_INSTANTIATE
template void micro_tile<float>(int64_t, const float*, const float*, float*, int64_t, bool);
template void micro_tile<double>(int64_t, const double*, const double*, double*, int64_t, bool);

}  // namespace mte::gemm
