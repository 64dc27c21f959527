/**
 * dispose(): releases a tensor, an array of tensors or a record of tensors.
 * @module
 */
import { Tensor } from "./tensor.ts";

/** Disposes x (a tensor, an array or a record of tensors); other values are ignored. */
export function dispose(
  x: Tensor | readonly Tensor[] | Record<string, Tensor> | null | undefined,
): void {
  if (x === null || x === undefined) return;
  if (x instanceof Tensor) x.dispose();
  else if (Array.isArray(x)) { for (const t of x) dispose(t); }
  else for (const t of Object.values(x)) if (t instanceof Tensor) t.dispose();
}
