// mma_frag.h — which lane holds which element of the warp-level tensor-core operands used by
// attention.cu: mma.sync.aligned.m16n8k16.row.col with .bf16/.f16 A/B and .f32 C/D, and
// ldmatrix.sync.aligned.m8n8.x4.trans.b16 feeding two B fragments.
//
// Plain C++ (host + device), so the index math the kernels use is the same code that
// csrc/tests/mma_frag_test.cpp runs on the CPU: that test emulates the instructions from their
// PTX ISA definitions and checks the kernels' tile dataflow (Q·Kᵀ, P·V, the backward's Kᵀ-side
// products and the transposed dS store) against naive matmuls — no GPU needed.
//
// PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type" (.f16/.bf16 A and B):
//   groupID = laneid >> 2, threadID_in_group = laneid % 4
//   A (16x16, 4 x .b32 = a0..a7, two per register, lower index in the low half):
//     row = groupID for a0,a1,a4,a5, groupID + 8 otherwise
//     col = 2*threadID_in_group + (i & 1), + 8 for a4..a7
//   B (16x8, 2 x .b32 = b0..b3): row (k) = 2*threadID_in_group + (i & 1), + 8 for b2,b3; col (n) = groupID
//   C/D (16x8 f32, c0..c3): row = groupID, + 8 for c2,c3; col = 2*threadID_in_group + (i & 1)
// So register r of A holds the pair at (row g + 8·(r&1), cols 2t, 2t+1 + 8·(r>>1)), register r of B
// the pair at (k 2t, 2t+1 + 8·r, n g), accumulator e the value at (g + 8·(e>>1), 2t + (e&1)).
#pragma once

#if defined(__CUDACC__)
#define PK_MMA_HD __host__ __device__ __forceinline__
#else
#define PK_MMA_HD inline
#endif

namespace pk {
namespace cuda {
namespace mma {

PK_MMA_HD constexpr int group_id(int lane) { return lane >> 2; }
PK_MMA_HD constexpr int thread_in_group(int lane) { return lane & 3; }

// A operand register r (0..3) of a 16x16 tile taken from a row-major array with row pitch ld
// (elements): offset of the first of its two consecutive b16 values (the second is at +1).
PK_MMA_HD constexpr int a_off(int lane, int r, int ld) {
  return (group_id(lane) + 8 * (r & 1)) * ld + 2 * thread_in_group(lane) + 8 * (r >> 1);
}

// B operand register r (0..1) of a 16(k) x 8(n) tile taken from an n-major array (element (k, n)
// at n·ld + k: e.g. K for S = Q·Kᵀ, whose rows are keys = n): offset of its first b16 value; the
// pair (k, k+1) is contiguous, so one 32-bit load fetches the register.
PK_MMA_HD constexpr int b_off_nmajor(int lane, int r, int ld) {
  return group_id(lane) * ld + 2 * thread_in_group(lane) + 8 * r;
}

// Accumulator element e (0..3) of a 16x8 C/D tile: its row and column.
PK_MMA_HD constexpr int c_row(int lane, int e) { return group_id(lane) + 8 * (e >> 1); }
PK_MMA_HD constexpr int c_col(int lane, int e) { return 2 * thread_in_group(lane) + (e & 1); }

// Accumulators re-used as an A operand (FlashAttention's P·V without a trip through shared
// memory): A register r over the 16-wide k chunk kk is the pair of accumulator elements
// (acc_elem(r), acc_elem(r) + 1) of the 8-wide accumulator tile 2·kk + acc_tile(r). Valid because
// C's (row, col) of elements 2j, 2j+1 equal A's (row, col) of register r's pair, up to the 8-column
// tile offset.
PK_MMA_HD constexpr int acc_tile(int r) { return r >> 1; }
PK_MMA_HD constexpr int acc_elem(int r) { return 2 * (r & 1); }

// ldmatrix.x4.trans reading a 16(k) x 16(n) block of a k-major array (element (k, n) at k·ld + n:
// e.g. V for O = P·V) as the B registers of two n-tiles: lanes 8m..8m+7 address the rows of 8x8
// matrix m; matrices 0/1 are k 0-7 / 8-15 of n 0-7 (registers b0, b1 of the first n-tile),
// matrices 2/3 the same k rows of n 8-15 (b0, b1 of the second). Offset of the row this lane
// addresses.
PK_MMA_HD constexpr int ldsm_x4t_off(int lane, int ld) { return (lane & 15) * ld + (lane >> 4) * 8; }

}  // namespace mma
}  // namespace cuda
}  // namespace pk
