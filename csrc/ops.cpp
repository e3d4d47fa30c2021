// TORCH_LIBRARY(pedcc): op schemas, the CPU kernels and the CUDA dispatch glue. All torch code of
// the extension lives here; the CUDA kernels (nbody.cu) only see raw pointers.
#include <Python.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "nbody.h"

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
// CPU has them; benchmarks/results has the op at 1.7x its fp32 rate on a 2-core AMD EPYC).
int parse_impl(c10::string_view name) {
  const std::string s(name);
  if (s == "auto" || s == "simt") return 0;
  if (s == "tensor_core") return 1;
  TORCH_CHECK_VALUE(false, "nbody_forces: impl must be 'auto', 'simt' or 'tensor_core', got '", s, "'");
  return -1;
}

void check_points(const at::Tensor& points) {
  TORCH_CHECK_VALUE(points.dim() == 2, "nbody_forces: points must be 2-D (C, d), got shape ",
                    shape_of(points));
  TORCH_CHECK_VALUE(points.size(0) >= 1 && points.size(1) >= 1,
                    "nbody_forces: points must be non-empty, got shape ", shape_of(points));
}

// Rows per tile: the (rows x C) weight tile stays near 32 MB whatever C is, so memory is O(C*d).
int64_t rows_per_tile(int64_t C, int64_t elem_size) {
  const int64_t budget = int64_t(32) << 20;
  return std::max<int64_t>(16, std::min<int64_t>(1024, budget / std::max<int64_t>(1, C * elem_size)));
}

// Overwrites a (rows x C) Gram tile, kept as S (T, or bf16 with bf16 operands: no conversion pass
// either way), by the pair weights phi'(c), 0 on the diagonal, and writes each row's largest cosine
// and energy. The tile holds c - gram_offset.
template <typename T, typename S>
void weigh_gram_tile(S* wp, int64_t rows, int64_t C, int64_t r0, int kind, T param, T pair_shift, T gram_offset,
                     T* mp, T* ep) {
  at::parallel_for(0, rows, 8, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      S* row = wp + i * C;
      T best = -std::numeric_limits<T>::infinity();
      T e_sum = 0;
      const int64_t self = r0 + i;
      for (int64_t j = 0; j < C; ++j) {
        if (j == self) {
          row[j] = S(0);
          continue;
        }
        const T c = static_cast<T>(row[j]);
        best = c > best ? c : best;
        T phi, dphi;
        pair_potential<T>(kind, param, pair_shift, c, &phi, &dphi);
        e_sum += phi;
        row[j] = static_cast<S>(dphi);
      }
      mp[i] = best + gram_offset;
      ep[i] = e_sum;
    }
  });
}

template <typename T>
void nbody_cpu_impl(const at::Tensor& X, int kind, T param, T shift, bool bf16_operands, at::Tensor& forces,
                    at::Tensor& max_cos, at::Tensor& energy) {
  const int64_t C = X.size(0), d = X.size(1);
  const int64_t tile = rows_per_tile(C, sizeof(T));
  // The operands of both products; the weights and the tangent projection stay in T.
  const at::Tensor Xg = bf16_operands ? X.to(at::kBFloat16) : X;
  // With bf16 operands the Gram product also comes back in bf16, rounded to 2^-9 of its value. For
  // a shifted lse an extra feature (-shift on the left, 1 on the right) makes the product c - shift
  // instead: then the rounding is relative to the distance from the shift, small exactly for the
  // pairs whose weights count (near the largest cosine at a small temperature).
  at::Tensor left = Xg, right = Xg;
  T gram_offset = 0;  // what the product lacks of the cosine: c = product + gram_offset
  if (bf16_operands && kind == kLse && shift != 0) {
    gram_offset = static_cast<T>(static_cast<float>(c10::BFloat16(static_cast<float>(shift))));
    left = at::cat({Xg, at::full({C, 1}, -double(gram_offset), Xg.options())}, 1);
    right = at::cat({Xg, at::ones({C, 1}, Xg.options())}, 1);
  }
  const T pair_shift = shift - gram_offset;
  const at::Tensor right_t = right.t();
  const T* xp = X.data_ptr<T>();
  for (int64_t r0 = 0; r0 < C; r0 += tile) {
    const int64_t rows = std::min(tile, C - r0);
    // Gram tile through BLAS, then overwritten in place by the pair weights phi'(cos).
    at::Tensor W = at::mm(left.narrow(0, r0, rows), right_t);
    T* mp = max_cos.data_ptr<T>() + r0;
    T* ep = energy.data_ptr<T>() + r0;
    if (bf16_operands) {
      weigh_gram_tile<T>(W.data_ptr<at::BFloat16>(), rows, C, r0, kind, param, pair_shift, gram_offset, mp, ep);
    } else {
      weigh_gram_tile<T>(W.data_ptr<T>(), rows, C, r0, kind, param, pair_shift, gram_offset, mp, ep);
    }
    // rows x d: sum_j phi'(cos_ij) x_j
    at::Tensor A = at::mm(W, Xg).to(X.scalar_type());
    const T* ap = A.data_ptr<T>();
    T* fp = forces.data_ptr<T>() + r0 * d;
    at::parallel_for(0, rows, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const T* a = ap + i * d;
        const T* x = xp + (r0 + i) * d;
        T radial = 0;
        for (int64_t k = 0; k < d; ++k) radial += a[k] * x[k];
        T* f = fp + i * d;
        for (int64_t k = 0; k < d; ++k) f[k] = -(a[k] - radial * x[k]);
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> nbody_forces_cpu(const at::Tensor& points,
                                                                 c10::string_view potential, double param,
                                                                 c10::string_view impl, double shift) {
  check_points(points);
  TORCH_CHECK_TYPE(points.scalar_type() == at::kFloat || points.scalar_type() == at::kDouble,
                   "nbody_forces: points must be float32 or float64 on CPU, got ", points.scalar_type());
  const int kind = parse_potential(potential, param, shift);
  const bool bf16_operands = parse_impl(impl) == 1;
  const at::Tensor X = points.contiguous();
  at::Tensor forces = at::empty_like(X);
  at::Tensor max_cos = at::empty({X.size(0)}, X.options());
  at::Tensor energy = at::empty({X.size(0)}, X.options());
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "nbody_forces_cpu", [&] {
    nbody_cpu_impl<scalar_t>(X, kind, static_cast<scalar_t>(param), static_cast<scalar_t>(shift), bf16_operands,
                             forces, max_cos, energy);
  });
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
  const c10::cuda::CUDAGuard guard(points.device());
  const at::Tensor X = points.contiguous();
  at::Tensor forces = at::empty_like(X);
  at::Tensor max_cos = at::empty({X.size(0)}, X.options());
  at::Tensor energy = at::empty({X.size(0)}, X.options());
  const int64_t C = X.size(0), d = X.size(1);
  void* stream = at::cuda::getCurrentCUDAStream().stream();
  int err = 0;
  if (impl_id == 1 && nbody_tc_usable(d)) {
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
