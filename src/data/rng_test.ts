import { assert, assertEquals, assertThrows } from "./testing.ts";
import { Rng } from "./rng.ts";

Deno.test("rng: same seed gives the same sequence, different seeds differ", () => {
  const a = new Rng(42), b = new Rng(42), c = new Rng(43);
  const sa = Array.from({ length: 50 }, () => a.nextU32());
  const sb = Array.from({ length: 50 }, () => b.nextU32());
  const sc = Array.from({ length: 50 }, () => c.nextU32());
  assertEquals(sa, sb);
  assert(sa.some((v, i) => v !== sc[i]));
  assert(new Rng(1, "x").next() !== new Rng(1, "y").next());
});

Deno.test("rng: state round trip continues the sequence exactly", () => {
  const r = new Rng(7);
  for (let i = 0; i < 13; i++) r.normal();
  const st = r.state();
  const json = JSON.parse(JSON.stringify(st));
  const tail = Array.from({ length: 20 }, () => r.normal());
  const resumed = Rng.fromState(json);
  assertEquals(Array.from({ length: 20 }, () => resumed.normal()), tail);
  assertThrows(() => Rng.fromState([1, 2, 3] as never), Error, "four integers");
});

Deno.test("rng: distributions have the right moments and ranges", () => {
  const r = new Rng(3);
  const n = 100000;
  let s = 0, s2 = 0, u = 0;
  const counts = new Array(5).fill(0);
  for (let i = 0; i < n; i++) {
    const g = r.normal();
    s += g;
    s2 += g * g;
    const x = r.next();
    assert(x >= 0 && x < 1);
    u += x;
    counts[r.int(5)]++;
  }
  assert(Math.abs(s / n) < 0.02, `normal mean ${s / n}`);
  assert(Math.abs(s2 / n - 1) < 0.03, `normal var ${s2 / n}`);
  assert(Math.abs(u / n - 0.5) < 0.01);
  for (const c of counts) assert(Math.abs(c / n - 0.2) < 0.01, `int counts ${counts}`);
  const d1 = r.derive("a"), d2 = r.derive("a");
  assertEquals(d1.next(), d2.next());
});
