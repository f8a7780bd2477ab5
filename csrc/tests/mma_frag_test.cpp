// mma_frag_test.cpp — the tensor-core fragment layouts of csrc/cuda/attention.cu, checked on the
// CPU (no GPU, no nvcc).
//
// Two halves that must not share code:
//   * "hardware": mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16} and
//     ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16, emulated warp-wide straight from the PTX
//     ISA text (sections "Matrix Fragments for mma.m16n8k16 with floating point type" and
//     "Warp-level matrix load instruction: ldmatrix"): each lane's registers are scattered into /
//     gathered from whole matrices with the ISA's own row/col formulas, and the test fails if a
//     matrix element is covered twice or not at all.
//   * "kernel": the tile dataflow of fwd_mma_kernel / bwd_mma_kernel written with the index
//     helpers of csrc/cuda/mma_frag.h that the kernels call, and the same offset expressions
//     (the attention.cu line each mirrors is quoted). Keep the two in sync when the kernels change.
// Every product is compared with a naive matmul of the same shared-memory tiles. Values are small
// integers, so f32 sums are exact and any layout error shows as a mismatch, not as noise.
//
// Covered: S = Q·Kᵀ (A from row-major Q, B from n-major K), the mask/output row/col indices, P
// re-packed from the S accumulators into A fragments, O = P·V (V through ldmatrix.x4.trans);
// backward Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ, dV = Pᵀ·dO, dK = dSᵀ·Q, the transposed dS store into shared
// memory and dQ = dS·K with its split of row/column tiles over the 4 warps (each dQ element made
// exactly once). D = 64 and 128, with their Br (forward 64; backward 64 / 32).
// Not covered (GPU only): bf16/f16 rounding, cp.async, the online softmax, masking, atomics.
// Build with -DPEFTKIT_NATIVE_TESTS=ON; run ./mma_frag_test -> exit 0 on success.
#include "expect.h"
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cuda/mma_frag.h"

namespace mma = pk::cuda::mma;

namespace {


// ------------------------------------------------------------------------------------------
// Hardware model. A 32-bit register holding two b16 values is modelled as float[2] (element 0 =
// the low half = the lower-indexed element, as the ISA lists "elements low to high").

struct FragA { float r[4][2]; };   // a0..a7
struct FragB { float r[2][2]; };   // b0..b3
struct FragC { float c[4]; };      // c0..c3 (f32)

// mma.m16n8k16 .row.col, f32 accumulate: per lane D = A·B + C with the ISA's fragment tables.
void hw_mma(FragC (&c)[32], const FragA (&a)[32], const FragB (&b)[32]) {
  float A[16][16], B[16][8], C[16][8];
  int seenA[16][16] = {}, seenB[16][8] = {}, seenC[16][8] = {};
  for (int lane = 0; lane < 32; lane++) {
    const int groupID = lane >> 2, tig = lane % 4;
    for (int i = 0; i < 8; i++) {   // A: row = groupID for a0,a1,a4,a5 else +8; col = 2·tig + (i&1), +8 for i >= 4
      const int row = (i < 2 || (i >= 4 && i < 6)) ? groupID : groupID + 8;
      const int col = i < 4 ? tig * 2 + (i & 1) : tig * 2 + (i & 1) + 8;
      A[row][col] = a[lane].r[i / 2][i % 2];
      seenA[row][col]++;
    }
    for (int i = 0; i < 4; i++) {   // B: row = 2·tig + (i&1), +8 for i >= 2; col = groupID
      const int row = i < 2 ? tig * 2 + (i & 1) : tig * 2 + (i & 1) + 8;
      B[row][groupID] = b[lane].r[i / 2][i % 2];
      seenB[row][groupID]++;
    }
    for (int i = 0; i < 4; i++) {   // C: row = groupID, +8 for i >= 2; col = 2·tig + (i&1)
      const int row = i < 2 ? groupID : groupID + 8, col = tig * 2 + (i & 1);
      C[row][col] = c[lane].c[i];
      seenC[row][col]++;
    }
  }
  for (int i = 0; i < 16; i++)
    for (int j = 0; j < 16; j++) EXPECT(seenA[i][j] == 1, "A(%d,%d) held by %d lanes", i, j, seenA[i][j]);
  for (int i = 0; i < 16; i++)
    for (int j = 0; j < 8; j++) {
      EXPECT(seenB[i][j] == 1, "B(%d,%d) held by %d lanes", i, j, seenB[i][j]);
      EXPECT(seenC[i][j] == 1, "C(%d,%d) held by %d lanes", i, j, seenC[i][j]);
    }
  float D[16][8];
  for (int i = 0; i < 16; i++)
    for (int j = 0; j < 8; j++) {
      double s = C[i][j];
      for (int k = 0; k < 16; k++) s += (double)A[i][k] * B[k][j];
      D[i][j] = (float)s;
    }
  for (int lane = 0; lane < 32; lane++) {
    const int groupID = lane >> 2, tig = lane % 4;
    for (int i = 0; i < 4; i++) c[lane].c[i] = D[i < 2 ? groupID : groupID + 8][tig * 2 + (i & 1)];
  }
}

// ldmatrix.m8n8.x4.b16: lanes 8m..8m+7 give the addresses (element offsets into smem) of rows 0..7
// of matrix m, each row 8 consecutive b16 (16 bytes, 16-byte aligned). Register m of lane l gets
// (row l>>2, cols 2(l%4), 2(l%4)+1) of matrix m; with .trans the matrix is read column-major:
// (rows 2(l%4), 2(l%4)+1, col l>>2).
void hw_ldsm_x4(const std::vector<float>& smem, const int (&addr)[32], bool trans, float (&out)[32][4][2]) {
  for (int l = 0; l < 32; l++) {
    EXPECT(addr[l] % 8 == 0, "ldmatrix row address of lane %d not 16-byte aligned (%d)", l, addr[l]);
    EXPECT(addr[l] >= 0 && addr[l] + 8 <= (int)smem.size(), "ldmatrix row of lane %d out of the tile", l);
  }
  for (int m = 0; m < 4; m++)
    for (int l = 0; l < 32; l++)
      for (int h = 0; h < 2; h++) {
        const int r = l >> 2, c = 2 * (l % 4) + h;
        out[l][m][h] = trans ? smem[addr[8 * m + c] + r] : smem[addr[8 * m + r] + c];
      }
}

// A 32-bit shared load (the kernels' lds32): the pair at element offset off, off+1 (4-byte aligned).
void lds32(const std::vector<float>& smem, int off, float (&out)[2]) {
  EXPECT(off % 2 == 0, "lds32 at odd element offset %d", off);
  EXPECT(off >= 0 && off + 2 <= (int)smem.size(), "lds32 at %d out of the tile", off);
  out[0] = smem[off];
  out[1] = smem[off + 1];
}

// ------------------------------------------------------------------------------------------

std::mt19937 g_rng(1234);
std::vector<float> random_tile(int rows, int ld, int cols) {   // values in {-3..3}; padding NaN
  std::uniform_int_distribution<int> d(-3, 3);
  std::vector<float> t((size_t)rows * ld, std::nanf(""));
  for (int r = 0; r < rows; r++)
    for (int c = 0; c < cols; c++) t[(size_t)r * ld + c] = (float)d(g_rng);
  return t;
}

// Identities the kernels rely on when they spell an index as "element 0 + constant".
void test_helper_identities() {
  for (int lane = 0; lane < 32; lane++) {
    for (int e = 0; e < 4; e++) {
      EXPECT(mma::c_row(lane, e) == mma::c_row(lane, 0) + 8 * (e >> 1), "c_row lane %d e %d", lane, e);
      EXPECT(mma::c_col(lane, e) == mma::c_col(lane, 0) + (e & 1), "c_col lane %d e %d", lane, e);
    }
    for (int ld : {72, 136})
      for (int r = 0; r < 4; r++)
        EXPECT(mma::a_off(lane, r, ld) == mma::a_off(lane, 0, ld) + (r & 1) * 8 * ld + (r >> 1) * 8, "a_off");
  }
}

// ---- forward: one CTA's 4 warps over a 64-row Q tile, one 64-key K/V tile ----
template <int D>
void test_forward() {
  constexpr int Br = 64, Bc = 64, LD = D + 8, KS = D / 16, NO = D / 8;
  const std::vector<float> Qs = random_tile(Br, LD, D), Ks = random_tile(Bc, LD, D), Vs = random_tile(Bc, LD, D);
  // naive S = Q·Kᵀ and O = S·V (S unrounded: the kernel rounds P to bf16, irrelevant for layout)
  std::vector<double> S((size_t)Br * Bc, 0.0), O((size_t)Br * D, 0.0);
  for (int i = 0; i < Br; i++)
    for (int j = 0; j < Bc; j++)
      for (int d = 0; d < D; d++) S[i * Bc + j] += (double)Qs[i * LD + d] * Ks[j * LD + d];
  for (int i = 0; i < Br; i++)
    for (int d = 0; d < D; d++)
      for (int j = 0; j < Bc; j++) O[i * D + d] += S[i * Bc + j] * Vs[j * LD + d];

  for (int w = 0; w < 4; w++) {
    // qf[ks][r] = lds32(qw + ks * 16 + mma::a_off(lane, r, LD)), qw = Ks + w * 16 * LD
    static FragA qf[KS][32];
    for (int ks = 0; ks < KS; ks++)
      for (int lane = 0; lane < 32; lane++)
        for (int r = 0; r < 4; r++) lds32(Qs, w * 16 * LD + ks * 16 + mma::a_off(lane, r, LD), qf[ks][lane].r[r]);
    // s[n] += Q·Kᵀ: kt = Ks + n * 8 * LD + ks * 16; b regs at kt + mma::b_off_nmajor(lane, 0/1, LD)
    static FragC s[Bc / 8][32];
    std::memset(s, 0, sizeof(s));
    for (int ks = 0; ks < KS; ks++)
      for (int n = 0; n < Bc / 8; n++) {
        FragB b[32];
        for (int lane = 0; lane < 32; lane++)
          for (int r = 0; r < 2; r++) lds32(Ks, n * 8 * LD + ks * 16 + mma::b_off_nmajor(lane, r, LD), b[lane].r[r]);
        hw_mma(s[n], qf[ks], b);
      }
    // mask indices: i = i0 + w * 16 + mma::c_row(lane, e), j = j0 + n * 8 + mma::c_col(lane, 0) + (e & 1)
    for (int n = 0; n < Bc / 8; n++)
      for (int lane = 0; lane < 32; lane++)
        for (int e = 0; e < 4; e++) {
          const int i = w * 16 + mma::c_row(lane, e), j = n * 8 + mma::c_col(lane, 0) + (e & 1);
          EXPECT(s[n][lane].c[e] == (float)S[i * Bc + j], "fwd D=%d S(%d,%d): %g vs %g", D, i, j, s[n][lane].c[e],
                 S[i * Bc + j]);
        }
    // O += P·V: pa[r] = pair of s[2kk + acc_tile(r)][acc_elem(r)]; V via ldsm_x4_trans at
    // Vs + kk * 16 * LD + n2 * 16 + mma::ldsm_x4t_off(lane, LD) -> (b0, b1) for o[2n2], (b2, b3) for o[2n2+1]
    static FragC o[NO][32];
    std::memset(o, 0, sizeof(o));
    for (int kk = 0; kk < Bc / 16; kk++) {
      FragA pa[32];
      for (int lane = 0; lane < 32; lane++)
        for (int r = 0; r < 4; r++) {
          const int t = 2 * kk + mma::acc_tile(r), e = mma::acc_elem(r);
          pa[lane].r[r][0] = s[t][lane].c[e];
          pa[lane].r[r][1] = s[t][lane].c[e + 1];
        }
      for (int n2 = 0; n2 < D / 16; n2++) {
        int addr[32];
        for (int lane = 0; lane < 32; lane++) addr[lane] = kk * 16 * LD + n2 * 16 + mma::ldsm_x4t_off(lane, LD);
        float regs[32][4][2];
        hw_ldsm_x4(Vs, addr, true, regs);
        FragB b01[32], b23[32];
        for (int lane = 0; lane < 32; lane++)
          for (int h = 0; h < 2; h++) {
            b01[lane].r[0][h] = regs[lane][0][h]; b01[lane].r[1][h] = regs[lane][1][h];
            b23[lane].r[0][h] = regs[lane][2][h]; b23[lane].r[1][h] = regs[lane][3][h];
          }
        hw_mma(o[2 * n2], pa, b01);
        hw_mma(o[2 * n2 + 1], pa, b23);
      }
    }
    // output: row i0 + w * 16 + mma::c_row(lane, 0) + r * 8, cols n * 8 + mma::c_col(lane, 0) + {0, 1} <- o[n][2r], o[n][2r+1]
    for (int n = 0; n < NO; n++)
      for (int lane = 0; lane < 32; lane++)
        for (int r = 0; r < 2; r++)
          for (int h = 0; h < 2; h++) {
            const int i = w * 16 + mma::c_row(lane, 0) + r * 8, d = n * 8 + mma::c_col(lane, 0) + h;
            EXPECT(o[n][lane].c[2 * r + h] == (float)O[i * D + d], "fwd D=%d O(%d,%d): %g vs %g", D, i, d,
                   o[n][lane].c[2 * r + h], O[i * D + d]);
          }
  }
}

// ---- backward: one CTA (4 warps × 16 keys) over one 64-key block and one Br-query block ----
template <int D, int Br>
void test_backward() {
  constexpr int Bc = 64, LD = D + 8, LDS = Bc + 8, KS = D / 16, NO = D / 8, NQ = Br / 8;
  const std::vector<float> Ks = random_tile(Bc, LD, D), Vs = random_tile(Bc, LD, D), Qs = random_tile(Br, LD, D),
                           dOs = random_tile(Br, LD, D);
  // naive: St = K·Qᵀ (Bc × Br, used as Pᵀ), dPt = V·dOᵀ, dV = Pᵀ·dO, dSt = St ∘ dPt (layout stand-in for
  // Pᵀ ∘ (dPᵀ − D)), dK = dSt·Q, dQ = dS·K = dStᵀ·K
  std::vector<double> St((size_t)Bc * Br, 0.0), dPt((size_t)Bc * Br, 0.0), dSt((size_t)Bc * Br), dV((size_t)Bc * D, 0.0),
      dK((size_t)Bc * D, 0.0), dQ((size_t)Br * D, 0.0);
  for (int j = 0; j < Bc; j++)
    for (int i = 0; i < Br; i++)
      for (int d = 0; d < D; d++) {
        St[j * Br + i] += (double)Ks[j * LD + d] * Qs[i * LD + d];
        dPt[j * Br + i] += (double)Vs[j * LD + d] * dOs[i * LD + d];
      }
  for (size_t x = 0; x < dSt.size(); x++) dSt[x] = St[x] * dPt[x];
  for (int j = 0; j < Bc; j++)
    for (int d = 0; d < D; d++)
      for (int i = 0; i < Br; i++) {
        dV[j * D + d] += St[j * Br + i] * dOs[i * LD + d];
        dK[j * D + d] += dSt[j * Br + i] * Qs[i * LD + d];
      }
  for (int i = 0; i < Br; i++)
    for (int d = 0; d < D; d++)
      for (int j = 0; j < Bc; j++) dQ[i * D + d] += dSt[j * Br + i] * Ks[j * LD + d];

  std::vector<float> dSs((size_t)Br * LDS, std::nanf(""));
  for (int w = 0; w < 4; w++) {
    const int kw = w * 16;
    // st[n] = K·Qᵀ: a[r] = lds32(Ks + kw * LD + ks * 16 + mma::a_off(lane, r, LD));
    // bt = Qs + n * 8 * LD + ks * 16, b regs at bt + mma::b_off_nmajor(lane, 0/1, LD). dp likewise from Vs, dOs.
    static FragC st[NQ][32], dp[NQ][32];
    std::memset(st, 0, sizeof(st));
    std::memset(dp, 0, sizeof(dp));
    for (int ks = 0; ks < KS; ks++) {
      FragA a[32], av[32];
      for (int lane = 0; lane < 32; lane++)
        for (int r = 0; r < 4; r++) {
          lds32(Ks, kw * LD + ks * 16 + mma::a_off(lane, r, LD), a[lane].r[r]);
          lds32(Vs, kw * LD + ks * 16 + mma::a_off(lane, r, LD), av[lane].r[r]);
        }
      for (int n = 0; n < NQ; n++) {
        FragB b[32], bd[32];
        for (int lane = 0; lane < 32; lane++)
          for (int r = 0; r < 2; r++) {
            lds32(Qs, n * 8 * LD + ks * 16 + mma::b_off_nmajor(lane, r, LD), b[lane].r[r]);
            lds32(dOs, n * 8 * LD + ks * 16 + mma::b_off_nmajor(lane, r, LD), bd[lane].r[r]);
          }
        hw_mma(st[n], a, b);
        hw_mma(dp[n], av, bd);
      }
    }
    // qc = n * 8 + mma::c_col(lane, e), kr = kw + mma::c_row(lane, e); dS into shared memory at dSs[qc * LDS + kr]
    for (int n = 0; n < NQ; n++)
      for (int lane = 0; lane < 32; lane++)
        for (int e = 0; e < 4; e++) {
          const int qc = n * 8 + mma::c_col(lane, e), kr = kw + mma::c_row(lane, e);
          EXPECT(st[n][lane].c[e] == (float)St[kr * Br + qc], "bwd D=%d Sᵀ(%d,%d)", D, kr, qc);
          EXPECT(dp[n][lane].c[e] == (float)dPt[kr * Br + qc], "bwd D=%d dPᵀ(%d,%d)", D, kr, qc);
          dp[n][lane].c[e] = st[n][lane].c[e] * dp[n][lane].c[e];   // ds
          dSs[(size_t)qc * LDS + kr] = dp[n][lane].c[e];
        }
    // dV += Pᵀ·dO and dK += dSᵀ·Q: A from the accumulators (acc_tile/acc_elem), B via ldsm_x4_trans at
    // dOs|Qs + kk * 16 * LD + n2 * 16 + mma::ldsm_x4t_off(lane, LD)
    static FragC dva[NO][32], dka[NO][32];
    std::memset(dva, 0, sizeof(dva));
    std::memset(dka, 0, sizeof(dka));
    for (int kk = 0; kk < Br / 16; kk++) {
      FragA pa[32], da[32];
      for (int lane = 0; lane < 32; lane++)
        for (int r = 0; r < 4; r++) {
          const int t = 2 * kk + mma::acc_tile(r), e = mma::acc_elem(r);
          for (int h = 0; h < 2; h++) {
            pa[lane].r[r][h] = st[t][lane].c[e + h];
            da[lane].r[r][h] = dp[t][lane].c[e + h];
          }
        }
      for (int n2 = 0; n2 < D / 16; n2++) {
        int addr[32];
        for (int lane = 0; lane < 32; lane++) addr[lane] = kk * 16 * LD + n2 * 16 + mma::ldsm_x4t_off(lane, LD);
        for (int which = 0; which < 2; which++) {
          float regs[32][4][2];
          hw_ldsm_x4(which ? Qs : dOs, addr, true, regs);
          FragB b01[32], b23[32];
          for (int lane = 0; lane < 32; lane++)
            for (int h = 0; h < 2; h++) {
              b01[lane].r[0][h] = regs[lane][0][h]; b01[lane].r[1][h] = regs[lane][1][h];
              b23[lane].r[0][h] = regs[lane][2][h]; b23[lane].r[1][h] = regs[lane][3][h];
            }
          auto& acc = which ? dka : dva;
          hw_mma(acc[2 * n2], which ? da : pa, b01);
          hw_mma(acc[2 * n2 + 1], which ? da : pa, b23);
        }
      }
    }
    // dK/dV rows j0 + kw + mma::c_row(lane, 0) + r * 8, cols n * 8 + mma::c_col(lane, 0) + {0, 1}
    for (int n = 0; n < NO; n++)
      for (int lane = 0; lane < 32; lane++)
        for (int r = 0; r < 2; r++)
          for (int h = 0; h < 2; h++) {
            const int j = kw + mma::c_row(lane, 0) + r * 8, d = n * 8 + mma::c_col(lane, 0) + h;
            EXPECT(dva[n][lane].c[2 * r + h] == (float)dV[j * D + d], "bwd D=%d dV(%d,%d)", D, j, d);
            EXPECT(dka[n][lane].c[2 * r + h] == (float)dK[j * D + d], "bwd D=%d dK(%d,%d)", D, j, d);
          }
  }
  // the transposed store filled dS (Br × Bc) completely
  for (int i = 0; i < Br; i++)
    for (int j = 0; j < Bc; j++)
      EXPECT(dSs[(size_t)i * LDS + j] == (float)dSt[j * Br + i], "bwd D=%d dS(%d,%d) in shared memory", D, i, j);

  // dQ(Br × D) = dS·K: warp w takes row tile w % RT and NPW column tiles from (w / RT) * NPW;
  // a[r] = lds32(dSs + rt * 16 * LDS + kk * 16 + mma::a_off(lane, r, LDS));
  // K via ldsm_x4_trans(Ks + kk * 16 * LD + ncol + mma::ldsm_x4t_off(lane, LD))
  constexpr int RT = Br / 16, NPW = NO * RT / 4;
  std::vector<int> made((size_t)Br * D, 0);
  for (int w = 0; w < 4; w++) {
    const int rt = w % RT, nbase = (w / RT) * NPW;
    for (int np = 0; np < NPW / 2; np++) {
      const int ncol = (nbase + 2 * np) * 8;
      FragC acc[2][32];
      std::memset(acc, 0, sizeof(acc));
      for (int kk = 0; kk < Bc / 16; kk++) {
        FragA a[32];
        for (int lane = 0; lane < 32; lane++)
          for (int r = 0; r < 4; r++) lds32(dSs, rt * 16 * LDS + kk * 16 + mma::a_off(lane, r, LDS), a[lane].r[r]);
        int addr[32];
        for (int lane = 0; lane < 32; lane++) addr[lane] = kk * 16 * LD + ncol + mma::ldsm_x4t_off(lane, LD);
        float regs[32][4][2];
        hw_ldsm_x4(Ks, addr, true, regs);
        FragB b01[32], b23[32];
        for (int lane = 0; lane < 32; lane++)
          for (int h = 0; h < 2; h++) {
            b01[lane].r[0][h] = regs[lane][0][h]; b01[lane].r[1][h] = regs[lane][1][h];
            b23[lane].r[0][h] = regs[lane][2][h]; b23[lane].r[1][h] = regs[lane][3][h];
          }
        hw_mma(acc[0], a, b01);
        hw_mma(acc[1], a, b23);
      }
      // i = i0 + rt * 16 + mma::c_row(lane, 0) + r * 8; dst = ... + ncol + mma::c_col(lane, 0), + half * 8 (+1)
      for (int lane = 0; lane < 32; lane++)
        for (int r = 0; r < 2; r++)
          for (int half = 0; half < 2; half++)
            for (int h = 0; h < 2; h++) {
              const int i = rt * 16 + mma::c_row(lane, 0) + r * 8, d = ncol + mma::c_col(lane, 0) + half * 8 + h;
              EXPECT(acc[half][lane].c[2 * r + h] == (float)dQ[i * D + d], "bwd D=%d Br=%d dQ(%d,%d)", D, Br, i, d);
              made[(size_t)i * D + d]++;
            }
    }
  }
  for (int x = 0; x < Br * D; x++) EXPECT(made[x] == 1, "bwd D=%d Br=%d dQ element %d made %d times", D, Br, x, made[x]);
}

}  // namespace

int main() {
  test_helper_identities();
  test_forward<64>();
  test_forward<128>();
  test_backward<64, 64>();    // launch_bwd_mma: Br = D == 128 ? 32 : 64
  test_backward<128, 32>();
  return pktest::finish("mma_frag_test");
}
