/** Worker for synthesize(): generates one case per message. */
import { synthCase, type SynthTask } from "./synth.ts";

interface Job {
  task: SynthTask;
  outDir: string;
  index: number;
  seed: number;
  scale: number;
}

const scope = self as unknown as {
  onmessage: ((e: MessageEvent<Job>) => void) | null;
  postMessage: (m: unknown) => void;
};
scope.onmessage = async (e: MessageEvent<Job>) => {
  const j = e.data;
  try {
    const files = await synthCase(j.task, j.outDir, j.index, j.seed, j.scale);
    scope.postMessage({ index: j.index, files });
  } catch (err) {
    scope.postMessage({ index: j.index, error: `case ${j.index}: ${(err as Error).message}` });
  }
};
