/**
 * Small 4x4 / 3x3 matrix helpers for voxel-to-world affines. Matrices are row-major `number[]`
 * (16 entries for 4x4, 9 for 3x3). An affine maps a voxel index (x, y, z, 1) to RAS+ millimetres.
 */

export type Mat4 = number[];
export type Mat3 = number[];
export type Vec3 = [number, number, number];

export function identity4(): Mat4 {
  return [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];
}

export function mul4(a: Mat4, b: Mat4): Mat4 {
  const r = new Array<number>(16).fill(0);
  for (let i = 0; i < 4; i++) {
    for (let j = 0; j < 4; j++) {
      let s = 0;
      for (let k = 0; k < 4; k++) s += a[i * 4 + k] * b[k * 4 + j];
      r[i * 4 + j] = s;
    }
  }
  return r;
}

export function apply4(m: Mat4, p: readonly number[]): Vec3 {
  const x = p[0], y = p[1], z = p[2];
  return [
    m[0] * x + m[1] * y + m[2] * z + m[3],
    m[4] * x + m[5] * y + m[6] * z + m[7],
    m[8] * x + m[9] * y + m[10] * z + m[11],
  ];
}

export function det3(m: Mat3): number {
  return m[0] * (m[4] * m[8] - m[5] * m[7]) - m[1] * (m[3] * m[8] - m[5] * m[6]) +
    m[2] * (m[3] * m[7] - m[4] * m[6]);
}

export function inv3(m: Mat3): Mat3 {
  const d = det3(m);
  if (!Number.isFinite(d) || Math.abs(d) < 1e-20) {
    throw new Error(`Cannot invert 3x3 matrix: determinant ${d}`);
  }
  const i = 1 / d;
  return [
    (m[4] * m[8] - m[5] * m[7]) * i,
    (m[2] * m[7] - m[1] * m[8]) * i,
    (m[1] * m[5] - m[2] * m[4]) * i,
    (m[5] * m[6] - m[3] * m[8]) * i,
    (m[0] * m[8] - m[2] * m[6]) * i,
    (m[2] * m[3] - m[0] * m[5]) * i,
    (m[3] * m[7] - m[4] * m[6]) * i,
    (m[1] * m[6] - m[0] * m[7]) * i,
    (m[0] * m[4] - m[1] * m[3]) * i,
  ];
}

export function mul3(a: Mat3, b: Mat3): Mat3 {
  const r = new Array<number>(9).fill(0);
  for (let i = 0; i < 3; i++) {
    for (let j = 0; j < 3; j++) {
      r[i * 3 + j] = a[i * 3] * b[j] + a[i * 3 + 1] * b[3 + j] + a[i * 3 + 2] * b[6 + j];
    }
  }
  return r;
}

export function transpose3(m: Mat3): Mat3 {
  return [m[0], m[3], m[6], m[1], m[4], m[7], m[2], m[5], m[8]];
}

/** The upper-left 3x3 block of an affine. */
export function linear3(m: Mat4): Mat3 {
  return [m[0], m[1], m[2], m[4], m[5], m[6], m[8], m[9], m[10]];
}

/** Builds a 4x4 affine from a 3x3 block and a translation. */
export function fromLinear(l: Mat3, t: readonly number[]): Mat4 {
  return [l[0], l[1], l[2], t[0], l[3], l[4], l[5], t[1], l[6], l[7], l[8], t[2], 0, 0, 0, 1];
}

export function inv4(m: Mat4): Mat4 {
  const li = inv3(linear3(m));
  const t = [m[3], m[7], m[11]];
  const ti = [
    -(li[0] * t[0] + li[1] * t[1] + li[2] * t[2]),
    -(li[3] * t[0] + li[4] * t[1] + li[5] * t[2]),
    -(li[6] * t[0] + li[7] * t[1] + li[8] * t[2]),
  ];
  return fromLinear(li, ti);
}

/** Voxel spacing in mm: the lengths of the affine's three columns. */
export function spacingOf(m: Mat4): Vec3 {
  return [0, 1, 2].map((j) => Math.hypot(m[j], m[4 + j], m[8 + j])) as Vec3;
}

/** Rotation matrix (3x3) from Euler angles in radians, applied as Rz * Ry * Rx. */
export function rotation3(ax: number, ay: number, az: number): Mat3 {
  const cx = Math.cos(ax), sx = Math.sin(ax);
  const cy = Math.cos(ay), sy = Math.sin(ay);
  const cz = Math.cos(az), sz = Math.sin(az);
  const rx = [1, 0, 0, 0, cx, -sx, 0, sx, cx];
  const ry = [cy, 0, sy, 0, 1, 0, -sy, 0, cy];
  const rz = [cz, -sz, 0, sz, cz, 0, 0, 0, 1];
  return mul3(rz, mul3(ry, rx));
}

/** Largest absolute difference between two matrices of equal length. */
export function maxAbsDiff(a: readonly number[], b: readonly number[]): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/**
 * Polar decomposition's orthogonal factor of a 3x3 matrix (iterating X <- (X + X^-T) / 2), used to
 * derive a quaternion from an affine that may carry a little shear.
 */
export function orthogonalize3(m: Mat3): Mat3 {
  let x = m.slice();
  for (let it = 0; it < 100; it++) {
    const xit = transpose3(inv3(x));
    const next = x.map((v, i) => 0.5 * (v + xit[i]));
    const diff = maxAbsDiff(next, x);
    x = next;
    if (diff < 1e-12) break;
  }
  return x;
}
