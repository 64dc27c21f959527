/**
 * A small scene rasteriser for synthetic phantoms: tissues painted in order (later shapes win),
 * each shape an ellipsoid (optionally wobbly, clipped by a plane, restricted to a tissue or to an
 * angular sector) or a tube along a segment. Images are rendered per modality on that modality's own
 * grid, with partial volume from sub-samples across the slice, an in-plane blur, a smooth bias field
 * and noise; labels come from the voxel centres.
 */
import { apply4, type Mat3, type Mat4, type Vec3 } from "./affine.ts";
import type { Rng } from "./rng.ts";

export interface Shape {
  kind: "ellipsoid" | "tube";
  tissue: string;
  /** Ellipsoid: centre; tube: start point (world mm). */
  centre: Vec3;
  /** Ellipsoid semi-axes in its local frame (mm). */
  radii?: Vec3;
  /** World -> local rotation (rows are the local axes in world coordinates). */
  rot?: Mat3;
  /** Tube: end point and radius. */
  end?: Vec3;
  radius?: number;
  /** Radial wobble as a function of the local azimuth: sum of amp * cos(k * phi + phase). */
  wobble?: { k: number; amp: number; phase: number }[];
  /** Keep only local points with local[axis] * sign <= offset (mm). */
  clip?: { axis: number; sign: 1 | -1; offset: number };
  /** Paint only where the current tissue is this one. */
  onlyIn?: string;
  /** Restrict to local azimuth within [from, to] (radians, may wrap). */
  sector?: [number, number];
}

export interface Scene {
  shapes: Shape[];
  /** Tissue name -> label value in the label files (missing: 0). */
  labels: Record<string, number>;
}

/** A shape flattened into plain numbers (one hidden class for every shape keeps the hot loop fast). */
class Compiled {
  tube = false;
  cx = 0;
  cy = 0;
  cz = 0;
  lo0 = 0;
  lo1 = 0;
  lo2 = 0;
  hi0 = 0;
  hi1 = 0;
  hi2 = 0;
  r0 = 1;
  r1 = 0;
  r2 = 0;
  r3 = 0;
  r4 = 1;
  r5 = 0;
  r6 = 0;
  r7 = 0;
  r8 = 1;
  i0 = 1;
  i1 = 1;
  i2 = 1;
  wob = 0;
  wk: Float64Array = new Float64Array(0);
  wa: Float64Array = new Float64Array(0);
  wp: Float64Array = new Float64Array(0);
  clipAxis = -1;
  clipSign = 1;
  clipOffset = 0;
  sector = false;
  sec0 = 0;
  secW = 0;
  tissue = 0;
  only = -1;
  d0 = 0;
  d1 = 0;
  d2 = 0;
  len2 = 1;
  rad2 = 0;
}

function compile(scene: Scene, tissues: string[]): Compiled[] {
  return scene.shapes.map((s) => {
    const c = new Compiled();
    c.tissue = tissues.indexOf(s.tissue);
    c.only = s.onlyIn ? tissues.indexOf(s.onlyIn) : -1;
    [c.cx, c.cy, c.cz] = s.centre;
    if (s.kind === "tube") {
      const e = s.end!, r = s.radius!;
      c.tube = true;
      c.d0 = e[0] - s.centre[0];
      c.d1 = e[1] - s.centre[1];
      c.d2 = e[2] - s.centre[2];
      c.len2 = Math.max(1e-12, c.d0 ** 2 + c.d1 ** 2 + c.d2 ** 2);
      c.rad2 = r * r;
      [c.lo0, c.lo1, c.lo2] = [0, 1, 2].map((i) => Math.min(s.centre[i], e[i]) - r);
      [c.hi0, c.hi1, c.hi2] = [0, 1, 2].map((i) => Math.max(s.centre[i], e[i]) + r);
      return c;
    }
    const w = s.wobble ?? [];
    c.wob = w.reduce((a, x) => a + Math.abs(x.amp), 0);
    c.wk = Float64Array.from(w.map((x) => x.k));
    c.wa = Float64Array.from(w.map((x) => x.amp));
    c.wp = Float64Array.from(w.map((x) => x.phase));
    const rmax = Math.max(...s.radii!) * (1 + c.wob);
    [c.lo0, c.lo1, c.lo2] = s.centre.map((v) => v - rmax);
    [c.hi0, c.hi1, c.hi2] = s.centre.map((v) => v + rmax);
    const r = s.rot ?? [1, 0, 0, 0, 1, 0, 0, 0, 1];
    [c.r0, c.r1, c.r2, c.r3, c.r4, c.r5, c.r6, c.r7, c.r8] = r;
    [c.i0, c.i1, c.i2] = s.radii!.map((v) => 1 / v);
    if (s.clip) {
      c.clipAxis = s.clip.axis;
      c.clipSign = s.clip.sign;
      c.clipOffset = s.clip.offset;
    }
    if (s.sector) {
      c.sector = true;
      c.sec0 = s.sector[0];
      c.secW = s.sector[1] - s.sector[0];
    }
    return c;
  });
}

const TWO_PI = 2 * Math.PI;

function inside(c: Compiled, x: number, y: number, z: number): boolean {
  if (x < c.lo0 || x > c.hi0 || y < c.lo1 || y > c.hi1 || z < c.lo2 || z > c.hi2) return false;
  const px = x - c.cx, py = y - c.cy, pz = z - c.cz;
  if (c.tube) {
    let t = (px * c.d0 + py * c.d1 + pz * c.d2) / c.len2;
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    const dx = px - t * c.d0, dy = py - t * c.d1, dz = pz - t * c.d2;
    return dx * dx + dy * dy + dz * dz <= c.rad2;
  }
  const lx = c.r0 * px + c.r1 * py + c.r2 * pz;
  const ly = c.r3 * px + c.r4 * py + c.r5 * pz;
  const lz = c.r6 * px + c.r7 * py + c.r8 * pz;
  if (c.clipAxis >= 0) {
    const v = c.clipAxis === 0 ? lx : c.clipAxis === 1 ? ly : lz;
    if (v * c.clipSign > c.clipOffset) return false;
  }
  const ux = lx * c.i0, uy = ly * c.i1, uz = lz * c.i2;
  const d2 = ux * ux + uy * uy + uz * uz;
  const wob = c.wob;
  if (!c.sector) {
    if (wob === 0) return d2 <= 1;
    if (d2 > (1 + wob) * (1 + wob)) return false;
    if (d2 < (1 - wob) * (1 - wob)) return true;
  } else if (d2 > (1 + wob) * (1 + wob)) return false;
  const phi = Math.atan2(ly, lx);
  if (c.sector) {
    let a = (phi - c.sec0) % TWO_PI;
    if (a < 0) a += TWO_PI;
    if (a > c.secW) return false;
  }
  let lim = 1;
  for (let k = 0; k < c.wk.length; k++) lim += c.wa[k] * Math.cos(c.wk[k] * phi + c.wp[k]);
  return d2 <= lim * lim;
}

export interface RenderOptions {
  dims: Vec3;
  /** Voxel -> world (mm) of this acquisition. */
  affine: Mat4;
  /** Tissue -> mean intensity for this modality. */
  contrast: Record<string, number>;
  /** Anatomy displacement for this acquisition (breath-hold): point p is looked up at p + shift(z). */
  shift?: (slice: number) => Vec3;
  /** Sub-samples across the slice for partial volume (default 3). */
  subSlices?: number;
  noise: number;
  /** Rician (magnitude MR) or Gaussian (CT) noise. */
  noiseKind: "rician" | "gaussian";
  /** Bias field amplitude (0 for CT). */
  bias: number;
  rng: Rng;
}

/** Renders one acquisition: intensities (Float32) and label values (Int16) on the given grid. */
export function render(scene: Scene, o: RenderOptions): { image: Float32Array; label: Int16Array } {
  const tissues = ["__background", ...new Set(scene.shapes.map((s) => s.tissue))];
  const shapes = compile(scene, tissues);
  const contrastOf = tissues.map((t) => o.contrast[t] ?? o.contrast.__background ?? 0);
  const labelOf = tissues.map((t) => scene.labels[t] ?? 0);
  const [nx, ny, nz] = o.dims;
  const n = nx * ny * nz;
  const image = new Float32Array(n);
  const label = new Int16Array(n);
  const sub = o.subSlices ?? 3;
  const a = o.affine;
  // The topmost shape containing the point wins; a shape restricted to a tissue wins only over it.
  const paintFrom = (top: number, x: number, y: number, z: number): number => {
    for (let k = top; k >= 0; k--) {
      const c = shapes[k];
      if (!inside(c, x, y, z)) continue;
      if (c.only < 0) return c.tissue;
      const below = paintFrom(k - 1, x, y, z);
      return below === c.only ? c.tissue : below;
    }
    return 0;
  };
  const last = shapes.length - 1;
  const paint = (x: number, y: number, z: number) => paintFrom(last, x, y, z);
  for (let k = 0; k < nz; k++) {
    const sh = o.shift ? o.shift(k) : [0, 0, 0];
    for (let j = 0; j < ny; j++) {
      for (let i = 0; i < nx; i++) {
        let acc = 0;
        let centreT = 0;
        const bx = a[0] * i + a[1] * j + a[3] + sh[0],
          by = a[4] * i + a[5] * j + a[7] + sh[1],
          bz = a[8] * i + a[9] * j + a[11] + sh[2];
        for (let s = 0; s < sub; s++) {
          const kz = k + (sub === 1 ? 0 : (s / (sub - 1) - 0.5) * 0.8);
          const t = paint(bx + a[2] * kz, by + a[6] * kz, bz + a[10] * kz);
          acc += contrastOf[t];
          if (sub === 1 || (sub % 2 === 1 && s === (sub - 1) / 2)) centreT = t;
        }
        if (sub % 2 === 0) {
          const w = apply4(a, [i, j, k]);
          centreT = paint(w[0] + sh[0], w[1] + sh[1], w[2] + sh[2]);
        }
        const idx = (k * ny + j) * nx + i;
        image[idx] = acc / sub;
        label[idx] = labelOf[centreT];
      }
    }
  }
  // In-plane partial volume: [1 2 1]/4 along x and y.
  const tmp = new Float32Array(n);
  for (let k = 0; k < nz; k++) {
    for (let j = 0; j < ny; j++) {
      const row = (k * ny + j) * nx;
      for (let i = 0; i < nx; i++) {
        const l = image[row + (i > 0 ? i - 1 : i)], r = image[row + (i < nx - 1 ? i + 1 : i)];
        tmp[row + i] = 0.25 * l + 0.5 * image[row + i] + 0.25 * r;
      }
    }
    for (let j = 0; j < ny; j++) {
      const row = (k * ny + j) * nx,
        up = (k * ny + (j > 0 ? j - 1 : j)) * nx,
        dn = (k * ny + (j < ny - 1 ? j + 1 : j)) * nx;
      for (let i = 0; i < nx; i++) {
        image[row + i] = 0.25 * tmp[up + i] + 0.5 * tmp[row + i] + 0.25 * tmp[dn + i];
      }
    }
  }
  // Bias field (smooth, multiplicative) and noise.
  const b = [o.rng.uniform(-1, 1), o.rng.uniform(-1, 1), o.rng.uniform(-1, 1), o.rng.uniform(-1, 1)]
    .map((v) => v * o.bias);
  const rng = o.rng;
  const g1 = rng.fillNormal(new Float32Array(n), o.noise);
  const g2 = o.noiseKind === "rician" ? rng.fillNormal(new Float32Array(n), o.noise) : g1;
  for (let k = 0; k < nz; k++) {
    for (let j = 0; j < ny; j++) {
      const yy = (2 * j) / Math.max(1, ny - 1) - 1;
      for (let i = 0; i < nx; i++) {
        const xx = (2 * i) / Math.max(1, nx - 1) - 1;
        const idx = (k * ny + j) * nx + i;
        let v = image[idx] * (1 + b[0] * xx + b[1] * yy + b[2] * xx * yy + b[3] * (xx * xx - 0.5));
        if (o.noiseKind === "rician") {
          const n1 = v + g1[idx], n2 = g2[idx];
          v = Math.sqrt(n1 * n1 + n2 * n2);
        } else v += g1[idx];
        image[idx] = v;
      }
    }
  }
  return { image, label };
}
