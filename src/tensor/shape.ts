/**
 * Shape helpers shared by the tensor and op modules: formatting, element counts, NumPy
 * broadcasting and axis normalisation.
 * @module
 */

/** Formats a shape as "[2,16,8,8,8]". */
export function formatShape(shape: readonly number[]): string {
  return `[${shape.join(",")}]`;
}

/** Number of elements of a shape (1 for the scalar shape []). */
export function sizeOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** True when both shapes have the same rank and dims. */
export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Checks that a shape has non-negative integer dims and at most 6 of them. */
export function checkShape(shape: readonly number[], what: string): void {
  if (!Array.isArray(shape)) throw new Error(`${what}: shape must be an array of integers`);
  if (shape.length > 6) {
    throw new Error(
      `${what}: shape ${formatShape(shape)} has ${shape.length} dims, at most 6 are supported`,
    );
  }
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) {
      throw new Error(
        `${what}: shape ${formatShape(shape)} has a dim that is not a non-negative integer`,
      );
    }
  }
}

/** NumPy broadcast of two shapes (right-aligned); null when they do not broadcast. */
export function broadcastShapes(a: readonly number[], b: readonly number[]): number[] | null {
  const n = Math.max(a.length, b.length);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const da = i < n - a.length ? 1 : a[i - (n - a.length)];
    const db = i < n - b.length ? 1 : b[i - (n - b.length)];
    if (da === db || db === 1) out[i] = da;
    else if (da === 1) out[i] = db;
    else return null;
  }
  return out;
}

/** True when `from` broadcasts to exactly `to`. */
export function broadcastsTo(from: readonly number[], to: readonly number[]): boolean {
  if (from.length > to.length) return false;
  const off = to.length - from.length;
  for (let i = 0; i < from.length; i++) {
    if (from[i] !== 1 && from[i] !== to[i + off]) return false;
  }
  return true;
}

/** Normalises a possibly negative axis against a rank; throws naming the op when out of range. */
export function normAxis(axis: number, rank: number, what: string): number {
  if (!Number.isInteger(axis) || axis < -rank || axis >= rank) {
    throw new Error(`${what}: axis ${axis} is out of range for a tensor of rank ${rank}`);
  }
  return axis < 0 ? axis + rank : axis;
}

/** Expands a number or a [d,h,w] triple to a triple of integers. */
export function triple(v: number | readonly number[], what: string): [number, number, number] {
  const t = typeof v === "number" ? [v, v, v] : [...v];
  if (t.length !== 3 || !t.every((x) => Number.isInteger(x))) {
    throw new Error(`${what}: expected an integer or [d,h,w], got ${JSON.stringify(v)}`);
  }
  return [t[0], t[1], t[2]];
}
