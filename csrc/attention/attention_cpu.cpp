// Fused scaled-dot-product attention on the CPU: attention_fwd, attention_bwd,
// attention_weights (schemas and the exact contract: csrc/ops.cpp). Every matrix
// product runs on the GEMM core's register tile (gemm::micro_tile on panels packed
// by gemm::pack_a / gemm::pack_b, csrc/gemm/gemm.h): no at::mm, no BLAS.
//
// Algorithm: FlashAttention-2 (Dao, 2023), with the CPU's L1/L2 in the role of
// the GPU's shared memory and registers.
//   Forward, one task per (b, h, query block of BQ rows):
//     pack the Q block once (A strips, MR rows each); then for each key block of
//     BK keys (causal: only blocks with a key <= the block's last query):
//       S   = Q . K^T       pack K^T into NR-column panels, micro_tile over the
//                           (strip, panel) grid into an L1 tile S [BQ x BK]
//       per row: logits = scale*S + mask (bool: -inf where false; causal and the
//       block's ragged end: -inf), m' = max(m, rowmax), p = exp(logits - m'),
//       l = l*exp(m - m') + rowsum(p), the O row rescaled by exp(m - m');
//       dropout: p *= keep/(1-p_drop) from Philox of (seed, element index)
//       O  += P . V         P repacked as A strips, V packed into panels
//     then O /= l, logsumexp = m + log(l) (+inf and O = 0 for an empty row).
//   Backward, one task per (b, key/value head hkv), so that dK, dV and dQ are
//   all accumulated by the task that owns them: no atomics, a fixed order, and
//   bitwise the same result for any thread count. For each query head h of the
//   group (GQA) the task packs Q and dO of that head once, in both formats
//   (strips and panels), and computes Di = rowsum(dO_i * O_i); then for each key
//   block, for each query block that sees it:
//       S  = Q K^T,  P = exp(scale*S + mask - lse)     (recomputed, never stored)
//       dP = dO V^T, Z = the dropout keep mask scaled by 1/(1-p) (regenerated)
//       dS = P * (dP*Z - Di)                            (= the grad of the logits)
//       dV += (P*Z)^T dO,  dK += dS^T Q,  dQ += dS K   (scale applied once at the end)
//     five products, as FA2's; grad_attn_mask = dS is written when asked.
//   FA2 splits dQ into a second pass (or uses atomics) because a GPU needs more
//   parallelism than B*H; with two to a few dozen CPU threads, B*Hkv tasks are
//   usually enough, and we save the two recomputed products a separate dQ pass
//   costs. When B*Hkv < 8 the keys are cut into up to 8/(B*Hkv) segments, one
//   task each (dK, dV of its keys, a partial dQ), and the partial dQs are summed
//   in segment order afterwards: the segment count depends on the shapes only,
//   so the result is still the same for any thread count.
//   attention_weights: S and P = exp(logits - lse) per (b, h, query block).
//
// Memory traffic. Forward: Q and O once, K and V once per query block (from
// L2/L3 for a head: Lk*(D+Dv) elements, 64 KiB per 256 keys at D=64); extra
// memory O(L): the per-thread L1/L2 tiles and logsumexp. Backward: per head, Q,
// dO, O once; K and V once per query head of the group; per-task accumulators
// of Lq*D + Lk*(D+Dv) floats. The L x L score matrix never exists.
//
// Block sizes (float, AVX2: MR x NR = 4 x 24 register tile; AVX-512 6 x 64):
//   forward BQ = 32*MR rows, BK = 4*NR keys: the S tile (BQ x BK floats, 48 KiB
//   at AVX2) and the K panels of one key block (D x BK, 24 KiB at D=64) sit in
//   L2 (1 MiB per Zen 5 core) while the register tile streams over them (one B
//   panel, D x NR = 6 KiB, in L1 at a time), and 128 rows amortise packing one
//   K/V block (O(BK*(D+Dv)) element moves) over 128x as many multiply-adds.
//   The Q block is packed once per task, pre-multiplied by scale. The backward's blocks
//   are a common multiple of MR and NR (each product uses the tile both ways):
//   BQB = BKB = lcm(MR, NR) rounded up to >= 48.
//
// The trick: the softmax needs a whole row of S, a GEMM wants register tiles.
// Computing S for one L1-sized block and turning it into P in place (a row-wise
// pass over an L1 tile) gives both; the online-softmax rescaling costs BQ*Dv
// multiplies per key block, nothing next to the 2*BQ*BK*(D+Dv) flops.
//
// dtypes: float32, float64 (the same code, double accumulators: it serves
// gradcheck), bfloat16 (widened to float while packing; float32 softmax and
// accumulation; rounded once on store). float16 is refused on the CPU.
// exp: Vectorized<float>::exp_u20 (the polynomial torch's own CPU flash kernel
// uses); Sleef's exp for double.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "common/alloc.h"
#include "common/checks.h"
#include "common/philox.h"
#include "gemm/gemm.h"

namespace mte {
namespace {

using at::vec::Vectorized;
using gemm::Acc;
using gemm::Blocking;
using gemm::Mat;

// ---- per-thread workspaces (grown, never shrunk: no allocation in steady state) ----

template <typename A>
struct Buf {
  A* p = nullptr;
  size_t n = 0;
  A* get(size_t m) {
    if (m > n) {
      std::free(p);
      const size_t bytes = ((std::max<size_t>(m, 1) * sizeof(A) + 63) / 64) * 64;
      p = static_cast<A*>(std::aligned_alloc(64, bytes));
      TORCH_CHECK(p != nullptr, "attention: out of memory for a ", bytes, "-byte workspace");
      n = m;
    }
    return p;
  }
  ~Buf() { std::free(p); }
};

template <typename A>
struct Work {
  Buf<A> qs, ks, vs, ps, s, o, m, l, dps, qp, dos, dop, kp, dk, dv, dq, di;
  Buf<uint32_t> rnd;
};

template <typename A>
Work<A>& work() {
  thread_local Work<A> w;
  return w;
}

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename A>
struct Blocks {
  static constexpr int64_t MR = Blocking<A>::MR, NR = Blocking<A>::NR;
  static constexpr int64_t BQ = 32 * MR, BK = 4 * NR;
  static constexpr int64_t LCM = std::lcm(MR, NR);
  static constexpr int64_t BB = LCM * ceil_div(48, LCM);  // backward block (rows and keys)
};

// ---- dropout: Philox4x32-10, csrc/common/philox.h (philox4, philox4_x8, philox_row) ----

// ---- the problem, in the normalized 4-D layout --------------------------------------

template <typename T>
struct Problem {
  using A = Acc<T>;
  int64_t B = 0, Hq = 0, Hkv = 0, Lq = 0, Lk = 0, D = 0, Dv = 0, group = 1;
  const T *q = nullptr, *k = nullptr, *v = nullptr;
  std::array<int64_t, 4> qs{}, ks{}, vs{};
  int mask_kind = 0;  // 0 none, 1 bool (true = takes part), 2 additive in T
  const void* mask = nullptr;
  std::array<int64_t, 4> ms{};
  bool causal = false;
  A scale = 1;
  bool dropout = false, drop_all = false;
  uint32_t thresh = 0;
  A keep_scale = 1;
  uint64_t seed = 0;

  const T* qrow(int64_t b, int64_t h, int64_t i) const { return q + b * qs[0] + h * qs[1] + i * qs[2]; }
  const T* krow(int64_t b, int64_t hk, int64_t j) const { return k + b * ks[0] + hk * ks[1] + j * ks[2]; }
  const T* vrow(int64_t b, int64_t hk, int64_t j) const { return v + b * vs[0] + hk * vs[1] + j * vs[2]; }

  // The rows [i0, i0+qn) of query head h as A strips, times scale (so that the
  // product with K^T is already the scaled score).
  void pack_q_scaled(int64_t b, int64_t h, int64_t i0, int64_t qn, A* dst) const {
    gemm::pack_a<T>(Mat<T>{qrow(b, h, i0), qs[2], qs[3]}, qn, D, dst);
    const int64_t n = ((qn + Blocking<A>::MR - 1) / Blocking<A>::MR) * Blocking<A>::MR * D;
    const A sc = scale;
    for (int64_t e = 0; e < n; ++e) dst[e] *= sc;
  }

  // s[0..npad): the scaled q.k products of query i with keys j0 .. j0+npad (kn of
  // them real). On return: the logits s + mask, -inf where a key does not take part.
  void logits_row(int64_t b, int64_t h, int64_t i, int64_t j0, int64_t kn, int64_t npad, A* s) const {
    int64_t nv = kn;
    if (causal) nv = std::min<int64_t>(nv, std::max<int64_t>(0, i - j0 + 1));
    constexpr A ninf = -std::numeric_limits<A>::infinity();
    if (mask_kind == 1) {
      const bool* mp = static_cast<const bool*>(mask) + b * ms[0] + h * ms[1] + i * ms[2] + j0 * ms[3];
      for (int64_t c = 0; c < nv; ++c)
        if (!mp[c * ms[3]]) s[c] = ninf;
    } else if (mask_kind == 2) {
      const T* mp = static_cast<const T*>(mask) + b * ms[0] + h * ms[1] + i * ms[2] + j0 * ms[3];
      for (int64_t c = 0; c < nv; ++c) s[c] += static_cast<A>(mp[c * ms[3]]);
    }
    for (int64_t c = nv; c < npad; ++c) s[c] = ninf;
  }

  // The dropout factors of row i, keys j0 .. j0+kn: keep_scale or 0 (words: a scratch
  // of at least kn + 40).
  void dropout_row(int64_t b, int64_t h, int64_t i, int64_t j0, int64_t kn, uint32_t* words, A* z) const {
    if (drop_all) {
      for (int64_t c = 0; c < kn; ++c) z[c] = A(0);
      return;
    }
    if (kn <= 0) return;
    const uint64_t c0 = static_cast<uint64_t>(((b * Hq + h) * Lq + i) * Lk + j0);
    const uint32_t* wd = philox_row(seed, c0, kn, words);
    for (int64_t c = 0; c < kn; ++c) z[c] = wd[c] >= thresh ? keep_scale : A(0);
  }
};

template <typename A>
inline Vectorized<A> vexp(const Vectorized<A>& x) {
  if constexpr (std::is_same_v<A, float>) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}

// max over s[0..n), n a multiple of the vector width
template <typename A>
inline A row_max(const A* s, int64_t n) {
  using V = Vectorized<A>;
  V mx(-std::numeric_limits<A>::infinity());
  for (int64_t c = 0; c < n; c += V::size()) mx = at::vec::maximum(mx, V::loadu(s + c));
  A tmp[V::size()];
  mx.store(tmp);
  A r = tmp[0];
  for (int64_t t = 1; t < V::size(); ++t) r = std::max(r, tmp[t]);
  return r;
}

// s[c] = exp(s[c] - sub) (exactly 0 where s[c] == -inf); returns the sum (fixed lane order)
template <typename A>
inline A exp_row(A* s, int64_t n, A sub) {
  using V = Vectorized<A>;
  const V vsub(sub), ninf(-std::numeric_limits<A>::infinity()), zero(A(0));
  V acc(A(0));
  for (int64_t c = 0; c < n; c += V::size()) {
    const V x = V::loadu(s + c);
    const V e = V::blendv(vexp(x - vsub), zero, x == ninf);
    e.store(s + c);
    acc = acc + e;
  }
  A tmp[V::size()];
  acc.store(tmp);
  A r = 0;
  for (int64_t t = 0; t < V::size(); ++t) r += tmp[t];
  return r;
}

// C[rows x cols] (+)= A-strips . B-panels, with rows a multiple of MR in the pack,
// cols a multiple of NR; kc the shared dimension. C row-major with leading dim ldc.
template <typename A>
inline void tile_product(int64_t rows, int64_t cols, int64_t kc, const A* ap, const A* bp, A* c, int64_t ldc,
                         bool accumulate) {
  constexpr int64_t MR = Blocking<A>::MR, NR = Blocking<A>::NR;
  const int64_t ns = ceil_div(rows, MR), np = ceil_div(cols, NR);
  for (int64_t q = 0; q < np; ++q)
    for (int64_t st = 0; st < ns; ++st)
      gemm::micro_tile<A>(kc, ap + st * MR * kc, bp + q * NR * kc, c + st * MR * ldc + q * NR, ldc, accumulate);
}

// Run n tasks on the intra-op threads from a shared counter (the assignment of
// tasks to threads varies, the result of each task does not).
template <typename F>
void run_tasks(int64_t n, const F& f) {
  if (n <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t nt = std::min<int64_t>(at::get_num_threads(), n);
  at::parallel_for(0, nt, 1, [&](int64_t, int64_t) {
    for (int64_t t; (t = next.fetch_add(1)) < n;) f(t);
  });
}

// ---- forward -------------------------------------------------------------------------

template <typename T>
void forward(const Problem<T>& P, T* out, Acc<T>* lse) {
  using A = Acc<T>;
  using BL = Blocks<A>;
  constexpr int64_t NR = BL::NR, BQ = BL::BQ, BK = BL::BK;
  const int64_t D = P.D, Dv = P.Dv, Lq = P.Lq, Lk = P.Lk;
  const int64_t DvP = ceil_div(std::max<int64_t>(Dv, 1), NR) * NR;
  const int64_t nqb = ceil_div(Lq, BQ), BH = P.B * P.Hq;
  const A ninf = -std::numeric_limits<A>::infinity();
  run_tasks(nqb * BH, [&](int64_t t) {
    const int64_t qi = t / BH, bh = t % BH;
    const int64_t qb = P.causal ? nqb - 1 - qi : qi;  // causal: the longest rows first
    const int64_t b = bh / P.Hq, h = bh % P.Hq, hk = h / P.group;
    const int64_t i0 = qb * BQ, qn = std::min(BQ, Lq - i0);
    auto& w = work<A>();
    A* qs = w.qs.get(BQ * std::max<int64_t>(D, 1));
    A* ks = w.ks.get(BK * std::max<int64_t>(D, 1));
    A* vs = w.vs.get(BK * DvP);
    A* ps = w.ps.get(BQ * BK);
    A* s = w.s.get(BQ * BK);
    A* o = w.o.get(BQ * DvP);
    A* m = w.m.get(BQ);
    A* l = w.l.get(BQ);
    A* z = w.di.get(BK);
    uint32_t* words = w.rnd.get(BK + 40);
    P.pack_q_scaled(b, h, i0, qn, qs);
    std::fill(o, o + BQ * DvP, A(0));
    std::fill(m, m + BQ, ninf);
    std::fill(l, l + BQ, A(0));
    const int64_t kend = P.causal ? std::min(Lk, i0 + qn) : Lk;
    for (int64_t j0 = 0; j0 < kend; j0 += BK) {
      const int64_t kn = std::min(BK, Lk - j0), npad = ceil_div(kn, NR) * NR;
      // S = Q K^T (B = K^T: element (d, j) at k[j*ks2 + d*ks3])
      gemm::pack_b<T>(Mat<T>{P.krow(b, hk, j0), P.ks[3], P.ks[2]}, D, kn, ks);
      tile_product<A>(qn, kn, D, qs, ks, s, BK, false);
      for (int64_t r = 0; r < qn; ++r) {
        A* sr = s + r * BK;
        const int64_t i = i0 + r;
        P.logits_row(b, h, i, j0, kn, npad, sr);
        const A mnew = std::max(m[r], row_max(sr, npad));
        if (mnew == ninf) {  // nothing of this row so far: p = 0
          std::fill(sr, sr + npad, A(0));
          continue;
        }
        const A alpha = m[r] == ninf ? A(0) : std::exp(m[r] - mnew);
        const A sum = exp_row(sr, npad, mnew);
        l[r] = l[r] * alpha + sum;
        m[r] = mnew;
        if (alpha != A(1)) {
          A* orow = o + r * DvP;
          for (int64_t d = 0; d < DvP; ++d) orow[d] *= alpha;
        }
        if (P.dropout) {
          P.dropout_row(b, h, i, j0, kn, words, z);
          for (int64_t c = 0; c < kn; ++c) sr[c] *= z[c];
        }
      }
      // O += P V
      gemm::pack_a<A>(Mat<A>{s, BK, 1}, qn, kn, ps);
      gemm::pack_b<T>(Mat<T>{P.vrow(b, hk, j0), P.vs[2], P.vs[3]}, kn, Dv, vs);
      tile_product<A>(qn, Dv, kn, ps, vs, o, DvP, true);
    }
    for (int64_t r = 0; r < qn; ++r) {
      const int64_t i = i0 + r;
      T* orow = out + ((b * P.Hq + h) * Lq + i) * Dv;
      A* lrow = lse + (b * P.Hq + h) * Lq + i;
      if (l[r] == A(0)) {
        for (int64_t d = 0; d < Dv; ++d) orow[d] = T(0);
        *lrow = std::numeric_limits<A>::infinity();
      } else {
        const A inv = A(1) / l[r];
        for (int64_t d = 0; d < Dv; ++d) orow[d] = static_cast<T>(o[r * DvP + d] * inv);
        *lrow = m[r] + std::log(l[r]);
      }
    }
  });
}

// ---- backward ------------------------------------------------------------------------

template <typename T>
struct Grads {
  using A = Acc<T>;
  const T* go = nullptr;
  std::array<int64_t, 4> gos{};
  const T* o = nullptr;  // contiguous [B, Hq, Lq, Dv]
  const A* lse = nullptr;
  T *dq = nullptr, *dk = nullptr, *dv = nullptr, *dmask = nullptr;  // contiguous; nullptr: not asked
};

template <typename T>
void backward(const Problem<T>& P, const Grads<T>& G) {
  using A = Acc<T>;
  using BL = Blocks<A>;
  constexpr int64_t NR = BL::NR, BB = BL::BB;
  const int64_t D = P.D, Dv = P.Dv, Lq = P.Lq, Lk = P.Lk, D1 = std::max<int64_t>(D, 1);
  const int64_t Dv1 = std::max<int64_t>(Dv, 1);
  const int64_t DP = ceil_div(D1, NR) * NR, DvP = ceil_div(Dv1, NR) * NR;
  const int64_t nqb = ceil_div(Lq, BB), nkb = ceil_div(Lk, BB);
  const int64_t LqP = nqb * BB;
  const bool want_kv = G.dk != nullptr || G.dv != nullptr || G.dmask != nullptr;
  // Key segments: with fewer than 8 (b, hkv) pairs, the keys are cut into up to
  // 8 / (B*Hkv) segments, one task each, so that small batches still use the
  // threads; each segment then leaves a partial dQ, summed below in segment
  // order. The count depends on the problem only, never on the thread count.
  const int64_t BHk = P.B * P.Hkv;
  int64_t nseg = (BHk >= 8 || nkb <= 1) ? 1 : std::min(nkb, ceil_div(8, std::max<int64_t>(BHk, 1)));
  const int64_t segkb = nseg > 1 ? ceil_div(nkb, nseg) : std::max<int64_t>(nkb, 1);
  nseg = nkb > 0 ? ceil_div(nkb, segkb) : 1;
  const int64_t SK = segkb * BB;  // keys per segment (rows of the dK/dV accumulators)
  at::Tensor dq_part;
  A* dqp = nullptr;
  if (nseg > 1 && G.dq) {
    dq_part = cached_empty_cpu({P.B * P.Hq * nseg * Lq * D}, at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value));
    dqp = dq_part.data_ptr<A>();
  }
  run_tasks(BHk * nseg, [&](int64_t t) {
    const int64_t seg = t % nseg, b = (t / nseg) / P.Hkv, hk = (t / nseg) % P.Hkv;
    const int64_t kb0 = seg * segkb, kb1 = std::min(nkb, kb0 + segkb), jseg = kb0 * BB;
    auto& w = work<A>();
    // per head of the group: Q and dO as A strips and B panels, Di
    A* qst = w.qs.get(LqP * D1);
    A* qpn = w.qp.get(LqP * DP);
    A* dost = w.dos.get(LqP * Dv1);
    A* dopn = w.dop.get(LqP * DvP);
    A* di = w.di.get(LqP);
    // per key block: K^T and V^T panels (for S and dP), K panels (for dQ)
    A* ktp = w.ks.get(BB * D1);
    A* vtp = w.vs.get(BB * Dv1);
    A* kpn = w.kp.get(BB * DP);
    A* s = w.s.get(BB * BB);
    A* dps = w.dps.get(BB * BB);
    A* ap = w.ps.get(BB * BB);
    A* z = w.l.get(BB);
    uint32_t* words = w.rnd.get(BB + 40);
    A* dkacc = w.dk.get(SK * DP);
    A* dvacc = w.dv.get(SK * DvP);
    A* dqacc = w.dq.get(LqP * DP);
    std::fill(dkacc, dkacc + SK * DP, A(0));
    std::fill(dvacc, dvacc + SK * DvP, A(0));
    // causal: only the query blocks with a row >= the segment's first key
    const int64_t qbs = P.causal ? std::min(nqb, jseg / BB) : 0;
    for (int64_t h = hk * P.group; h < (hk + 1) * P.group; ++h) {
      const T* gob = G.go + b * G.gos[0] + h * G.gos[1];
      const T* ob = G.o + (b * P.Hq + h) * Lq * Dv;
      const A* lseb = G.lse + (b * P.Hq + h) * Lq;
      for (int64_t qb = qbs; qb < nqb; ++qb) {
        const int64_t i0 = qb * BB, qn = std::min(BB, Lq - i0);
        P.pack_q_scaled(b, h, i0, qn, qst + i0 * D1);
        gemm::pack_b<T>(Mat<T>{P.qrow(b, h, i0), P.qs[2], P.qs[3]}, qn, D, qpn + i0 * DP);
        gemm::pack_a<T>(Mat<T>{gob + i0 * G.gos[2], G.gos[2], G.gos[3]}, qn, Dv, dost + i0 * Dv1);
        gemm::pack_b<T>(Mat<T>{gob + i0 * G.gos[2], G.gos[2], G.gos[3]}, qn, Dv, dopn + i0 * DvP);
        for (int64_t i = i0; i < i0 + qn; ++i) {
          A acc = 0;
          const T* gr = gob + i * G.gos[2];
          const T* orow = ob + i * Dv;
          // the same chain of FMAs from 0 over d as the register tile forms dP_ij = dO_i . V_j
          // with: where O_i equals a row of V (a row with one key), dP - Di is exactly 0
          for (int64_t d = 0; d < Dv; ++d) acc = std::fma(static_cast<A>(gr[d * G.gos[3]]), static_cast<A>(orow[d]), acc);
          di[i] = acc;
        }
      }
      std::fill(dqacc, dqacc + LqP * DP, A(0));
      for (int64_t kb = kb0; kb < kb1; ++kb) {
        const int64_t j0 = kb * BB, kn = std::min(BB, Lk - j0), npad = ceil_div(kn, NR) * NR;
        gemm::pack_b<T>(Mat<T>{P.krow(b, hk, j0), P.ks[3], P.ks[2]}, D, kn, ktp);
        gemm::pack_b<T>(Mat<T>{P.vrow(b, hk, j0), P.vs[3], P.vs[2]}, Dv, kn, vtp);
        gemm::pack_b<T>(Mat<T>{P.krow(b, hk, j0), P.ks[2], P.ks[3]}, kn, D, kpn);
        const int64_t qb0 = P.causal ? j0 / BB : 0;  // causal: rows i >= j0 only
        for (int64_t qb = qb0; qb < nqb; ++qb) {
          const int64_t i0 = qb * BB, qn = std::min(BB, Lq - i0);
          const A* qs_ = qst + i0 * D1;
          const A* qp_ = qpn + i0 * DP;
          const A* dos_ = dost + i0 * Dv1;
          const A* dop_ = dopn + i0 * DvP;
          tile_product<A>(qn, kn, D, qs_, ktp, s, BB, false);      // S (Q pre-scaled)
          tile_product<A>(qn, kn, Dv, dos_, vtp, dps, BB, false);  // dP
          for (int64_t r = 0; r < qn; ++r) {
            const int64_t i = i0 + r;
            A* sr = s + r * BB;
            A* dr = dps + r * BB;
            P.logits_row(b, h, i, j0, kn, npad, sr);
            exp_row(sr, npad, lseb[i]);  // P (0 for an empty row: lse = +inf)
            const A dii = di[i];
            if (P.dropout) {
              P.dropout_row(b, h, i, j0, kn, words, z);
              for (int64_t c = 0; c < kn; ++c) {
                dr[c] = sr[c] * (dr[c] * z[c] - dii);  // dS
                sr[c] *= z[c];                         // P * Z, for dV
              }
            } else {
              for (int64_t c = 0; c < kn; ++c) dr[c] = sr[c] * (dr[c] - dii);
            }
            if (G.dmask) {
              T* gm = G.dmask + ((b * P.Hq + h) * Lq + i) * Lk + j0;
              for (int64_t c = 0; c < kn; ++c) gm[c] = static_cast<T>(dr[c]);
            }
          }
          if (want_kv) {
            // dV += (P Z)^T dO : A = (PZ)^T [kn x qn] (strided view of s), B = dO panels
            gemm::pack_a<A>(Mat<A>{s, 1, BB}, kn, qn, ap);
            tile_product<A>(kn, Dv, qn, ap, dop_, dvacc + (j0 - jseg) * DvP, DvP, true);
            // dK += dS^T Q
            gemm::pack_a<A>(Mat<A>{dps, 1, BB}, kn, qn, ap);
            tile_product<A>(kn, D, qn, ap, qp_, dkacc + (j0 - jseg) * DP, DP, true);
          }
          // dQ += dS K
          gemm::pack_a<A>(Mat<A>{dps, BB, 1}, qn, kn, ap);
          tile_product<A>(qn, D, kn, ap, kpn, dqacc + i0 * DP, DP, true);
        }
      }
      if (G.dq && nseg == 1) {
        T* dqb = G.dq + (b * P.Hq + h) * Lq * D;
        for (int64_t i = 0; i < Lq; ++i)
          for (int64_t d = 0; d < D; ++d) dqb[i * D + d] = static_cast<T>(dqacc[i * DP + d] * P.scale);
      } else if (G.dq) {
        A* part = dqp + ((b * P.Hq + h) * nseg + seg) * Lq * D;
        for (int64_t i = 0; i < Lq; ++i)
          for (int64_t d = 0; d < D; ++d) part[i * D + d] = dqacc[i * DP + d];
      }
    }
    const int64_t jn = std::min(Lk, kb1 * BB) - jseg;  // this segment's keys
    if (G.dk) {
      T* dkb = G.dk + ((b * P.Hkv + hk) * Lk + jseg) * D;
      for (int64_t j = 0; j < jn; ++j)
        for (int64_t d = 0; d < D; ++d) dkb[j * D + d] = static_cast<T>(dkacc[j * DP + d] * P.scale);
    }
    if (G.dv) {
      T* dvb = G.dv + ((b * P.Hkv + hk) * Lk + jseg) * Dv;
      for (int64_t j = 0; j < jn; ++j)
        for (int64_t d = 0; d < Dv; ++d) dvb[j * Dv + d] = static_cast<T>(dvacc[j * DvP + d]);
    }
  });
  if (dqp) {  // dQ = scale * (sum of the segments' partials, in segment order)
    const int64_t rows = P.B * P.Hq * Lq;
    at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(D1, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t bh = r / Lq, i = r % Lq;
        for (int64_t d = 0; d < D; ++d) {
          A acc = 0;
          for (int64_t sg = 0; sg < nseg; ++sg) acc += dqp[((bh * nseg + sg) * Lq + i) * D + d];
          G.dq[r * D + d] = static_cast<T>(acc * P.scale);
        }
      }
    });
  }
}

// ---- the probabilities (need_weights) -------------------------------------------------

template <typename T>
void weights(const Problem<T>& P, const Acc<T>* lse, T* out) {
  using A = Acc<T>;
  using BL = Blocks<A>;
  constexpr int64_t NR = BL::NR, BQ = BL::BQ, BK = BL::BK;
  const int64_t D = P.D, Lq = P.Lq, Lk = P.Lk;
  const int64_t nqb = ceil_div(Lq, BQ), BH = P.B * P.Hq;
  run_tasks(nqb * BH, [&](int64_t t) {
    const int64_t qb = t / BH, bh = t % BH;
    const int64_t b = bh / P.Hq, h = bh % P.Hq, hk = h / P.group;
    const int64_t i0 = qb * BQ, qn = std::min(BQ, Lq - i0);
    auto& w = work<A>();
    A* qs = w.qs.get(BQ * std::max<int64_t>(D, 1));
    A* ks = w.ks.get(BK * std::max<int64_t>(D, 1));
    A* s = w.s.get(BQ * BK);
    P.pack_q_scaled(b, h, i0, qn, qs);
    for (int64_t j0 = 0; j0 < Lk; j0 += BK) {
      const int64_t kn = std::min(BK, Lk - j0), npad = ceil_div(kn, NR) * NR;
      gemm::pack_b<T>(Mat<T>{P.krow(b, hk, j0), P.ks[3], P.ks[2]}, D, kn, ks);
      tile_product<A>(qn, kn, D, qs, ks, s, BK, false);
      for (int64_t r = 0; r < qn; ++r) {
        const int64_t i = i0 + r;
        A* sr = s + r * BK;
        P.logits_row(b, h, i, j0, kn, npad, sr);
        exp_row(sr, npad, lse[(b * P.Hq + h) * Lq + i]);
        T* orow = out + ((b * P.Hq + h) * Lq + i) * Lk + j0;
        for (int64_t c = 0; c < kn; ++c) orow[c] = static_cast<T>(sr[c]);
      }
    }
  });
}

// ---- argument checks and the ops ------------------------------------------------------

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  for (auto [t, name] : {std::pair{&q, "query"}, std::pair{&k, "key"}, std::pair{&v, "value"}}) {
    TORCH_CHECK(t->dim() == 4, "attention: ", name, ": expected a 4-D tensor [B, H, L, D], got ", t->dim(),
                "-D of size ", t->sizes());
    TORCH_CHECK(t->device().is_cpu(), "attention: ", name, ": expected a CPU tensor, got one on ", t->device());
  }
  const auto st = q.scalar_type();
  TORCH_CHECK(st != at::kHalf, "attention: query: float16 is not supported by the CPU kernel (use float32, "
              "float64 or bfloat16)");
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16,
              "attention: query: expected a floating point tensor (float32, float64 or bfloat16), got ", st);
  TORCH_CHECK(k.scalar_type() == st && v.scalar_type() == st,
              "Expected query, key, and value to have the same dtype, but got query.dtype: ", q.scalar_type(),
              " key.dtype: ", k.scalar_type(), " and value.dtype: ", v.scalar_type(), " instead.");
  TORCH_CHECK(k.size(0) == q.size(0) && v.size(0) == q.size(0), "attention: expected query, key and value to "
              "have the same batch size, got ", q.size(0), ", ", k.size(0), " and ", v.size(0));
  TORCH_CHECK(k.size(1) == v.size(1), "attention: key and value must have the same number of heads, got ",
              k.size(1), " and ", v.size(1));
  TORCH_CHECK(k.size(1) > 0 ? q.size(1) % k.size(1) == 0 : q.size(1) == 0,
              "attention: the number of query heads (", q.size(1), ") must be a multiple of the number of "
              "key/value heads (", k.size(1), ")");
  TORCH_CHECK(k.size(2) == v.size(2), "attention: key and value must have the same length, got key length ",
              k.size(2), " and value length ", v.size(2));
  TORCH_CHECK(k.size(3) == q.size(3), "attention: query and key must have the same head dim, got ", q.size(3),
              " and ", k.size(3));
}

template <typename T>
Problem<T> make_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const std::optional<at::Tensor>& mask, double dropout_p, bool is_causal, double scale,
                        int64_t seed) {
  check_qkv(q, k, v);
  Problem<T> P;
  P.B = q.size(0);
  P.Hq = q.size(1);
  P.Hkv = k.size(1);
  P.Lq = q.size(2);
  P.Lk = k.size(2);
  P.D = q.size(3);
  P.Dv = v.size(3);
  P.group = P.Hkv > 0 ? P.Hq / P.Hkv : 1;
  P.q = q.data_ptr<T>();
  P.k = k.data_ptr<T>();
  P.v = v.data_ptr<T>();
  for (int d = 0; d < 4; ++d) {
    P.qs[d] = q.stride(d);
    P.ks[d] = k.stride(d);
    P.vs[d] = v.stride(d);
  }
  if (mask.has_value() && mask->defined()) {
    const auto& m = *mask;
    TORCH_CHECK(m.dim() == 4 && m.size(0) == P.B && m.size(1) == P.Hq && m.size(2) == P.Lq && m.size(3) == P.Lk,
                "attention: attn_mask: expected shape [", P.B, ", ", P.Hq, ", ", P.Lq, ", ", P.Lk,
                "] (a broadcast mask as an expanded view), got ", m.sizes());
    TORCH_CHECK(m.device() == q.device(), "attention: attn_mask: expected a tensor on ", q.device(), ", got one on ",
                m.device());
    TORCH_CHECK(m.scalar_type() == at::kBool || m.scalar_type() == q.scalar_type(),
                "attention: attn_mask: expected dtype bool or ", q.scalar_type(), " (the dtype of query), got ",
                m.scalar_type());
    P.mask_kind = m.scalar_type() == at::kBool ? 1 : 2;
    P.mask = m.data_ptr();
    for (int d = 0; d < 4; ++d) P.ms[d] = m.stride(d);
  }
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p <= 1.0, "attention: dropout_p: expected a probability in [0, 1], got ",
              dropout_p);
  P.causal = is_causal;
  P.scale = static_cast<Acc<T>>(scale);
  P.dropout = dropout_p > 0.0;
  P.drop_all = dropout_p >= 1.0;
  P.thresh = static_cast<uint32_t>(std::min<double>(std::floor(dropout_p * 4294967296.0), 4294967295.0));
  P.keep_scale = P.drop_all ? Acc<T>(0) : static_cast<Acc<T>>(1.0 / (1.0 - dropout_p));
  P.seed = static_cast<uint64_t>(seed);
  return P;
}

at::ScalarType lse_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

std::tuple<at::Tensor, at::Tensor> attention_fwd(const at::Tensor& query, const at::Tensor& key,
                                                 const at::Tensor& value, const std::optional<at::Tensor>& attn_mask,
                                                 double dropout_p, bool is_causal, double scale, int64_t seed) {
  check_qkv(query, key, value);
  auto out = new_output({query.size(0), query.size(1), query.size(2), value.size(3)}, query.options());
  auto lse = new_output({query.size(0), query.size(1), query.size(2)},
                        query.options().dtype(lse_dtype(query.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, query.scalar_type(), "attention_fwd", [&] {
    auto P = make_problem<scalar_t>(query, key, value, attn_mask, dropout_p, is_causal, scale, seed);
    forward<scalar_t>(P, out.data_ptr<scalar_t>(), lse.data_ptr<Acc<scalar_t>>());
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_bwd(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& output, const at::Tensor& logsumexp, const std::optional<at::Tensor>& attn_mask,
    double dropout_p, bool is_causal, double scale, int64_t seed, std::array<bool, 4> output_mask) {
  check_qkv(query, key, value);
  const std::vector<int64_t> oshape{query.size(0), query.size(1), query.size(2), value.size(3)};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(oshape), "attention_bwd: grad_output: expected shape ",
              at::IntArrayRef(oshape), ", got ", grad_output.sizes());
  TORCH_CHECK(output.sizes() == at::IntArrayRef(oshape), "attention_bwd: output: expected shape ",
              at::IntArrayRef(oshape), ", got ", output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == query.scalar_type() && output.scalar_type() == query.scalar_type(),
              "attention_bwd: grad_output and output: expected dtype ", query.scalar_type());
  TORCH_CHECK(logsumexp.scalar_type() == lse_dtype(query.scalar_type()) &&
                  logsumexp.sizes() == at::IntArrayRef({query.size(0), query.size(1), query.size(2)}),
              "attention_bwd: logsumexp: expected a ", lse_dtype(query.scalar_type()), " tensor of shape [",
              query.size(0), ", ", query.size(1), ", ", query.size(2), "], got ", logsumexp.scalar_type(), " ",
              logsumexp.sizes());
  const bool has_mask = attn_mask.has_value() && attn_mask->defined();
  TORCH_CHECK(!output_mask[3] || (has_mask && attn_mask->scalar_type() != at::kBool),
              "attention_bwd: a grad_attn_mask was asked for without an additive (float) attn_mask");
  auto o = output.contiguous();
  auto lse = logsumexp.contiguous();
  auto empty0 = [&] { return at::empty({0}, query.options()); };
  at::Tensor gq = output_mask[0] ? new_output(query.sizes(), query.options()) : empty0();
  at::Tensor gk = output_mask[1] ? new_output(key.sizes(), key.options()) : empty0();
  at::Tensor gv = output_mask[2] ? new_output(value.sizes(), value.options()) : empty0();
  at::Tensor gm = output_mask[3] ? new_output({query.size(0), query.size(1), query.size(2), key.size(2)},
                                              query.options())
                                 : empty0();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, query.scalar_type(), "attention_bwd", [&] {
    auto P = make_problem<scalar_t>(query, key, value, attn_mask, dropout_p, is_causal, scale, seed);
    Grads<scalar_t> G;
    G.go = grad_output.data_ptr<scalar_t>();
    for (int d = 0; d < 4; ++d) G.gos[d] = grad_output.stride(d);
    G.o = o.data_ptr<scalar_t>();
    G.lse = lse.data_ptr<Acc<scalar_t>>();
    G.dq = output_mask[0] ? gq.data_ptr<scalar_t>() : nullptr;
    G.dk = output_mask[1] ? gk.data_ptr<scalar_t>() : nullptr;
    G.dv = output_mask[2] ? gv.data_ptr<scalar_t>() : nullptr;
    G.dmask = output_mask[3] ? gm.data_ptr<scalar_t>() : nullptr;
    if (G.dmask && is_causal) gm.zero_();  // the blocks a causal pass skips
    backward<scalar_t>(P, G);
  });
  return {gq, gk, gv, gm};
}

at::Tensor attention_weights(const at::Tensor& query, const at::Tensor& key, const std::optional<at::Tensor>& attn_mask,
                             bool is_causal, double scale, const at::Tensor& logsumexp) {
  TORCH_CHECK(query.dim() == 4 && key.dim() == 4, "attention_weights: query and key: expected 4-D tensors");
  check_qkv(query, key, key);
  TORCH_CHECK(logsumexp.scalar_type() == lse_dtype(query.scalar_type()) &&
                  logsumexp.sizes() == at::IntArrayRef({query.size(0), query.size(1), query.size(2)}),
              "attention_weights: logsumexp: expected a ", lse_dtype(query.scalar_type()), " tensor of shape [",
              query.size(0), ", ", query.size(1), ", ", query.size(2), "], got ", logsumexp.scalar_type(), " ",
              logsumexp.sizes());
  auto lse = logsumexp.contiguous();
  auto out = new_output({query.size(0), query.size(1), query.size(2), key.size(2)}, query.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, query.scalar_type(), "attention_weights", [&] {
    auto P = make_problem<scalar_t>(query, key, key, attn_mask, 0.0, is_causal, scale, 0);
    weights<scalar_t>(P, lse.data_ptr<Acc<scalar_t>>(), out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace
}  // namespace mte

TORCH_LIBRARY_IMPL(minitorch_ext, CPU, m) {
  m.impl("attention_fwd", &mte::attention_fwd);
  m.impl("attention_bwd", &mte::attention_bwd);
  m.impl("attention_weights", &mte::attention_weights);
}
