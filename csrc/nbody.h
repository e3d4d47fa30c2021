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

enum Potential : int { kCoulomb = 0, kRiesz = 1, kLse = 2, kHinge = 3 };

// Coincident points would give an infinite Coulomb/Riesz energy; clamping r^2 keeps the force finite
// so that one bad initial pair cannot poison the whole optimiser state with inf/NaN.
constexpr double kMinSquaredDistance = 1e-6;

PEDCC_HD float pd_exp(float v) { return expf(v); }
PEDCC_HD double pd_exp(double v) { return exp(v); }
PEDCC_HD float pd_pow(float b, float e) { return powf(b, e); }
PEDCC_HD double pd_pow(double b, double e) { return pow(b, e); }

// Largest exponent of the lse potential before it continues linearly: e^60 ~ 1e26 leaves fp32 room
// for sums over a billion pairs at any temperature t >= 1e-3.
constexpr double kLseExponentCap = 60.0;
constexpr float kLseExponentFloor = -87.0f;

// Pair energy phi(cos) and its derivative phi'(cos) for unit vectors at cosine `c`.
//   coulomb: phi = 1/r,            r^2 = 2 - 2c          (the authors' charge model)
//   riesz:   phi = r^(-s),         s = param > 0
//   lse:     phi = exp((c - shift)/t), t = param > 0; summed and log-ed this is a soft maximum of
//            the cosines at temperature t. A caller aiming at the largest cosine with a small t
//            passes shift = that cosine (or last iteration's), so the weights that matter sit near
//            1 at any t; unshifted, c/t would pass the cap for every cosine above 60 t.
//            Above (c - shift)/t = kLseExponentCap phi continues as its tangent line (C^1,
//            increasing), so near-coincident points at a small t give a large finite force instead
//            of inf. In fp32, exponents below kLseExponentFloor give 0: exp would be subnormal
//            (slow on x86, and below any weight that counts next to the pairs near the shift).
//   shift is 0 for every potential but lse (the op checks it).
//   hinge:   phi = max(0, c - tau)^2, tau = param in [-1, 1]: only pairs above the target cosine
//            tau push, linearly in their excess, which is the feasibility form of "max cos <= tau".
template <typename T>
PEDCC_HD void pair_potential(int kind, T param, T shift, T c, T* phi, T* dphi) {
  if (kind == kHinge) {
    const T excess = c - param;
    const T positive = excess > T(0) || excess != excess ? excess : T(0);  // NaN stays NaN
    *phi = positive * positive;
    *dphi = T(2) * positive;
    return;
  }
  if (kind == kLse) {
    const T u = (c - shift) / param;
    const T cap = T(kLseExponentCap);
    if (sizeof(T) == sizeof(float) && u < T(kLseExponentFloor)) {
      *phi = T(0);
      *dphi = T(0);
    } else if (!(u > cap)) {  // NaN takes this branch and stays NaN
      const T e = pd_exp(u);
      *phi = e;
      *dphi = e / param;
    } else {
      const T top = pd_exp(cap);
      *phi = top * (T(1) + u - cap);
      *dphi = top / param;
    }
    return;
  }
  const T s = kind == kCoulomb ? T(1) : param;
  T r2 = T(2) - T(2) * c;
  if (r2 < T(kMinSquaredDistance)) r2 = T(kMinSquaredDistance);
  const T e = pd_pow(r2, -s / T(2));
  *phi = e;
  *dphi = s * e / r2;  // d/dc (2 - 2c)^(-s/2) = s (2 - 2c)^(-s/2 - 1)
}

// CUDA implementations (nbody.cu). points: (C, d) row-major fp32 on the device, rows of unit norm.
// Each writes forces (C, d) = -(I - x_i x_i^T) sum_{j != i} phi'(x_i.x_j) x_j, max_cos (C,), energy
// (C,); kind, param, shift as for pair_potential. Asynchronous on `stream` (a cudaStream_t); return 0
// or a cudaError_t value.
//
// simt: fp32 products on CUDA cores, any d.
int nbody_forces_cuda_simt(const float* points, int64_t C, int64_t d, int kind, float param, float shift,
                           float* forces, float* max_cos, float* energy, void* stream);

// tensor_core: both products with bf16 operands and fp32 accumulation (the cosines carry about 1e-4,
// the weights 2^-9 of their value). `operands` is a bf16 copy of points, zero-padded to the shape
// nbody_tc_operand_shape gives (the caller rounds, to nearest even). Only where nbody_tc_usable(d).
int nbody_forces_cuda_tc(const float* points, const void* operands, int64_t C, int64_t d, int kind, float param,
                         float shift, float* forces, float* max_cos, float* energy, void* stream);

// Whether the current device can run the tensor-core kernel at this d: sm_80 or newer, and the
// kernel's shared memory (the row block and a column tile in full) within the block opt-in limit,
// i.e. d <= 864 on an H100 (227 KB).
bool nbody_tc_usable(int64_t d);

// Rows and columns of the zero-padded bf16 operand copy: C rounded up to 64, d to 16.
void nbody_tc_operand_shape(int64_t C, int64_t d, int64_t* rows, int64_t* cols);

// cudaGetErrorString of a value returned by nbody_forces_cuda_simt or nbody_forces_cuda_tc.
const char* nbody_cuda_error_string(int code);

}  // namespace pedcc
