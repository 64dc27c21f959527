/**
 * Memory scopes (tidy) and the gradient-recording switch (noGrad).
 *
 * Every tensor created while a tidy scope is open is tracked by the innermost scope. When the
 * scope's function returns, every tracked tensor that is neither returned nor kept is disposed;
 * returned tensors move to the enclosing scope.
 * @module
 */

/** Brand of objects tidy understands (tensors). */
export const TRACKED = Symbol("comodal.tracked");

/** What a scope tracks. */
export interface Trackable {
  readonly [TRACKED]: true;
  readonly kept: boolean;
  dispose(): void;
  /** @internal the scope that owns this object (null: none) */
  _scope: Trackable[] | null;
}

const stack: Trackable[][] = [];
let gradEnabled = true;

/** @internal registers a new object with the innermost scope */
export function track(t: Trackable): void {
  const s = stack.length > 0 ? stack[stack.length - 1] : null;
  t._scope = s;
  if (s) s.push(t);
}

/** True while autograd records operations (outside noGrad). */
export function isGradEnabled(): boolean {
  return gradEnabled;
}

function isTrackable(x: unknown): x is Trackable {
  return typeof x === "object" && x !== null && (x as Record<symbol, unknown>)[TRACKED] === true;
}

function collect(x: unknown, out: Set<Trackable>, depth: number): void {
  if (depth > 6 || x === null || typeof x !== "object") return;
  if (isTrackable(x)) {
    out.add(x);
    return;
  }
  if (Array.isArray(x)) {
    for (const v of x) collect(v, out, depth + 1);
    return;
  }
  const proto = Object.getPrototypeOf(x);
  if (proto === Object.prototype || proto === null) {
    for (const v of Object.values(x as Record<string, unknown>)) collect(v, out, depth + 1);
  } else if (x instanceof Map) {
    for (const v of x.values()) collect(v, out, depth + 1);
  }
}

function disposeScope(scope: Trackable[], keep: Set<Trackable> | null): void {
  for (const t of scope) {
    if (t._scope !== scope) continue; // moved to another scope
    if (t.kept || (keep !== null && keep.has(t))) continue;
    t._scope = null;
    t.dispose();
  }
}

/**
 * Runs fn and disposes every tensor created inside it except the returned ones (a tensor, or
 * arrays / plain objects / Maps of tensors) and the kept ones. Nests. fn must be synchronous.
 */
export function tidy<T>(fn: () => T): T {
  const scope: Trackable[] = [];
  stack.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    stack.pop();
    disposeScope(scope, null);
    throw e;
  }
  stack.pop();
  if (result instanceof Promise) {
    disposeScope(scope, null);
    throw new Error("tidy: fn returned a Promise; tidy only takes synchronous functions");
  }
  const keep = new Set<Trackable>();
  collect(result, keep, 0);
  disposeScope(scope, keep);
  const parent = stack.length > 0 ? stack[stack.length - 1] : null;
  for (const t of keep) {
    if (t._scope !== scope) continue;
    t._scope = parent;
    if (parent) parent.push(t);
  }
  return result;
}

/** Runs fn without recording operations for autograd. */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/** @internal switches recording (used by backward) */
export function setGradEnabled(on: boolean): boolean {
  const prev = gradEnabled;
  gradEnabled = on;
  return prev;
}
