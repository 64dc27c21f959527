/**
 * Reverse-mode autograd over the recorded graph nodes: backward and zeroGrad.
 *
 * Gradients of intermediate tensors are reference-counted during the pass and released as soon
 * as the node that consumes them has run; each node is freed right after its rule ran, which
 * releases the activations it saved. Leaf gradients accumulate across calls (+=); a rule may add
 * into an exclusively owned gradient in place (the native += slot convention, ctx.slot).
 * @module
 */
import { addInto, addRaw } from "../ops/binary.ts";
import { checkTensor } from "../ops/check.ts";
import { exec1 } from "../ops/exec.ts";
import { ones } from "./factories.ts";
import { formatShape, sameShape } from "./shape.ts";
import { setGradEnabled, tidy } from "./scope.ts";
import {
  type BackwardContext,
  freeNode,
  type Node,
  SliceGrad,
  type Tensor,
  withRelaxedUse,
} from "./tensor.ts";
import { concat, padAxis, zerosLike } from "../ops/shape_ops.ts";

function copyOf(t: Tensor): Tensor {
  return exec1("COPY", "backward", [t], { layout: 2 }, t.shape, t.dtype, ["grad"]);
}

interface Partial {
  axis: number;
  full: readonly number[];
  pieces: { start: number; grad: Tensor }[];
}

/** Joins slice gradients: one concat when the pieces do not overlap, else padded sums. */
function materialize(p: Partial): Tensor {
  const pieces = [...p.pieces].sort((a, b) => a.start - b.start);
  const dim = p.full[p.axis];
  const parts: Tensor[] = [];
  let cursor = 0;
  let overlap = false;
  for (const piece of pieces) {
    const len = piece.grad.shape[p.axis];
    if (piece.start < cursor) {
      overlap = true;
      break;
    }
    if (piece.start > cursor) {
      const s = [...p.full];
      s[p.axis] = piece.start - cursor;
      parts.push(zerosLike(s, piece.grad.dtype));
    }
    parts.push(piece.grad);
    cursor = piece.start + len;
  }
  if (overlap) {
    let acc = padAxis(pieces[0].grad, p.full, p.axis, pieces[0].start);
    for (const piece of pieces.slice(1)) {
      acc = addRaw(acc, padAxis(piece.grad, p.full, p.axis, piece.start));
    }
    return acc;
  }
  if (cursor < dim) {
    const s = [...p.full];
    s[p.axis] = dim - cursor;
    parts.push(zerosLike(s, pieces[0].grad.dtype));
  }
  return parts.length === 1 ? parts[0] : concat(parts, p.axis);
}

function collectNodes(root: Node): Node[] {
  const seen = new Set<Node>([root]);
  const stack = [root];
  while (stack.length > 0) {
    const n = stack.pop()!;
    for (let i = 0; i < n.inputs.length; i++) {
      const t = n.inputs[i];
      if (!n.needs[i] || t === null) continue;
      if (t._graphFreedBy !== null) {
        throw new Error(
          `backward: input ${i} of ${n.name} (${t.describe()}) comes from ${t._graphFreedBy}, whose graph an ` +
            `earlier backward already freed; add the losses and call backward once, or pass ` +
            `{ retainGraph: true } to the first backward`,
        );
      }
      const p = t._node;
      if (p !== null && !p.freed && !seen.has(p)) {
        seen.add(p);
        stack.push(p);
      }
    }
  }
  return [...seen].sort((a, b) => b.id - a.id);
}

/** Options of backward. */
export interface BackwardOptions {
  /**
   * Dispose each intermediate activation (a tensor an op produced and a node saved) as soon as
   * the last node that saved it has run, so memory falls during backward instead of staying at
   * the forward peak until the enclosing tidy ends. The loss and leaves (inputs, parameters) are
   * never disposed. Use it when nothing reads those activations after backward (a training step
   * that has read its numbers already); reading one afterwards throws "... was disposed".
   */
  releaseActivations?: boolean;
  /**
   * Keep the graph after this pass so a second backward can run through it (PyTorch's
   * retain_graph). The graph is then freed when its outputs are disposed.
   */
  retainGraph?: boolean;
}

/**
 * Back-propagates from loss (one element, or with `grad` of loss's shape) and accumulates into
 * `.grad` of every leaf that requires grad (kept tensors; += across calls). Frees the graph it
 * ran through.
 */
export function backward(loss: Tensor, grad?: Tensor, opts: BackwardOptions = {}): void {
  checkTensor("backward", "loss", loss);
  if (!loss.requiresGrad) {
    throw new Error(
      `backward: loss ${loss.describe()} does not require grad (no input with requiresGrad was used, ` +
        `it was computed inside noGrad, or its graph was already used by an earlier backward)`,
    );
  }
  if (grad === undefined) {
    if (loss.size !== 1) {
      throw new Error(
        `backward: loss ${loss.describe()} has ${loss.size} elements; pass grad for a non-scalar loss`,
      );
    }
  } else {
    checkTensor("backward", "grad", grad);
    if (!sameShape(grad.shape, loss.shape) || grad.dtype !== "f32") {
      throw new Error(
        `backward: grad ${grad.describe()} must have the shape and dtype of loss ${loss.describe()}`,
      );
    }
  }
  const retain = opts.retainGraph ?? false;
  if (retain && opts.releaseActivations) {
    throw new Error("backward: retainGraph and releaseActivations exclude each other");
  }
  const nodes = loss._node !== null ? collectNodes(loss._node) : [];
  const prev = setGradEnabled(false);
  for (const n of nodes) n.pinned = true;
  try {
    withRelaxedUse(() =>
      tidy(() => runBackward(loss, grad, nodes, opts.releaseActivations ?? false, retain))
    );
  } finally {
    setGradEnabled(prev);
    for (const n of nodes) n.pinned = false;
    if (retain) {
      // Nodes whose outputs all died while pinned are freed now.
      for (const n of nodes) if (n.liveOutputs <= 0) freeNode(n);
    } else {
      for (const n of nodes) freeNode(n, "backward");
    }
  }
}

function runBackward(
  loss: Tensor,
  userGrad: Tensor | undefined,
  nodes: Node[],
  release: boolean,
  retain: boolean,
): void {
  const seed = userGrad ?? ones(loss.shape);
  const grads = new Map<Tensor, Tensor>();
  const holds = new Map<Tensor, number>();
  const leafGrads = new Set<Tensor>();
  const hold = (g: Tensor) => holds.set(g, (holds.get(g) ?? 0) + 1);
  const unhold = (g: Tensor) => {
    const n = (holds.get(g) ?? 0) - 1;
    if (n > 0) holds.set(g, n);
    else {
      holds.delete(g);
      if (g !== seed && !leafGrads.has(g)) g.dispose();
    }
  };
  const shared = (g: Tensor) => (holds.get(g) ?? 0) > 0 || g === seed || leafGrads.has(g);
  const dropIfFree = (g: Tensor) => {
    if (!shared(g) && !g.kept) g.dispose();
  };

  const accumulateTensor = (t: Tensor, g: Tensor) => {
    if (t._node === null) {
      if (!t.requiresGrad || t.grad === g) return;
      if (t.grad === null || t.grad.disposed) {
        const v = shared(g) ? copyOf(g) : g;
        v.keep();
        leafGrads.add(v);
        t.grad = v;
      } else if ((holds.get(t.grad) ?? 0) === 0) {
        addInto(t.grad, g); // the leaf's grad is owned by the leaf alone
        dropIfFree(g);
      } else {
        const s = addRaw(t.grad, g).keep();
        const old = t.grad;
        t.grad = s;
        leafGrads.add(s);
        leafGrads.delete(old);
        old.dispose();
        dropIfFree(g);
      }
      return;
    }
    const e = grads.get(t);
    if (e === undefined) {
      grads.set(t, g);
      hold(g);
    } else if (e !== g) {
      if (holds.get(e) === 1 && !leafGrads.has(e) && e !== seed) {
        addInto(e, g); // only t's entry holds e
      } else {
        const s = addRaw(e, g);
        grads.set(t, s);
        hold(s);
        unhold(e);
      }
      dropIfFree(g);
    }
  };

  // Slice gradients of one tensor wait here and are joined by one concat when it is consumed.
  const partials = new Map<Tensor, Partial>();
  const flush = (t: Tensor) => {
    const p = partials.get(t);
    if (p === undefined) return;
    partials.delete(t);
    accumulateTensor(t, materialize(p));
    for (const piece of p.pieces) unhold(piece.grad);
  };
  const accumulate = (t: Tensor, g: Tensor | SliceGrad) => {
    if (!(g instanceof SliceGrad)) {
      accumulateTensor(t, g);
      return;
    }
    if (t._node === null && !t.requiresGrad) return;
    let p = partials.get(t);
    if (p !== undefined && p.axis !== g.axis) {
      flush(t);
      p = undefined;
    }
    if (p === undefined) partials.set(t, p = { axis: g.axis, full: g.full, pieces: [] });
    p.pieces.push({ start: g.start, grad: g.grad });
    hold(g.grad);
  };
  const gradOf = (t: Tensor): Tensor | null => {
    flush(t);
    return grads.get(t) ?? null;
  };

  if (loss._node === null) {
    accumulate(loss, seed);
    return;
  }
  grads.set(loss, seed);
  hold(seed);

  for (const node of nodes) {
    const outGrads = node.outputs.map(gradOf);
    if (outGrads.every((g) => g === null) || node.backwardFn === null) continue;
    const inputs = node.inputs;
    const ctx: BackwardContext = {
      needs: node.needs,
      slot(i: number): Tensor | null {
        const t = inputs[i];
        if (t === null || !node.needs[i]) return null;
        if (t._node === null) {
          const g = t.grad;
          return g !== null && !g.disposed && (holds.get(g) ?? 0) === 0 ? g : null;
        }
        if (partials.has(t)) return null;
        const e = grads.get(t);
        return e !== undefined && holds.get(e) === 1 && !leafGrads.has(e) && e !== seed ? e : null;
      },
    };
    const fn = node.backwardFn;
    const res = tidy(() => fn(outGrads, ctx));
    if (!Array.isArray(res) || res.length !== inputs.length) {
      throw new Error(
        `backward of ${node.name}: the gradient rule returned ${
          Array.isArray(res) ? res.length : "no"
        } gradients for ${inputs.length} inputs`,
      );
    }
    for (let i = 0; i < inputs.length; i++) {
      const g = res[i];
      const t = inputs[i];
      if (g === null || t === null || !node.needs[i]) continue;
      const gs = g instanceof SliceGrad ? g.full : g.shape;
      if (!sameShape(gs, t.shape)) {
        throw new Error(
          `backward of ${node.name}: gradient for input ${i} has shape ${
            formatShape(gs)
          }, the input is ${t.describe()}`,
        );
      }
      accumulate(t, g);
    }
    for (const o of node.outputs) {
      const g = grads.get(o);
      if (g !== undefined) {
        grads.delete(o);
        unhold(g);
      }
    }
    for (const g of res) if (g !== null) dropIfFree(g instanceof SliceGrad ? g.grad : g);
    if (retain) continue;
    node.pinned = false;
    // Intermediates saved by this node: once no other node needs them they may go.
    const toRelease = release ? node.saved.filter((t) => t._node !== null && t !== loss) : [];
    freeNode(node, "backward");
    for (const t of toRelease) if (t._dataRefs === 0 && !t.kept) t.dispose();
  }
  // Slice gradients of leaves are joined once every piece has arrived.
  for (const t of [...partials.keys()]) if (t._node === null) flush(t);
}

/** Disposes and clears the gradients of params. */
export function zeroGrad(params: readonly Tensor[]): void {
  for (const p of params) {
    if (p.grad !== null) {
      p.grad.dispose();
      p.grad = null;
    }
  }
}
