/** Assertion helpers for the data-pipeline tests (node:assert underneath; no @std available). */
import nodeAssert from "node:assert";

export function assert(cond: unknown, msg?: string): asserts cond {
  nodeAssert.ok(cond, msg);
}

export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  nodeAssert.deepStrictEqual(actual, expected, msg);
}

export function assertAlmostEquals(
  actual: number,
  expected: number,
  tol = 1e-7,
  msg?: string,
): void {
  if (!(Math.abs(actual - expected) <= tol)) {
    throw new Error(`${msg ? msg + ": " : ""}expected ${expected} +- ${tol}, got ${actual}`);
  }
}

function checkError(e: unknown, cls: new (...a: any[]) => Error, includes?: string): Error {
  if (!(e instanceof cls)) throw new Error(`expected ${cls.name}, got ${String(e)}`);
  if (includes !== undefined && !e.message.includes(includes)) {
    throw new Error(`expected error message to include "${includes}", got "${e.message}"`);
  }
  return e;
}

export function assertThrows(
  fn: () => unknown,
  cls: new (...a: any[]) => Error = Error,
  includes?: string,
): Error {
  try {
    fn();
  } catch (e) {
    return checkError(e, cls, includes);
  }
  throw new Error(`expected function to throw${includes ? ` "${includes}"` : ""}`);
}

export async function assertRejects(
  fn: () => Promise<unknown>,
  cls: new (...a: any[]) => Error = Error,
  includes?: string,
): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    return checkError(e, cls, includes);
  }
  throw new Error(`expected promise to reject${includes ? ` with "${includes}"` : ""}`);
}
