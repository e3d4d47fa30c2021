// TORCH_LIBRARY(pedcc): op schemas, argument checks and the dispatch to the CPU kernel (nbody_cpu.cpp,
// its weighing loop in nbody_cpu_weights.cpp) and the CUDA kernels (nbody.cu, which only see raw
// pointers).
#include <Python.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

#include "nbody.h"
#include "nbody_cpu.h"

#ifdef PEDCC_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

// The module only exists so that `import pedcc_kernels._C` loads the library and runs the
// TORCH_LIBRARY registrations below; the ops are reached through torch.ops.pedcc.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

namespace pedcc {
namespace {

// Numbers in error messages are formatted here, not streamed into the message: on the H200 machine
// (torch 2.11, extension built there), every check whose message streamed a double or a shape
// (c10::str, an std::ostringstream) crashed the process with a segfault while the ones streaming
// only strings raised cleanly. snprintf needs no iostream locale.
std::string number(double v) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g", v);
  return text;
}

std::string shape_of(const at::Tensor& t) {
  std::string text = "(";
  for (int64_t i = 0; i < t.dim(); ++i) text += (i ? ", " : "") + std::to_string(t.size(i));
  return text + (t.dim() == 1 ? ",)" : ")");
}

int parse_potential(c10::string_view name, double param, double shift) {
  const std::string p(name);
  TORCH_CHECK_VALUE(p == "lse" || shift == 0,
                    "nbody_forces: shift only applies to the 'lse' potential, got shift=", number(shift), " with '", p,
                    "'");
  TORCH_CHECK_VALUE(std::isfinite(shift), "nbody_forces: shift must be finite, got ", number(shift));
  if (p == "coulomb") return kCoulomb;
  if (p == "riesz") {
    TORCH_CHECK_VALUE(param > 0, "nbody_forces: param (the Riesz exponent s) must be > 0, got ", number(param));
    return kRiesz;
  }
  if (p == "lse") {
    TORCH_CHECK_VALUE(param > 0, "nbody_forces: param (the temperature t) must be > 0, got ", number(param));
    return kLse;
  }
  if (p == "hinge") {
    TORCH_CHECK_VALUE(param >= -1 && param <= 1,
                      "nbody_forces: param (the target cosine tau) must lie in [-1, 1], got ", number(param));
    return kHinge;
  }
  TORCH_CHECK_VALUE(false, "nbody_forces: potential must be 'coulomb', 'riesz', 'lse' or 'hinge', got '", p,
                    "'");
  return -1;
}

// 'auto' is the SIMT kernel: on an H200 (benchmarks/results, 2026-11-28) the first tensor-core kernel
// (tf32 WMMA, accumulator in shared memory) matched the CPU op but ran 2.5x slower than SIMT at
// C=100000, d=512, so it did not become the default. Its bf16 successor (accumulator in registers)
// becomes the default only once a GPU run has matched and timed it; the optimisers use the Triton
// kernel (pedcc_kernels/kernels/nbody_sweep.py) meanwhile.
// On CPU, 'tensor_core' runs both products with bf16 operands (oneDNN: AVX512-BF16/AMX where the
// CPU has them; benchmarks/results has the op at 2.2x its fp32 rate on a 2-core AMD EPYC), and
// 'bf16x3' (CPU only) takes the Gram product from split operands, hi + lo (nbody_cpu.cpp).
int parse_impl(c10::string_view name) {
  const std::string s(name);
  if (s == "auto" || s == "simt") return kExactOperands;
  if (s == "tensor_core") return kBf16Operands;
  if (s == "bf16x3") return kSplitBf16Operands;
  TORCH_CHECK_VALUE(false, "nbody_forces: impl must be 'auto', 'simt', 'tensor_core' or 'bf16x3', got '", s, "'");
  return -1;
}

void check_points(const at::Tensor& points) {
  TORCH_CHECK_VALUE(points.dim() == 2, "nbody_forces: points must be 2-D (C, d), got shape ",
                    shape_of(points));
  TORCH_CHECK_VALUE(points.size(0) >= 1 && points.size(1) >= 1,
                    "nbody_forces: points must be non-empty, got shape ", shape_of(points));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> nbody_forces_cpu(const at::Tensor& points,
                                                                 c10::string_view potential, double param,
                                                                 c10::string_view impl, double shift) {
  check_points(points);
  TORCH_CHECK_TYPE(points.scalar_type() == at::kFloat || points.scalar_type() == at::kDouble,
                   "nbody_forces: points must be float32 or float64 on CPU, got ", points.scalar_type());
  const int kind = parse_potential(potential, param, shift);
  const int operands = parse_impl(impl);
  const at::Tensor X = points.contiguous();
  at::Tensor forces = at::empty_like(X);
  at::Tensor max_cos = at::empty({X.size(0)}, X.options());
  at::Tensor energy = at::empty({X.size(0)}, X.options());
  nbody_forces_cpu_impl(X, kind, param, shift, operands, forces, max_cos, energy);
  return {forces, max_cos, energy};
}

#ifdef PEDCC_WITH_CUDA
std::tuple<at::Tensor, at::Tensor, at::Tensor> nbody_forces_cuda_op(const at::Tensor& points,
                                                                    c10::string_view potential,
                                                                    double param, c10::string_view impl,
                                                                    double shift) {
  check_points(points);
  TORCH_CHECK_TYPE(points.scalar_type() == at::kFloat, "nbody_forces: points must be float32 on CUDA, got ",
                   points.scalar_type());
  const int kind = parse_potential(potential, param, shift);
  const int impl_id = parse_impl(impl);
  TORCH_CHECK_VALUE(impl_id != kSplitBf16Operands,
                    "nbody_forces: impl 'bf16x3' is CPU-only; on CUDA use 'simt' (fp32), 'tensor_core' or 'triton'");
  const c10::cuda::CUDAGuard guard(points.device());
  const at::Tensor X = points.contiguous();
  at::Tensor forces = at::empty_like(X);
  at::Tensor max_cos = at::empty({X.size(0)}, X.options());
  at::Tensor energy = at::empty({X.size(0)}, X.options());
  const int64_t C = X.size(0), d = X.size(1);
  void* stream = at::cuda::getCurrentCUDAStream().stream();
  int err = 0;
  if (impl_id == kBf16Operands && nbody_tc_usable(d)) {
    int64_t rows = 0, cols = 0;
    nbody_tc_operand_shape(C, d, &rows, &cols);
    // The bf16 operands, rounded to nearest even like the CPU op's and the Triton kernel's.
    at::Tensor operands = at::zeros({rows, cols}, X.options().dtype(at::kBFloat16));
    operands.narrow(0, 0, C).narrow(1, 0, d).copy_(X);
    err = nbody_forces_cuda_tc(X.data_ptr<float>(), operands.data_ptr(), C, d, kind, static_cast<float>(param),
                               static_cast<float>(shift), forces.data_ptr<float>(), max_cos.data_ptr<float>(),
                               energy.data_ptr<float>(), stream);
  } else {
    err = nbody_forces_cuda_simt(X.data_ptr<float>(), C, d, kind, static_cast<float>(param),
                                 static_cast<float>(shift), forces.data_ptr<float>(), max_cos.data_ptr<float>(),
                                 energy.data_ptr<float>(), stream);
  }
  TORCH_CHECK(err == 0, "nbody_forces: CUDA launch failed: ", nbody_cuda_error_string(err));
  return {forces, max_cos, energy};
}
#endif

}  // namespace

TORCH_LIBRARY(pedcc, m) {
  m.def(
      "nbody_forces(Tensor points, str potential, float param, str impl='auto', float shift=0.0) -> "
      "(Tensor forces, Tensor max_cos, Tensor energy)");
}

TORCH_LIBRARY_IMPL(pedcc, CPU, m) { m.impl("nbody_forces", &nbody_forces_cpu); }

#ifdef PEDCC_WITH_CUDA
TORCH_LIBRARY_IMPL(pedcc, CUDA, m) { m.impl("nbody_forces", &nbody_forces_cuda_op); }
#endif

}  // namespace pedcc
