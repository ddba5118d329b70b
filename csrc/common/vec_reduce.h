// Horizontal sum of one at::vec vector, lane 0 first: one fixed order, so every
// kernel that reduces a row with it (norm, softmax, the GEMM's dot-product path)
// is bitwise repeatable.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

namespace mte {

template <typename T>
inline T hsum(const at::vec::Vectorized<T>& v) {
  constexpr int64_t W = at::vec::Vectorized<T>::size();
  T buf[W];
  v.store(buf);
  T s = 0;
  for (int64_t k = 0; k < W; ++k) s += buf[k];
  return s;
}

}  // namespace mte
