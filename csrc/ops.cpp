// TORCH_LIBRARY(pedcc): op schemas, the CPU kernels and the CUDA dispatch glue. All torch code of
// the extension lives here; the CUDA kernels (nbody.cu) only see raw pointers.
#include <Python.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
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

int parse_potential(c10::string_view name, double param) {
  const std::string p(name);
  if (p == "coulomb") return kCoulomb;
  if (p == "riesz") {
    TORCH_CHECK_VALUE(param > 0, "nbody_forces: param (the Riesz exponent s) must be > 0, got ", param);
    return kRiesz;
  }
  if (p == "lse") {
    TORCH_CHECK_VALUE(param > 0, "nbody_forces: param (the temperature t) must be > 0, got ", param);
    return kLse;
  }
  if (p == "hinge") {
    TORCH_CHECK_VALUE(param >= -1 && param <= 1,
                      "nbody_forces: param (the target cosine tau) must lie in [-1, 1], got ", param);
    return kHinge;
  }
  TORCH_CHECK_VALUE(false, "nbody_forces: potential must be 'coulomb', 'riesz', 'lse' or 'hinge', got '", p,
                    "'");
  return -1;
}

// 'auto' is the SIMT kernel: the tensor-core kernel becomes the default only once a GPU run has
// matched it against the CPU op and shown it faster (benchmarks/device_check.sh records both).
int parse_impl(c10::string_view name) {
  const std::string s(name);
  if (s == "auto" || s == "simt") return 0;
  if (s == "tensor_core") return 1;
  TORCH_CHECK_VALUE(false, "nbody_forces: impl must be 'auto', 'simt' or 'tensor_core', got '", s, "'");
  return -1;
}

void check_points(const at::Tensor& points) {
  TORCH_CHECK_VALUE(points.dim() == 2, "nbody_forces: points must be 2-D (C, d), got shape ",
                    points.sizes());
  TORCH_CHECK_VALUE(points.size(0) >= 1 && points.size(1) >= 1,
                    "nbody_forces: points must be non-empty, got shape ", points.sizes());
}

// Rows per tile: the (rows x C) weight tile stays near 32 MB whatever C is, so memory is O(C*d).
int64_t rows_per_tile(int64_t C, int64_t elem_size) {
  const int64_t budget = int64_t(32) << 20;
  return std::max<int64_t>(16, std::min<int64_t>(1024, budget / std::max<int64_t>(1, C * elem_size)));
}

template <typename T>
void nbody_cpu_impl(const at::Tensor& X, int kind, T param, at::Tensor& forces, at::Tensor& max_cos,
                    at::Tensor& energy) {
  const int64_t C = X.size(0), d = X.size(1);
  const int64_t tile = rows_per_tile(C, sizeof(T));
  const at::Tensor Xt = X.t();
  const T* xp = X.data_ptr<T>();
  for (int64_t r0 = 0; r0 < C; r0 += tile) {
    const int64_t rows = std::min(tile, C - r0);
    // Gram tile through BLAS, then overwritten in place by the pair weights phi'(cos).
    at::Tensor W = at::mm(X.narrow(0, r0, rows), Xt);
    T* wp = W.data_ptr<T>();
    T* mp = max_cos.data_ptr<T>() + r0;
    T* ep = energy.data_ptr<T>() + r0;
    at::parallel_for(0, rows, 8, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        T* row = wp + i * C;
        T best = -std::numeric_limits<T>::infinity();
        T e_sum = 0;
        const int64_t self = r0 + i;
        for (int64_t j = 0; j < C; ++j) {
          if (j == self) {
            row[j] = 0;
            continue;
          }
          const T c = row[j];
          best = c > best ? c : best;
          T phi, dphi;
          pair_potential<T>(kind, param, c, &phi, &dphi);
          e_sum += phi;
          row[j] = dphi;
        }
        mp[i] = best;
        ep[i] = e_sum;
      }
    });
    at::Tensor A = at::mm(W, X);  // rows x d: sum_j phi'(cos_ij) x_j
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
                                                                 c10::string_view potential,
                                                                 double param, c10::string_view impl) {
  check_points(points);
  TORCH_CHECK_TYPE(points.scalar_type() == at::kFloat || points.scalar_type() == at::kDouble,
                   "nbody_forces: points must be float32 or float64 on CPU, got ", points.scalar_type());
  const int kind = parse_potential(potential, param);
  parse_impl(impl);
  const at::Tensor X = points.contiguous();
  at::Tensor forces = at::empty_like(X);
  at::Tensor max_cos = at::empty({X.size(0)}, X.options());
  at::Tensor energy = at::empty({X.size(0)}, X.options());
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "nbody_forces_cpu", [&] {
    nbody_cpu_impl<scalar_t>(X, kind, static_cast<scalar_t>(param), forces, max_cos, energy);
  });
  return {forces, max_cos, energy};
}

#ifdef PEDCC_WITH_CUDA
std::tuple<at::Tensor, at::Tensor, at::Tensor> nbody_forces_cuda_op(const at::Tensor& points,
                                                                    c10::string_view potential,
                                                                    double param, c10::string_view impl) {
  check_points(points);
  TORCH_CHECK_TYPE(points.scalar_type() == at::kFloat, "nbody_forces: points must be float32 on CUDA, got ",
                   points.scalar_type());
  const int kind = parse_potential(potential, param);
  const int impl_id = parse_impl(impl);
  const c10::cuda::CUDAGuard guard(points.device());
  const at::Tensor X = points.contiguous();
  at::Tensor forces = at::empty_like(X);
  at::Tensor max_cos = at::empty({X.size(0)}, X.options());
  at::Tensor energy = at::empty({X.size(0)}, X.options());
  const int err = nbody_forces_cuda(X.data_ptr<float>(), X.size(0), X.size(1), kind,
                                    static_cast<float>(param), impl_id, forces.data_ptr<float>(),
                                    max_cos.data_ptr<float>(), energy.data_ptr<float>(),
                                    at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "nbody_forces: CUDA launch failed: ", nbody_cuda_error_string(err));
  return {forces, max_cos, energy};
}
#endif

}  // namespace

TORCH_LIBRARY(pedcc, m) {
  m.def(
      "nbody_forces(Tensor points, str potential, float param, str impl='auto') -> "
      "(Tensor forces, Tensor max_cos, Tensor energy)");
}

TORCH_LIBRARY_IMPL(pedcc, CPU, m) { m.impl("nbody_forces", &nbody_forces_cpu); }

#ifdef PEDCC_WITH_CUDA
TORCH_LIBRARY_IMPL(pedcc, CUDA, m) { m.impl("nbody_forces", &nbody_forces_cuda_op); }
#endif

}  // namespace pedcc
