// The few non-op helpers exposed through pybind11 (ops go through the
// dispatcher, see ops.cpp). Importing minitorch_ext._C also runs every
// TORCH_LIBRARY / TORCH_LIBRARY_IMPL static registration in this library.
#include <Python.h>
#include <pybind11/pybind11.h>
#include <torch/version.h>

#include "common/alloc.h"

namespace mte {
void register_optim_eager(pybind11::module& m);  // csrc/optim/optim_py.cpp
void register_fma_peak(pybind11::module& m);     // csrc/gemm/fma_peak_cpu.cpp
}

#ifndef MINITORCH_EXT_CPU_ISA
#define MINITORCH_EXT_CPU_ISA "default"
#endif

namespace py = pybind11;

namespace mte {
std::atomic<bool>& poison_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}
}  // namespace mte

static py::dict build_info() {
  py::dict d;
  d["cpu_isa"] = MINITORCH_EXT_CPU_ISA;
#ifdef MINITORCH_EXT_WITH_CUDA
  d["cuda"] = true;
  d["cuda_archs"] = MINITORCH_EXT_CUDA_ARCHS;
#else
  d["cuda"] = false;
  d["cuda_archs"] = "";
#endif
  d["torch_built_against"] = TORCH_VERSION;
  return d;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "minitorch_ext compiled kernels (registered as torch.ops.minitorch_ext.*)";
  m.def("build_info", &build_info, "What this build of minitorch_ext compiled");
  m.def("set_poison", [](bool on) { mte::poison_flag().store(on); },
        "Testing aid: fill every new floating-point kernel output with NaN before the kernel writes it");
  m.def("get_poison", []() { return mte::poison_flag().load(); });
  m.def("empty_cache", &mte::cpu_cache_release, "Release the CPU output cache; returns the bytes freed");
  mte::register_optim_eager(m);
  mte::register_fma_peak(m);
  m.def("cache_stats", &mte::cpu_cache_stats, "(bytes cached, hits, misses) of the CPU output cache");
}
