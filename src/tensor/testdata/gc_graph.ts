// Run by autograd_test.ts with --expose-gc: drops a recorded graph without disposing its outputs,
// disposes a tensor the graph saved, and prints the live buffer counts before and after GC.
import { getBackend } from "../../backend/backend.ts";
import { mul } from "../../ops/binary.ts";
import { relu } from "../../ops/unary.ts";
import { parameter, tensor } from "../factories.ts";

const gc = (globalThis as { gc?: () => void }).gc!;
const live = () => getBackend().memoryStats().liveBuffers;
const w = parameter(new Float32Array([1, 2, 3]), [3]);
const base = live();
const x = tensor([1, 1, 1], [3]);
(() => {
  relu(mul(w, x)); // never disposed and never used
})();
x.dispose(); // saved by mul's node: its buffer waits for the node
const held = live();
for (let i = 0; i < 50 && live() > base; i++) {
  gc();
  await new Promise((r) => setTimeout(r, 5));
}
console.log(JSON.stringify({ base, held, after: live() }));
