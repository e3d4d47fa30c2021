// The pair weights of the CPU N-body op (nbody_cpu.cpp) for one row segment of a Gram tile, in float
// and without branches. Plain C++, no torch headers.
#pragma once

#include <cstdint>

namespace pedcc {

// Columns per task of weigh_tile: each task owns whole columns, so their statistics need no merge.
constexpr int64_t kColumnBlock = 256;

// Whether nbody.h's potential `kind` has the branch-free loop: lse, coulomb and hinge (Riesz's powf
// keeps the generic loop of nbody_cpu.cpp).
bool has_flat_potential(int kind);

// One row's n <= kColumnBlock cosines of a tile (each c - gram_offset, with shift the pair's shift
// for lse, param as for pair_potential): overwritten by the weights phi'(c), 0 at index `self` (the
// diagonal, or -1), the row's largest cosine and energy returned in *row_best / *row_energy, and
// the columns' merged into cmax / csum (max and sum over the rows seen so far). bf16 rows are bits.
void weigh_row_float(int kind, float* row, int64_t n, int64_t self, float param, float shift, float* cmax,
                     float* csum, float* row_best, float* row_energy);
void weigh_row_bf16(int kind, uint16_t* row, int64_t n, int64_t self, float param, float shift, float* cmax,
                    float* csum, float* row_best, float* row_energy);

}  // namespace pedcc
