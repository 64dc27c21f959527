/**
 * Toy cases for the preprocessing tests: LPS-stored volumes (x runs left, y posterior) with
 * 1 x 1.5 x 4 mm voxels, a body block and two organs, as an MR image, a CT image (with an outlier
 * to be clipped) and a shared label map per case, and a manifest over them.
 */
import { writeNifti } from "./nifti.ts";
import type { Manifest } from "./manifest.ts";

export const DIMS = [20, 16, 6] as const;
export const LPS = [-1, 0, 0, 30, 0, -1.5, 0, 40, 0, 0, 4, -10, 0, 0, 0, 1];

/** A temporary folder for one test file, removed at exit (kept and printed with KEEP set). */
export async function testDir(prefix: string): Promise<string> {
  const tmp = await Deno.makeTempDir({ prefix });
  globalThis.addEventListener(
    "unload",
    () => Deno.env.get("KEEP") ? console.log(tmp) : Deno.removeSync(tmp, { recursive: true }),
  );
  return tmp;
}

export function volume(f: (x: number, y: number, z: number) => number): Float32Array {
  const d = new Float32Array(DIMS[0] * DIMS[1] * DIMS[2]);
  let i = 0;
  for (let z = 0; z < DIMS[2]; z++) {
    for (let y = 0; y < DIMS[1]; y++) {
      for (let x = 0; x < DIMS[0]; x++) d[i++] = f(x, y, z);
    }
  }
  return d;
}
export const inBody = (x: number, y: number, z: number) =>
  x >= 3 && x < 17 && y >= 2 && y < 14 && z >= 1 && z < 5;
export const organ = (x: number, y: number, z: number) =>
  !inBody(x, y, z) ? 0 : x < 8 ? 10 : x > 12 ? 20 : 0;

export async function makeCase(
  dir: string,
  id: string,
  opts: {
    labelValue?: (v: number) => number;
    nan?: boolean;
    labelDims?: number[];
    labelAffine?: number[];
  } = {},
) {
  await Deno.mkdir(dir, { recursive: true });
  const mr = volume((
    x,
    y,
    z,
  ) => (inBody(x, y, z) ? 100 + organ(x, y, z) * 3 + ((x * 7 + y * 3 + z) % 5) : 0));
  if (opts.nan) mr[5] = NaN;
  const ct = volume((x, y, z) => (inBody(x, y, z) ? 40 + organ(x, y, z) * 2 + (x % 3) : -1000));
  ct[2 * 320 + 5 * 20 + 5] = 3000; // an outlier inside the body, to be clipped
  const lab = volume((x, y, z) => (opts.labelValue ?? ((v) => v))(organ(x, y, z)));
  await writeNifti(`${dir}/${id}_MR.nii.gz`, { data: mr, dims: DIMS, affine: LPS });
  await writeNifti(`${dir}/${id}_CT.nii.gz`, { data: ct, dims: DIMS, affine: LPS }, {
    datatype: "int16",
  });
  const ld = opts.labelDims ?? DIMS;
  const labData = ld === DIMS ? lab : new Float32Array(ld[0] * ld[1] * ld[2]);
  await writeNifti(`${dir}/${id}_label.nii.gz`, {
    data: labData,
    dims: ld,
    affine: opts.labelAffine ?? LPS,
  }, { datatype: "float32" });
  return { mr, ct, lab };
}

export function manifestFor(dir: string, ids: string[], labeled = true): Manifest {
  return {
    task: "toy",
    modalities: ["MR", "CT"],
    classes: { left: 10, right: 20 },
    root: dir,
    cases: ids.map((id) => ({
      id,
      images: { MR: `${dir}/${id}_MR.nii.gz`, CT: `${dir}/${id}_CT.nii.gz` },
      labels: { shared: `${dir}/${id}_label.nii.gz` },
      labeled,
      split: "train" as const,
      aligned: true,
    })),
  };
}
