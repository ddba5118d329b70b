// Philox4x32-10 on the CPU (Salmon et al., SC'11; the constants and round of Random123,
// curand and Triton's tl.philox), shared by the attention and dropout families.
// minitorch_ext/_philox.py is the NumPy reference; the CUDA and Triton kernels compute
// the same words bit for bit.
//
// Element c of a dropout mask uses word c % 4 of the counter c / 4 (key = the 64-bit
// seed): one evaluation (ten rounds of two 32x32->64 multiplies) serves four neighbours,
// and any element can be regenerated from (seed, c) alone, in any order, so backward
// never needs a stored mask.
#pragma once
#include <cstdint>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace mte {


inline void philox4(uint64_t seed, uint64_t ctr, uint32_t out[4]) {
  uint32_t c0 = static_cast<uint32_t>(ctr), c1 = static_cast<uint32_t>(ctr >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = uint64_t{0xD2511F53u} * c0, p1 = uint64_t{0xCD9E8D57u} * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

#if defined(__AVX2__)
// 32x32 -> 64-bit products of 8 lanes with one constant: (high halves, low halves).
inline void philox_mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i pe = _mm256_mul_epu32(a, m);                         // lanes 0, 2, 4, 6
  const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);  // lanes 1, 3, 5, 7
  hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
  lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
}

// the four words of the 8 counters ctr .. ctr+7, eight lanes at a time (philox4, bit
// for bit), stored counter-major: out[4*l + w] = word w of counter ctr + l
inline void philox4_x8(uint64_t seed, uint64_t ctr, uint32_t* out) {
  alignas(32) uint32_t lo32[8], hi32[8];
  for (int l = 0; l < 8; ++l) {
    const uint64_t c = ctr + static_cast<uint64_t>(l);
    lo32[l] = static_cast<uint32_t>(c);
    hi32[l] = static_cast<uint32_t>(c >> 32);
  }
  __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo32));
  __m256i c1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi32));
  __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
  __m256i k0 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(seed)));
  __m256i k1 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(seed >> 32)));
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m256i w0 = _mm256_set1_epi32(static_cast<int>(0x9E3779B9u));
  const __m256i w1 = _mm256_set1_epi32(static_cast<int>(0xBB67AE85u));
  for (int r = 0; r < 10; ++r) {
    __m256i hi0, lo0, hi1, lo1;
    philox_mulhilo8(c0, m0, hi0, lo0);
    philox_mulhilo8(c2, m1, hi1, lo1);
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), k0);
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), k1);
    c1 = lo1;
    c3 = lo0;
    k0 = _mm256_add_epi32(k0, w0);
    k1 = _mm256_add_epi32(k1, w1);
  }
  // 4 x 8 -> 8 x 4: interleave the words of each counter
  const __m256i t0 = _mm256_unpacklo_epi32(c0, c1), t1 = _mm256_unpackhi_epi32(c0, c1);
  const __m256i t2 = _mm256_unpacklo_epi32(c2, c3), t3 = _mm256_unpackhi_epi32(c2, c3);
  const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
  const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
  __m256i* o = reinterpret_cast<__m256i*>(out);
  _mm256_storeu_si256(o + 0, _mm256_permute2x128_si256(u0, u1, 0x20));  // counters 0, 1
  _mm256_storeu_si256(o + 1, _mm256_permute2x128_si256(u2, u3, 0x20));  // 2, 3
  _mm256_storeu_si256(o + 2, _mm256_permute2x128_si256(u0, u1, 0x31));  // 4, 5
  _mm256_storeu_si256(o + 3, _mm256_permute2x128_si256(u2, u3, 0x31));  // 6, 7
}
#endif

#if defined(__AVX512F__)
// 32x32 -> 64-bit products of 16 lanes with one constant: (high halves, low halves).
inline void philox_mulhilo16(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i pe = _mm512_mul_epu32(a, m);                         // even lanes
  const __m512i po = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);  // odd lanes
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe, 32), po);
  lo = _mm512_mask_blend_epi32(0xAAAA, pe, _mm512_slli_epi64(po, 32));
}

// the four words of the 16 counters ctr .. ctr+15 (philox4, bit for bit), counter-major:
// out[4*l + w] = word w of counter ctr + l. K independent groups of 16 (ctr + 16k ..) go
// through the rounds together: a round is a chain of ~8 dependent instructions (the
// 32x32->64 multiplies have 5 cycles of latency), so interleaving groups fills the pipes.
template <int K>
inline void philox4_x16k(uint64_t seed, uint64_t ctr, uint32_t* out) {
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  __m512i c0[K], c1[K], c2[K], c3[K];
  for (int g = 0; g < K; ++g) {
    const uint64_t base = ctr + 16 * static_cast<uint64_t>(g);
    if ((base & 0xFFFFFFFFull) <= 0xFFFFFFFFull - 15) {  // no carry into the high word
      c0[g] = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base))), lane);
      c1[g] = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base >> 32)));
    } else {
      alignas(64) uint32_t lo32[16], hi32[16];
      for (int l = 0; l < 16; ++l) {
        const uint64_t c = base + static_cast<uint64_t>(l);
        lo32[l] = static_cast<uint32_t>(c);
        hi32[l] = static_cast<uint32_t>(c >> 32);
      }
      c0[g] = _mm512_load_si512(lo32);
      c1[g] = _mm512_load_si512(hi32);
    }
    c2[g] = _mm512_setzero_si512();
    c3[g] = _mm512_setzero_si512();
  }
  __m512i k0 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(seed)));
  __m512i k1 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(seed >> 32)));
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m512i w0 = _mm512_set1_epi32(static_cast<int>(0x9E3779B9u));
  const __m512i w1 = _mm512_set1_epi32(static_cast<int>(0xBB67AE85u));
  for (int r = 0; r < 10; ++r) {
    for (int g = 0; g < K; ++g) {
      __m512i hi0, lo0, hi1, lo1;
      philox_mulhilo16(c0[g], m0, hi0, lo0);
      philox_mulhilo16(c2[g], m1, hi1, lo1);
      c0[g] = _mm512_ternarylogic_epi32(hi1, c1[g], k0, 0x96);  // hi1 ^ c1 ^ k0
      c2[g] = _mm512_ternarylogic_epi32(hi0, c3[g], k1, 0x96);
      c1[g] = lo1;
      c3[g] = lo0;
    }
    k0 = _mm512_add_epi32(k0, w0);
    k1 = _mm512_add_epi32(k1, w1);
  }
  for (int g = 0; g < K; ++g) {
    // 4 x 16 -> 16 x 4: inside each 128-bit lane j, u_k holds the words of counter 4j + k
    const __m512i t0 = _mm512_unpacklo_epi32(c0[g], c1[g]), t1 = _mm512_unpackhi_epi32(c0[g], c1[g]);
    const __m512i t2 = _mm512_unpacklo_epi32(c2[g], c3[g]), t3 = _mm512_unpackhi_epi32(c2[g], c3[g]);
    const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
    const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
    // u0 = [c0 c4 c8 c12], u1 = [c1 c5 c9 c13], u2 = [c2 ...], u3 = [c3 ...] (128-bit lanes)
    // a = [c0 c4 c1 c5], b = [c8 c12 c9 c13], c = [c2 c6 c3 c7], d = [c10 c14 c11 c15]
    const __m512i a = _mm512_shuffle_i64x2(u0, u1, 0x44), b = _mm512_shuffle_i64x2(u0, u1, 0xEE);
    const __m512i c = _mm512_shuffle_i64x2(u2, u3, 0x44), d = _mm512_shuffle_i64x2(u2, u3, 0xEE);
    uint32_t* o = out + 64 * g;
    _mm512_storeu_si512(o + 0, _mm512_shuffle_i64x2(a, c, 0x88));   // counters 0, 1, 2, 3
    _mm512_storeu_si512(o + 16, _mm512_shuffle_i64x2(a, c, 0xDD));  // 4 .. 7
    _mm512_storeu_si512(o + 32, _mm512_shuffle_i64x2(b, d, 0x88));  // 8 .. 11
    _mm512_storeu_si512(o + 48, _mm512_shuffle_i64x2(b, d, 0xDD));  // 12 .. 15
  }
}

inline void philox4_x16(uint64_t seed, uint64_t ctr, uint32_t* out) { philox4_x16k<1>(seed, ctr, out); }
#endif

// The words of the n consecutive elements c0 .. c0+n-1 (n >= 1). scratch holds at
// least n + 40 words; the result is a pointer into it.
inline const uint32_t* philox_row(uint64_t seed, uint64_t c0, int64_t n, uint32_t* scratch) {
  const uint64_t first = c0 >> 2, last = (c0 + static_cast<uint64_t>(n) - 1) >> 2;
  const int64_t nctr = static_cast<int64_t>(last - first) + 1;
  int64_t q = 0;
#if defined(__AVX512F__)
  for (; q + 64 <= nctr; q += 64) philox4_x16k<4>(seed, first + static_cast<uint64_t>(q), scratch + 4 * q);
  for (; q + 16 <= nctr; q += 16) philox4_x16(seed, first + static_cast<uint64_t>(q), scratch + 4 * q);
#endif
#if defined(__AVX2__)
  for (; q + 8 <= nctr; q += 8) philox4_x8(seed, first + static_cast<uint64_t>(q), scratch + 4 * q);
#endif
  for (; q < nctr; ++q) philox4(seed, first + static_cast<uint64_t>(q), scratch + 4 * q);
  return scratch + (c0 & 3);
}

// The uint32 threshold of drop probability p: an element is dropped iff its word is below it
// (minitorch_ext._philox.dropout_threshold).
inline uint32_t philox_threshold(double p) {
  const double t = p * 4294967296.0;
  return t >= 4294967295.0 ? 4294967295u : static_cast<uint32_t>(t);
}

}  // namespace mte
