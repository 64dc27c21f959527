/**
 * Modules: named parameter trees with deterministic initialisation.
 *
 * A module owns parameters (leaf tensors with requiresGrad) and child modules. Parameter names are
 * dotted paths ("encoders.0.levels.1.conv2.weight"), which checkpoints use as keys.
 */
import { parameter, type Tensor } from "../engine.ts";

/** A source of uniform random numbers in [0, 1). */
export type RandomSource = () => number;

export class Module {
  #params = new Map<string, Tensor>();
  #children = new Map<string, Module>();
  training = true;

  /** Registers a parameter under `name` and returns it. */
  protected param(name: string, data: Float32Array, shape: number[]): Tensor {
    if (this.#params.has(name)) throw new Error(`Parameter '${name}' is registered twice`);
    const t = parameter(data, shape);
    this.#params.set(name, t);
    return t;
  }

  /** Registers a child module under `name` and returns it. */
  protected child<M extends Module>(name: string, module: M): M {
    if (this.#children.has(name)) throw new Error(`Module '${name}' is registered twice`);
    this.#children.set(name, module);
    return module;
  }

  /** Every parameter with its dotted name, in registration order (stable across runs). */
  namedParameters(prefix = ""): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [n, p] of this.#params) out.push([prefix + n, p]);
    for (const [n, c] of this.#children) out.push(...c.namedParameters(`${prefix}${n}.`));
    return out;
  }

  parameters(): Tensor[] {
    return this.namedParameters().map(([, p]) => p);
  }

  /** Number of scalar parameters. */
  parameterCount(): number {
    return this.parameters().reduce((s, p) => s + p.size, 0);
  }

  setTraining(on: boolean): this {
    this.training = on;
    for (const c of this.#children.values()) c.setTraining(on);
    return this;
  }

  /** Frees every parameter buffer (and gradient). The module is unusable afterwards. */
  dispose(): void {
    for (const p of this.parameters()) {
      p.grad?.dispose();
      p.grad = null;
      p.dispose();
    }
  }
}

/** A list of modules registered as children "0", "1", ... */
export class ModuleList<M extends Module> extends Module {
  readonly items: M[];
  constructor(items: M[]) {
    super();
    this.items = items.map((m, i) => this.child(String(i), m));
  }
  get length(): number {
    return this.items.length;
  }
}

/** Standard normal samples by Box-Muller from a uniform source. */
export function normalSamples(n: number, rng: RandomSource, std = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u1 = Math.max(rng(), 1e-12);
    const u2 = rng();
    const r = Math.sqrt(-2 * Math.log(u1)) * std;
    out[i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

/** Kaiming-normal weights for a layer followed by LeakyReLU (fan-in mode), as nnU-Net does. */
export function kaimingNormal(
  n: number,
  fanIn: number,
  rng: RandomSource,
  slope = 0.01,
): Float32Array {
  const gain = Math.sqrt(2 / (1 + slope * slope));
  return normalSamples(n, rng, gain / Math.sqrt(fanIn));
}
