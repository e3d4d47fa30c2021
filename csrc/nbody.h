// Shared declarations of the N-body force op: the pair potentials (host and device) and the CUDA
// launcher on raw pointers. No torch headers here, so nbody.cu compiles with nvcc alone.
#pragma once
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define PEDCC_HD __host__ __device__ __forceinline__
#else
#define PEDCC_HD inline
#endif

namespace pedcc {

enum Potential : int { kCoulomb = 0, kRiesz = 1, kLse = 2 };

// Coincident points would give an infinite Coulomb/Riesz energy; clamping r^2 keeps the force finite
// so that one bad initial pair cannot poison the whole optimiser state with inf/NaN.
constexpr double kMinSquaredDistance = 1e-6;

PEDCC_HD float pd_exp(float v) { return expf(v); }
PEDCC_HD double pd_exp(double v) { return exp(v); }
PEDCC_HD float pd_pow(float b, float e) { return powf(b, e); }
PEDCC_HD double pd_pow(double b, double e) { return pow(b, e); }

// Pair energy phi(cos) and its derivative phi'(cos) for unit vectors at cosine `c`.
//   coulomb: phi = 1/r,            r^2 = 2 - 2c          (the authors' charge model)
//   riesz:   phi = r^(-s),         s = param > 0
//   lse:     phi = exp((c - 1)/t), t = param > 0; summed and log-ed this is a soft maximum of the
//            cosines. The shift by 1 only rescales the energy and keeps exp() <= 1, so no overflow.
template <typename T>
PEDCC_HD void pair_potential(int kind, T param, T c, T* phi, T* dphi) {
  if (kind == kLse) {
    const T e = pd_exp((c - T(1)) / param);
    *phi = e;
    *dphi = e / param;
    return;
  }
  const T s = kind == kCoulomb ? T(1) : param;
  T r2 = T(2) - T(2) * c;
  if (r2 < T(kMinSquaredDistance)) r2 = T(kMinSquaredDistance);
  const T e = pd_pow(r2, -s / T(2));
  *phi = e;
  *dphi = s * e / r2;  // d/dc (2 - 2c)^(-s/2) = s (2 - 2c)^(-s/2 - 1)
}

// CUDA implementation (nbody.cu). points: (C, d) row-major fp32 on the device, rows of unit norm.
// Writes forces (C, d) = -(I - x_i x_i^T) sum_{j != i} phi'(x_i.x_j) x_j, max_cos (C,), energy (C,).
// impl: 0 = plain tiled fp32 (SIMT), 1 = tensor cores (tf32 Gram tile, fp32 accumulation).
// Returns 0 on success or a cudaError_t value.
int nbody_forces_cuda(const float* points, int64_t C, int64_t d, int kind, float param, int impl,
                      float* forces, float* max_cos, float* energy, void* stream);

}  // namespace pedcc
