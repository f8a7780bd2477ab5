/**
 * lora/linalg.ts — the small f64 linear algebra PiSSA and OLoRA initialisation need.
 *
 * - householderQr: the first r columns of Q and rows of R of W = QR, with LAPACK's (geqrf, hence
 *   torch.linalg.qr's) sign convention: R's diagonal is −sign(a)·‖a‖ for each reflected column.
 * - topSvd: the r leading singular triplets of W. The Gram matrix of the smaller side is formed
 *   with the native f64 GEMM; its eigenvectors come from cyclic Jacobi (small sides, exact to
 *   rounding) or from subspace iteration + Rayleigh–Ritz (large sides). Singular vectors are
 *   defined up to sign, as with any SVD; B·A (what PiSSA's merged weight depends on) is not.
 */
import { matmul } from '../../ops/matmul';
import { Tensor } from '../../tensor/tensor';

/** W (m×n, row-major) → Q (m×r, row-major) and R (r×n, row-major). */
export function householderQr(W: Float64Array, m: number, n: number, r: number): { Q: Float64Array; R: Float64Array } {
  if (r > Math.min(m, n)) throw new RangeError(`olora: r = ${r} exceeds min(out, in) = ${Math.min(m, n)}`);
  const a = Float64Array.from(W);
  const vs: Float64Array[] = [], taus: number[] = [];
  for (let j = 0; j < r; j++) {
    const alpha = a[j * n + j];
    let xn = 0;
    for (let i = j + 1; i < m; i++) xn += a[i * n + j] * a[i * n + j];
    xn = Math.sqrt(xn);
    const v = new Float64Array(m - j);
    v[0] = 1;
    let tau = 0;
    if (xn === 0) {
      tau = 0;
    } else {
      const beta = -(alpha >= 0 ? 1 : -1) * Math.hypot(alpha, xn);
      tau = (beta - alpha) / beta;
      const sc = 1 / (alpha - beta);
      for (let i = j + 1; i < m; i++) v[i - j] = a[i * n + j] * sc;
      // apply H = I − tau·v·vᵀ to columns j..n-1 (rows j..m-1)
      for (let c = j; c < n; c++) {
        let d = 0;
        for (let i = j; i < m; i++) d += v[i - j] * a[i * n + c];
        d *= tau;
        for (let i = j; i < m; i++) a[i * n + c] -= d * v[i - j];
      }
      a[j * n + j] = beta;
      for (let i = j + 1; i < m; i++) a[i * n + j] = 0;
    }
    vs.push(v); taus.push(tau);
  }
  const R = new Float64Array(r * n);
  for (let i = 0; i < r; i++) for (let c = i; c < n; c++) R[i * n + c] = a[i * n + c];
  // Q[:, :r] = H_0 … H_{r−1} [I_r; 0]
  const Q = new Float64Array(m * r);
  for (let k = 0; k < r; k++) Q[k * r + k] = 1;
  for (let j = r - 1; j >= 0; j--) {
    const v = vs[j], tau = taus[j];
    if (tau === 0) continue;
    for (let c = 0; c < r; c++) {
      let d = 0;
      for (let i = j; i < m; i++) d += v[i - j] * Q[i * r + c];
      d *= tau;
      for (let i = j; i < m; i++) Q[i * r + c] -= d * v[i - j];
    }
  }
  return { Q, R };
}

/** Eigen-decomposition of a symmetric d×d matrix by cyclic Jacobi: values descending, vectors as columns. */
export function jacobiEigen(G: Float64Array, d: number): { values: Float64Array; vectors: Float64Array } {
  const a = Float64Array.from(G);
  const v = new Float64Array(d * d);
  for (let i = 0; i < d; i++) v[i * d + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0, diag = 0;
    for (let i = 0; i < d; i++) {
      diag += a[i * d + i] * a[i * d + i];
      for (let j = i + 1; j < d; j++) off += a[i * d + j] * a[i * d + j];
    }
    if (off <= 1e-30 * diag || off === 0) break;
    for (let p = 0; p < d - 1; p++) {
      for (let q = p + 1; q < d; q++) {
        const apq = a[p * d + q];
        if (apq === 0) continue;
        const app = a[p * d + p], aqq = a[q * d + q];
        const theta = (aqq - app) / (2 * apq);
        const t = (theta >= 0 ? 1 : -1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1), s = t * c;
        for (let k = 0; k < d; k++) {
          const akp = a[k * d + p], akq = a[k * d + q];
          a[k * d + p] = c * akp - s * akq;
          a[k * d + q] = s * akp + c * akq;
        }
        for (let k = 0; k < d; k++) {
          const apk = a[p * d + k], aqk = a[q * d + k];
          a[p * d + k] = c * apk - s * aqk;
          a[q * d + k] = s * apk + c * aqk;
        }
        for (let k = 0; k < d; k++) {
          const vkp = v[k * d + p], vkq = v[k * d + q];
          v[k * d + p] = c * vkp - s * vkq;
          v[k * d + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  const order = Array.from({ length: d }, (_, i) => i).sort((x, y) => a[y * d + y] - a[x * d + x]);
  const values = new Float64Array(d), vectors = new Float64Array(d * d);
  order.forEach((src, dst) => {
    values[dst] = a[src * d + src];
    for (let k = 0; k < d; k++) vectors[k * d + dst] = v[k * d + src];
  });
  return { values, vectors };
}

function f64mm(a: Float64Array, ash: [number, number], b: Float64Array, bsh: [number, number], transA = false, transB = false): Float64Array {
  const A = Tensor.fromArray(a, { shape: ash, dtype: 'f64' });
  const B = Tensor.fromArray(b, { shape: bsh, dtype: 'f64' });
  const C = matmul(A, B, { transA, transB });
  const out = C.toFloat64Array();
  A.dispose(); B.dispose(); C.dispose();
  return out;
}

/** Orthonormalise the k columns of X (d×k, row-major) in place (modified Gram–Schmidt, twice). */
function orthonormalize(X: Float64Array, d: number, k: number): void {
  for (let pass = 0; pass < 2; pass++) {
    for (let j = 0; j < k; j++) {
      for (let i = 0; i < j; i++) {
        let dot = 0;
        for (let t = 0; t < d; t++) dot += X[t * k + i] * X[t * k + j];
        for (let t = 0; t < d; t++) X[t * k + j] -= dot * X[t * k + i];
      }
      let nrm = 0;
      for (let t = 0; t < d; t++) nrm += X[t * k + j] * X[t * k + j];
      nrm = Math.sqrt(nrm) || 1;
      for (let t = 0; t < d; t++) X[t * k + j] /= nrm;
    }
  }
}

/** Leading r eigenpairs of the symmetric PSD d×d matrix G: vectors d×r (columns), values r. */
function topEigen(G: Float64Array, d: number, r: number): { values: Float64Array; vectors: Float64Array } {
  if (d <= 320) {
    const e = jacobiEigen(G, d);
    const vec = new Float64Array(d * r);
    for (let t = 0; t < d; t++) for (let j = 0; j < r; j++) vec[t * r + j] = e.vectors[t * d + j];
    return { values: e.values.slice(0, r), vectors: vec };
  }
  const k = Math.min(d, r + 16);
  let X = new Float64Array(d * k);
  let s = 12345;
  for (let i = 0; i < X.length; i++) { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; X[i] = s / 2 ** 31 - 1; }
  orthonormalize(X, d, k);
  for (let it = 0; it < 60; it++) {
    X = f64mm(G, [d, d], X, [d, k]);
    orthonormalize(X, d, k);
  }
  const GX = f64mm(G, [d, d], X, [d, k]);
  const H = f64mm(X, [d, k], GX, [d, k], true, false);  // k×k
  const e = jacobiEigen(H, k);
  const Y = new Float64Array(k * r);
  for (let t = 0; t < k; t++) for (let j = 0; j < r; j++) Y[t * r + j] = e.vectors[t * k + j];
  return { values: e.values.slice(0, r), vectors: f64mm(X, [d, k], Y, [k, r]) };
}

/** r leading singular triplets of W (m×n row-major): U m×r, S r (descending), V n×r. */
export function topSvd(W: Float64Array, m: number, n: number, r: number): { U: Float64Array; S: Float64Array; V: Float64Array } {
  if (r > Math.min(m, n)) throw new RangeError(`pissa: r = ${r} exceeds min(out, in) = ${Math.min(m, n)}`);
  const useRight = n <= m;  // Gram of the smaller side
  const d = useRight ? n : m;
  const G = useRight ? f64mm(W, [m, n], W, [m, n], true, false) : f64mm(W, [m, n], W, [m, n], false, true);
  const { values, vectors } = topEigen(G, d, r);
  const S = new Float64Array(r);
  for (let j = 0; j < r; j++) S[j] = Math.sqrt(Math.max(values[j], 0));
  // the other side: U = W·V/σ (or V = Wᵀ·U/σ)
  const other = useRight ? f64mm(W, [m, n], vectors, [n, r]) : f64mm(W, [m, n], vectors, [m, r], true, false);
  const od = useRight ? m : n;
  for (let j = 0; j < r; j++) {
    const inv = S[j] > 0 ? 1 / S[j] : 0;
    for (let t = 0; t < od; t++) other[t * r + j] *= inv;
  }
  return useRight ? { U: other, S, V: vectors } : { U: vectors, S, V: other };
}
