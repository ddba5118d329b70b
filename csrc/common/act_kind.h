// Which activation a kernel applies: the Act enum, parsed from the op
// schemas' `str act` (csrc/ops.cpp). No vector headers here, so CUDA files
// include it too; the math is in act.h (CPU) and act_cuda.cuh (CUDA).
#pragma once
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>

namespace mte {

enum class Act : int { None = 0, ReLU, LeakyReLU, GELU, GELUTanh, SiLU, Tanh, Sigmoid };

inline Act parse_act(c10::string_view name) {
  if (name == "none") return Act::None;
  if (name == "relu") return Act::ReLU;
  if (name == "leaky_relu") return Act::LeakyReLU;
  if (name == "gelu") return Act::GELU;
  if (name == "gelu_tanh") return Act::GELUTanh;
  if (name == "silu") return Act::SiLU;
  if (name == "tanh") return Act::Tanh;
  if (name == "sigmoid") return Act::Sigmoid;
  TORCH_CHECK_VALUE(false, "act: expected one of 'none', 'relu', 'leaky_relu', 'gelu', 'gelu_tanh', "
                    "'silu', 'tanh', 'sigmoid', got '", std::string(name), "'");
}

// Can the derivative be computed from the output alone?
inline bool act_grad_from_output_ok(Act a, double slope) {
  return a == Act::None || a == Act::ReLU || a == Act::Tanh || a == Act::Sigmoid ||
         (a == Act::LeakyReLU && slope >= 0);
}

}  // namespace mte
