// The CPU implementation of the N-body op (torch.ops.pedcc.nbody_forces on CPU tensors).
#pragma once

#include <ATen/ATen.h>

namespace pedcc {

// Operands of the Gram product: T (exact, impl 'auto'/'simt'), bf16 ('tensor_core'), or split bf16
// ('bf16x3': x = hi + lo).
enum Operands { kExactOperands = 0, kBf16Operands = 1, kSplitBf16Operands = 2 };

// X: contiguous (C, d) float32/float64 unit rows; kind: nbody.h's Potential, param and shift as for
// pair_potential (checked by the caller). Writes forces (C, d), max_cos (C,) and energy (C,), all
// allocated by the caller in the dtype of X.
void nbody_forces_cpu_impl(const at::Tensor& X, int kind, double param, double shift, int operands,
                           at::Tensor& forces, at::Tensor& max_cos, at::Tensor& energy);

}  // namespace pedcc
