/**
 * Input checks shared by the op glue; every message names the op, the argument and its shape.
 * @module
 */
import { isGradEnabled } from "../tensor/scope.ts";
import { type DType, isRelaxedUse, Tensor } from "../tensor/tensor.ts";

/** True when the op should record a graph node for these inputs. */
export function needsGrad(...xs: (Tensor | null | undefined)[]): boolean {
  if (!isGradEnabled()) return false;
  for (const x of xs) if (x && x.requiresGrad) return true;
  return false;
}

/** Throws unless x is a live tensor. */
export function checkTensor(fn: string, name: string, x: unknown): asserts x is Tensor {
  if (!(x instanceof Tensor)) {
    throw new Error(`${fn}: ${name} must be a Tensor, got ${x === null ? "null" : typeof x}`);
  }
  if (x.disposed && !isRelaxedUse()) {
    throw new Error(`Tensor ${x.describe()} was disposed (used by ${fn} as ${name})`);
  }
}

/** Throws unless x is a live tensor of dtype. */
export function checkDtype(fn: string, name: string, x: Tensor, dtype: DType): void {
  checkTensor(fn, name, x);
  if (x.dtype !== dtype) {
    throw new Error(`${fn}: ${name} ${x.describe()} has dtype ${x.dtype}, expected ${dtype}`);
  }
}

/** Throws unless x is a live f32 tensor. */
export function checkF32(fn: string, name: string, x: Tensor): void {
  checkDtype(fn, name, x, "f32");
}

/** Throws unless x has one of the given ranks. */
export function checkRank(fn: string, name: string, x: Tensor, ...ranks: number[]): void {
  if (!ranks.includes(x.shape.length)) {
    const want = ranks.length === 1
      ? `${ranks[0]}`
      : `${ranks.slice(0, -1).join(", ")} or ${ranks[ranks.length - 1]}`;
    throw new Error(
      `${fn}: ${name} ${x.describe()} has rank ${x.shape.length}, expected rank ${want}`,
    );
  }
}
