// Output allocation shared by every kernel. In normal runs new_output is
// at::empty. The test checker turns on "poison" (minitorch_ext._C.set_poison),
// and every floating-point output is then filled with NaN before the kernel
// runs, so an element the kernel forgot to write fails the comparison.
#pragma once
#include <ATen/ATen.h>

#include <atomic>
#include <cmath>

namespace mte {

std::atomic<bool>& poison_flag();  // defined in bindings.cpp

inline at::Tensor poisoned(at::Tensor t) {
  if (poison_flag().load(std::memory_order_relaxed) && t.is_floating_point() && t.numel() > 0) t.fill_(NAN);
  return t;
}

inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return poisoned(at::empty(sizes, opts));
}

inline at::Tensor new_output_like(const at::Tensor& t) {
  return poisoned(at::empty_like(t, at::MemoryFormat::Contiguous));
}

}  // namespace mte
