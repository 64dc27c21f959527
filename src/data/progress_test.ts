import { assertEquals } from "./testing.ts";
import { progressBar } from "./progress.ts";
import { preprocessDataset } from "./prepared_cache.ts";
import { makeCase, manifestFor, testDir } from "./toy_cases_testing.ts";

const tmp = await testDir("comodal_progress_");

Deno.test("progress: the fingerprint and preprocessing report (done, total, what) in order", async () => {
  const dir = `${tmp}/data`;
  await makeCase(dir, "a");
  await makeCase(dir, "b");
  const seen: string[] = [];
  await preprocessDataset(manifestFor(dir, ["a", "b"]), {
    outDir: `${tmp}/out`,
    onProgress: (done, total, label) => seen.push(`${done}/${total} ${label}`),
  });
  assertEquals(seen, [
    "1/4 fingerprint a MR",
    "2/4 fingerprint a CT",
    "3/4 fingerprint b MR",
    "4/4 fingerprint b CT",
    "1/2 preprocess a",
    "2/2 preprocess b",
  ]);
});

Deno.test("progress: a quiet bar takes every callback and prints nothing", () => {
  const bar = progressBar("preprocess", { quiet: true });
  for (let i = 1; i <= 3; i++) bar.onProgress(i, 3, `case ${i}`);
  bar.stop();
  bar.stop(); // stopping twice is harmless
});
