/**
 * Tensor: a handle on one native buffer with shape, dtype and autograd state, plus the graph
 * nodes autograd records and their lifetime rules.
 *
 * Lifetime. A tensor's native buffer is released when the user no longer needs it (dispose(),
 * tidy) AND no recorded graph node still needs its data for backward (dataRefs = 0). A graph node
 * lives while one of its outputs is still in use (not disposed, or an input of a live node);
 * backward frees every node it runs through. So a tidy inside a forward pass may "dispose"
 * activations that backward needs: their buffers are released once backward has used them.
 * @module
 */
import { type Backend, getBackend } from "../backend/backend.ts";
import { formatShape, sizeOf } from "./shape.ts";
import { track, type Trackable, TRACKED } from "./scope.ts";

/** Element types of tensors. */
export type DType = "f32" | "i32";

/** cmo_dtype code of a dtype. */
export function dtypeCode(d: DType): number {
  return d === "f32" ? 0 : 1;
}

/** A native buffer, shared by tensors that alias it (detach). */
export class Storage {
  ptr: bigint;
  readonly backend: Backend;
  refs = 1;
  constructor(ptr: bigint, backend: Backend) {
    this.ptr = ptr;
    this.backend = backend;
  }
  release(): void {
    if (--this.refs > 0 || this.ptr === 0n) return;
    const p = this.ptr;
    this.ptr = 0n;
    this.backend.sym.cmo_buffer_release(p);
  }
}

// Safety net for tensors that were never disposed: frees their buffer when they are collected.
const registry = new FinalizationRegistry<Storage>((s) => s.release());

let relaxedUse = 0;
/** @internal while > 0 (inside backward), tensors disposed by the user but still held by the
 * graph may be read by ops. */
export function withRelaxedUse<T>(fn: () => T): T {
  relaxedUse++;
  try {
    return fn();
  } finally {
    relaxedUse--;
  }
}

/** @internal true inside backward (saved tensors disposed by the user may be read) */
export function isRelaxedUse(): boolean {
  return relaxedUse > 0;
}

/** Context a gradient rule receives. */
export interface BackwardContext {
  /** needs[i]: input i wants a gradient. */
  readonly needs: readonly boolean[];
  /**
   * The gradient already accumulated for input i when the rule may add into it in place (the
   * native "+= into a given slot" convention for parameter gradients), else null. A rule that
   * accumulates into it returns that same tensor for input i.
   */
  slot(i: number): Tensor | null;
}

/**
 * The gradient of a slice: `grad` placed at [start, start + grad.shape[axis]) along axis of a
 * zero tensor of shape `full`. Backward keeps these unmaterialised and joins the pieces of one
 * tensor with a single concat (zero-filling only the ranges no piece covers).
 */
export class SliceGrad {
  constructor(
    readonly grad: Tensor,
    readonly axis: number,
    readonly start: number,
    readonly full: readonly number[],
  ) {}
}

/** A gradient rule: output grads (null where an output got none) -> input grads. */
export type BackwardFn = (
  grads: (Tensor | null)[],
  ctx: BackwardContext,
) => (Tensor | SliceGrad | null)[];

let nextNodeId = 1;

/** One recorded op of the autograd tape. */
export class Node {
  readonly id = nextNodeId++;
  readonly name: string;
  inputs: (Tensor | null)[];
  needs: boolean[];
  outputs: Tensor[];
  saved: Tensor[];
  backwardFn: BackwardFn | null;
  liveOutputs: number;
  freed = false;
  /** set while a backward pass will still run this node: graph death does not free it */
  pinned = false;
  constructor(
    name: string,
    inputs: (Tensor | null)[],
    outputs: Tensor[],
    saved: Tensor[],
    fn: BackwardFn,
  ) {
    this.name = name;
    this.inputs = inputs;
    this.needs = inputs.map((t) => t !== null && t.requiresGrad);
    this.outputs = outputs;
    this.saved = saved;
    this.backwardFn = fn;
    this.liveOutputs = outputs.length;
  }
}

// Safety net for graphs dropped without disposing their outputs: when a node is collected, the
// tensors it saved lose that reference (their buffers go if the user already disposed them).
const nodeRegistry = new FinalizationRegistry<Tensor[]>((saved) => {
  for (const s of saved) {
    s._dataRefs--;
    s._maybeRelease();
  }
});

/**
 * Frees graph nodes (iteratively, so long chains do not overflow the stack). `by` = "backward"
 * marks the outputs so a later backward through them fails with a clear message.
 */
export function freeNode(start: Node, by: "backward" | null = null): void {
  const work: Node[] = [start];
  while (work.length > 0) {
    const n = work.pop()!;
    if (n.freed) continue;
    n.freed = true;
    nodeRegistry.unregister(n);
    for (const o of n.outputs) {
      if (o._node === n) {
        o._node = null;
        if (by !== null && n === start) o._graphFreedBy = n.name;
        o.requiresGrad = false;
      }
    }
    for (const s of n.saved) {
      s._dataRefs--;
      s._maybeRelease();
    }
    for (let i = 0; i < n.inputs.length; i++) {
      const t = n.inputs[i];
      if (t === null || !n.needs[i]) continue;
      t._graphRefs--;
      if (t._userDisposed && t._graphRefs === 0 && t._node !== null && !t._node.freed) {
        if (--t._node.liveOutputs <= 0 && !t._node.pinned) work.push(t._node);
      }
    }
    n.inputs = [];
    n.saved = [];
    n.outputs = [];
    n.backwardFn = null;
  }
}

/** Options of the Tensor constructor (internal). */
export interface TensorInit {
  requiresGrad?: boolean;
}

let nextTensorId = 1;

/** An n-dimensional array held by the native backend (layout NCDHW for 5-D). */
export class Tensor implements Trackable {
  readonly [TRACKED] = true as const;
  readonly id = nextTensorId++;
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly size: number;
  requiresGrad: boolean;
  grad: Tensor | null = null;
  /** @internal */ _storage: Storage | null;
  /** @internal producer node (null for leaves and after backward) */ _node: Node | null = null;
  /** @internal */ _userDisposed = false;
  /** @internal */ _kept = false;
  /** @internal graph nodes that saved this tensor's data */ _dataRefs = 0;
  /** @internal live graph nodes that take this tensor as an input needing a gradient */ _graphRefs =
    0;
  /** @internal */ _scope: Trackable[] | null = null;
  /** @internal name of the op whose graph node a backward freed (null: none) */
  _graphFreedBy: string | null = null;

  /** @internal use the factories (tensor, zeros, ...) or ops */
  constructor(storage: Storage, shape: readonly number[], dtype: DType, init: TensorInit = {}) {
    this._storage = storage;
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    this.size = sizeOf(shape);
    this.requiresGrad = init.requiresGrad ?? false;
    registry.register(this, storage, this);
    track(this);
  }

  get disposed(): boolean {
    return this._userDisposed;
  }

  get kept(): boolean {
    return this._kept;
  }

  /**
   * True when no recorded op produced this tensor (factories, parameters, outputs of ops run
   * under noGrad or without inputs that require grad). Leaves that require grad get `.grad`.
   */
  get isLeaf(): boolean {
    return this._node === null;
  }

  /** "[2,16,8,8,8] f32" */
  describe(): string {
    return `${formatShape(this.shape)} ${this.dtype}`;
  }

  toString(): string {
    return `Tensor ${this.describe()}${this._userDisposed ? " (disposed)" : ""}`;
  }

  /** @internal the native handle; throws naming `usedBy` when the tensor was disposed */
  _ptr(usedBy: string): bigint {
    const s = this._storage;
    if (s === null || (this._userDisposed && relaxedUse === 0)) {
      throw new Error(`Tensor ${this.describe()} was disposed (used by ${usedBy})`);
    }
    return s.ptr;
  }

  /** @internal the backend that owns the buffer */
  _backend(usedBy: string): Backend {
    const s = this._storage;
    if (s === null) throw new Error(`Tensor ${this.describe()} was disposed (used by ${usedBy})`);
    return s.backend;
  }

  /** @internal */
  _maybeRelease(): void {
    if (this._userDisposed && this._dataRefs <= 0 && this._storage !== null) {
      registry.unregister(this);
      const s = this._storage;
      this._storage = null;
      s.release();
    }
  }

  /** Releases the tensor (its buffer goes once autograd no longer needs it). Idempotent. */
  dispose(): void {
    if (this._userDisposed) return;
    this._userDisposed = true;
    if (this.grad !== null) {
      this.grad.dispose();
      this.grad = null;
    }
    this._maybeRelease();
    const n = this._node;
    if (n !== null && this._graphRefs === 0 && !n.freed) {
      if (--n.liveOutputs <= 0 && !n.pinned) freeNode(n);
    }
  }

  /** Exempts this tensor from disposal by enclosing tidy scopes. */
  keep(): this {
    this._kept = true;
    return this;
  }

  /** A plain row-major copy of the data. */
  toArray(): Float32Array | Int32Array {
    const ptr = this._ptr("toArray");
    const be = this._storage!.backend;
    const out = this.dtype === "f32" ? new Float32Array(this.size) : new Int32Array(this.size);
    if (this.size > 0) {
      be.check(
        be.sym.cmo_buffer_read(ptr, out, BigInt(out.byteLength)),
        `toArray of ${this.describe()}`,
      );
    }
    return out;
  }

  /** The value of a one-element tensor. */
  item(): number {
    if (this.size !== 1) {
      throw new Error(`item: tensor ${this.describe()} has ${this.size} elements, expected 1`);
    }
    return this.toArray()[0];
  }
}

/** @internal wraps a native buffer returned by an op */
export function wrapNative(
  ptr: bigint,
  shape: readonly number[],
  dtype: DType,
  backend: Backend,
): Tensor {
  return new Tensor(new Storage(ptr, backend), shape, dtype);
}

/** @internal creates an uninitialised PLAIN buffer on the current backend */
export function allocTensor(shape: readonly number[], dtype: DType, what: string): Tensor {
  const be = getBackend();
  const desc = new BigInt64Array(9);
  desc[0] = BigInt(shape.length);
  for (let i = 0; i < shape.length; i++) desc[1 + i] = BigInt(shape[i]);
  desc[7] = BigInt(dtypeCode(dtype));
  desc[8] = 0n; // CMO_LAYOUT_PLAIN
  const out = new BigUint64Array(1);
  be.check(
    be.sym.cmo_buffer_create(be.handle, desc, out),
    `${what}: cannot create a ${formatShape(shape)} ${dtype} buffer`,
  );
  return new Tensor(new Storage(out[0], be), shape, dtype);
}

/** @internal records a graph node when grad mode is on and an input requires grad */
export function recordNode(
  name: string,
  inputs: (Tensor | null)[],
  outputs: Tensor[],
  saved: Tensor[],
  fn: BackwardFn,
): Node {
  const node = new Node(name, inputs, outputs, saved, fn);
  for (let i = 0; i < inputs.length; i++) if (node.needs[i]) inputs[i]!._graphRefs++;
  for (const s of saved) s._dataRefs++;
  // The held list must not reach the node itself, or the node could never be collected: leave
  // out its own outputs (the tensor registry frees those when they are collected with the node).
  const held = saved.filter((s) => !outputs.includes(s));
  if (held.length > 0) nodeRegistry.register(node, held, node);
  for (const o of outputs) {
    o._node = node;
    o.requiresGrad = true;
  }
  return node;
}

/**
 * A tensor with the same data that is not part of any graph (requiresGrad false). It shares the
 * buffer, as PyTorch's detach does: in-place updates (sgdUpdate, adamwUpdate, emaUpdate) of one
 * show in the other. Use clone() under noGrad for an independent copy.
 */
export function detach(x: Tensor): Tensor {
  x._ptr("detach");
  const s = x._storage!;
  s.refs++;
  return new Tensor(s, x.shape, x.dtype);
}
