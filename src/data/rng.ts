/**
 * Seeded random numbers for everything in the data pipeline (sampling, augmentation, phantoms).
 *
 * xoshiro128** on four 32-bit words, seeded through splitmix32. The state is four integers and can be
 * saved in a checkpoint (`state()`) and restored (`Rng.fromState`), so a resumed run draws the same
 * numbers as an uninterrupted one.
 */

/** Serialisable RNG state: four unsigned 32-bit words. */
export type RngState = [number, number, number, number];

function splitmix32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
}

function hashSeed(parts: readonly (number | string)[]): number {
  // FNV-1a over the decimal/string form of each part, mixed once more by splitmix.
  let h = 0x811c9dc5;
  for (const p of parts) {
    const s = typeof p === "number" ? `n${p}` : `s${p}`;
    for (let i = 0; i < s.length; i++) {
      h ^= s.charCodeAt(i);
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    h ^= 0xff;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

export class Rng {
  // Kept in a typed array: plain fields would box values above 2^30 on every step.
  private readonly s = new Uint32Array(4);

  /** A generator seeded from one or more numbers/strings (e.g. `new Rng(seed, "batch", 17)`). */
  constructor(...seed: (number | string)[]) {
    const sm = splitmix32(hashSeed(seed.length ? seed : [0]));
    for (let i = 0; i < 4; i++) this.s[i] = sm();
    if ((this.s[0] | this.s[1] | this.s[2] | this.s[3]) === 0) this.s[0] = 1;
  }

  /** Restores a generator from `state()`. */
  static fromState(state: RngState): Rng {
    if (!Array.isArray(state) || state.length !== 4 || state.some((v) => !Number.isInteger(v))) {
      throw new Error(
        `Cannot restore Rng: state must be four integers, got ${JSON.stringify(state)}`,
      );
    }
    const r = new Rng(0);
    for (let i = 0; i < 4; i++) r.s[i] = state[i] >>> 0;
    if ((r.s[0] | r.s[1] | r.s[2] | r.s[3]) === 0) {
      throw new Error("Cannot restore Rng: state is all zero");
    }
    return r;
  }

  /** The current state (a copy); `Rng.fromState(r.state())` continues the same sequence. */
  state(): RngState {
    return [this.s[0], this.s[1], this.s[2], this.s[3]];
  }

  /** Next raw 32-bit unsigned integer. */
  nextU32(): number {
    const s = this.s;
    const s1 = s[1] | 0;
    const m = Math.imul(s1, 5);
    const result = Math.imul((m << 7) | (m >>> 25), 9);
    const t = s1 << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    const s3 = s[3] | 0;
    s[3] = (s3 << 11) | (s3 >>> 21);
    return result >>> 0;
  }

  /** Uniform float in [0, 1). */
  next(): number {
    return this.nextU32() / 4294967296;
  }

  /** Uniform float in [lo, hi). */
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    if (!(n >= 1)) throw new Error(`Rng.int: n must be >= 1, got ${n}`);
    return Math.floor(this.next() * n);
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  /** Standard normal (Box-Muller; nothing is cached, so `state()` captures everything). */
  normal(): number {
    const u = (this.nextU32() + 1) / 4294967297;
    const v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }

  /** Fills `out` with normal values of standard deviation `std` (both Box-Muller values used). */
  fillNormal(out: Float32Array, std = 1): Float32Array {
    const n = out.length;
    for (let i = 0; i < n; i += 2) {
      const u = (this.nextU32() + 1) / 4294967297;
      const v = this.nextU32() / 4294967296;
      const r = std * Math.sqrt(-2 * Math.log(u));
      out[i] = r * Math.cos(2 * Math.PI * v);
      if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
    }
    return out;
  }

  /** A random element of a non-empty array. */
  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error("Rng.pick: empty array");
    return items[this.int(items.length)];
  }

  /** Fisher-Yates shuffle in place; returns the array. */
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const t = items[i];
      items[i] = items[j];
      items[j] = t;
    }
    return items;
  }

  /** An independent generator derived from this one's current state and a label (does not advance this). */
  derive(...label: (number | string)[]): Rng {
    return new Rng(this.s[0], this.s[1], this.s[2], this.s[3], ...label);
  }
}
