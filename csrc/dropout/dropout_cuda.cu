// Dropout on CUDA: dropout_fwd, dropout_fwd_, dropout_bwd (schemas in csrc/ops.cpp; the
// CPU twin and the full contract: csrc/dropout/dropout_cpu.cpp).
//
// Algorithm: one thread per group of four consecutive elements i0 .. i0+3 (i0 = 4g):
// elementwise dropout needs exactly one Philox4x32-10 evaluation per group (counter
// i0 / 4 gives the four words of the four elements: csrc/common/philox_cuda.cuh, bit for
// bit the CPU's and _philox.py's); channel dropout (channel_size > 1) evaluates the
// counter of channel i / channel_size, once per distinct counter in the group. y = x *
// (word >= thresh ? 1/(1-p) : 0) in float (double for float64), one rounded store.
// Grid-stride loop over groups; int64 indices.
// Memory traffic: read x once, write y once, one 16-byte (float32) vector load and
// store per thread when the group is aligned and whole; no mask tensor.
// The trick: the four words of one evaluation feed four neighbouring elements, so the
// generator costs ~15 integer ops per element and the kernel stays memory bound.
// Compile-checked with nvcc 13.0 for sm_90 (scripts/cuda_compile_check.sh, 62 s): 34-37
// registers, no stack frame, no spills; not yet run on a GPU (tests/test_dropout_cuda.py).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <cstdint>

#include "common/dtype_traits_cuda.cuh"
#include "common/philox_cuda.cuh"

namespace mte {
std::atomic<bool>& poison_flag();  // bindings.cpp
}

namespace {

using mte::cuda_traits::Acc;

template <typename T>
struct alignas(4 * sizeof(T)) Pack4 {
  T v[4];
};

template <typename T>
__global__ void dropout_kernel(const T* x, T* y, int64_t n, int64_t cs, uint32_t k0,
                               uint32_t k1, uint32_t thresh, double scale, bool all) {
  using Tr = Acc<T>;
  using A = typename Tr::A;
  const A s = static_cast<A>(scale);
  const int64_t groups = (n + 3) / 4;
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i0 = 4 * g;
    A m[4];
    if (all) {
      m[0] = m[1] = m[2] = m[3] = A(0);
    } else if (cs == 1) {
      uint32_t w[4];
      philox4_words(k0, k1, static_cast<uint64_t>(g), w);
#pragma unroll
      for (int j = 0; j < 4; ++j) m[j] = w[j] >= thresh ? s : A(0);
    } else {
      uint64_t have = ~uint64_t{0};
      uint32_t w[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint64_t c = static_cast<uint64_t>((i0 + j < n ? i0 + j : i0) / cs);
        if ((c >> 2) != have) {
          philox4_words(k0, k1, c >> 2, w);
          have = c >> 2;
        }
        const uint32_t q = static_cast<uint32_t>(c & 3);
        const uint32_t wc = q == 0 ? w[0] : (q == 1 ? w[1] : (q == 2 ? w[2] : w[3]));  // registers, no local array
        m[j] = wc >= thresh ? s : A(0);
      }
    }
    if (i0 + 3 < n && (reinterpret_cast<uintptr_t>(x + i0) % sizeof(Pack4<T>)) == 0 &&
        (reinterpret_cast<uintptr_t>(y + i0) % sizeof(Pack4<T>)) == 0) {
      Pack4<T> v = *reinterpret_cast<const Pack4<T>*>(x + i0);
#pragma unroll
      for (int j = 0; j < 4; ++j) v.v[j] = Tr::store(Tr::load(v.v[j]) * m[j]);
      *reinterpret_cast<Pack4<T>*>(y + i0) = v;
    } else {
      for (int j = 0; j < 4 && i0 + j < n; ++j) y[i0 + j] = Tr::store(Tr::load(x[i0 + j]) * m[j]);
    }
  }
}

void check_args(const at::Tensor& t, const char* name, double p, int64_t cs) {
  TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0, "dropout probability has to be between 0 and 1, but got ", p);
  TORCH_CHECK(cs >= 1, "channel_size: expected >= 1, got ", cs);
  TORCH_CHECK(t.numel() % cs == 0, "channel_size: ", cs, " does not divide the ", t.numel(), " elements of ", name);
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf, name,
              ": expected a floating point tensor (float32, float64, bfloat16 or float16), got ", st);
}

// the seed: a one-element int64 tensor, normally on the CPU (a CUDA one costs a sync)
int64_t seed_value(const at::Tensor& seed) {
  TORCH_CHECK(seed.numel() == 1 && seed.scalar_type() == at::kLong,
              "seed: expected a one-element int64 tensor, got ", seed.scalar_type(), " of shape ", seed.sizes());
  return seed.item<int64_t>();
}

void launch(const at::Tensor& src, at::Tensor& dst, double p, int64_t seed, int64_t cs) {
  const int64_t n = src.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(src.device());
  const bool all = p >= 1.0;
  const double tf = p * 4294967296.0;
  const uint32_t thresh = tf >= 4294967295.0 ? 4294967295u : static_cast<uint32_t>(tf);
  const double scale = all ? 0.0 : 1.0 / (1.0 - p);
  const uint64_t key = static_cast<uint64_t>(seed);
  const int threads = 256;
  const int64_t groups = (n + 3) / 4;
  const int blocks = static_cast<int>(std::min<int64_t>((groups + threads - 1) / threads, 65536));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, src.scalar_type(), "dropout_cuda", [&] {
    dropout_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        src.const_data_ptr<scalar_t>(), dst.mutable_data_ptr<scalar_t>(), n, cs, static_cast<uint32_t>(key),
        static_cast<uint32_t>(key >> 32), thresh, scale, all);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor new_like(const at::Tensor& t) {
  at::Tensor out = at::empty(t.sizes(), t.options());
  if (mte::poison_flag().load(std::memory_order_relaxed) && out.numel() > 0) out.fill_(NAN);
  return out;
}

at::Tensor dropout_fwd_cuda(const at::Tensor& input, double p, const at::Tensor& seed_t, int64_t channel_size) {
  check_args(input, "input", p, channel_size);
  const int64_t seed = seed_value(seed_t);
  const at::Tensor x = input.contiguous();
  at::Tensor y = new_like(x);
  launch(x, y, p, seed, channel_size);
  return y;
}

void dropout_fwd_cuda_(at::Tensor& input, double p, const at::Tensor& seed_t, int64_t channel_size) {
  check_args(input, "input", p, channel_size);
  const int64_t seed = seed_value(seed_t);
  if (input.is_contiguous()) {
    launch(input, input, p, seed, channel_size);
    return;
  }
  at::Tensor x = input.contiguous();
  launch(x, x, p, seed, channel_size);
  input.copy_(x);
}

at::Tensor dropout_bwd_cuda(const at::Tensor& grad_output, double p, const at::Tensor& seed_t,
                            int64_t channel_size) {
  check_args(grad_output, "grad_output", p, channel_size);
  const int64_t seed = seed_value(seed_t);
  const at::Tensor g = grad_output.contiguous();
  at::Tensor gi = new_like(g);
  launch(g, gi, p, seed, channel_size);
  return gi;
}

}  // namespace

TORCH_LIBRARY_IMPL(minitorch_ext, CUDA, m) {
  m.impl("dropout_fwd", &dropout_fwd_cuda);
  m.impl("dropout_fwd_", &dropout_fwd_cuda_);
  m.impl("dropout_bwd", &dropout_bwd_cuda);
}
