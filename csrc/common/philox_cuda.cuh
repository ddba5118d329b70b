// Philox4x32-10 on the GPU, shared by the attention and dropout families: the same words
// as csrc/common/philox.h (the CPU), Triton's tl.philox and minitorch_ext/_philox.py (the
// NumPy reference), bit for bit. Element c of a dropout mask uses word c & 3 of the
// evaluation at counter c >> 2, key = (seed lo, seed hi).
#pragma once
#include <cstdint>

// the four words of counter n (key (k0, k1)), ten rounds
__device__ __forceinline__ void philox4_words(uint32_t k0, uint32_t k1, uint64_t n, uint32_t out[4]) {
  uint32_t c0 = static_cast<uint32_t>(n), c1 = static_cast<uint32_t>(n >> 32), c2 = 0, c3 = 0;
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// The dropout word of element c: word c & 3 of Philox4x32-10 with key (k0, k1) and
// counter (n lo, n hi, 0, 0), n = c >> 2 (four elements share one evaluation).
__device__ __forceinline__ uint32_t philox_w0(uint32_t k0, uint32_t k1, uint64_t c) {
  const uint64_t n = c >> 2;
  uint32_t c0 = static_cast<uint32_t>(n), c1 = static_cast<uint32_t>(n >> 32), c2 = 0, c3 = 0;
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const uint32_t w = static_cast<uint32_t>(c & 3);
  return w == 0 ? c0 : (w == 1 ? c1 : (w == 2 ? c2 : c3));
}
