/**
 * The label files a piece of code may open. Unlabeled means never opened: a training run decides
 * once, from its labeled training cases (after `labeled` selection) and its validation cases, which
 * label files exist for it, and every reader of label files (fingerprint, preprocessing, validation,
 * the final report, `evaluate`) reads them through a LabelAccess, whose `read` refuses any other
 * path. `restrict` gives the manifest that code sees: a case whose labels are not allowed is
 * unlabeled there and has no label reference at all, so nothing downstream can even name its file.
 */
import * as path from "node:path";
import type { NiftiImage, ReadNiftiOptions } from "./nifti.ts";
import { readImage } from "./image_io.ts";
import { type ImageRef, type Manifest, type ManifestCase, refPath } from "./manifest.ts";

/** The label references of a case (per modality, or "shared"). */
export function caseLabelRefs(c: ManifestCase): ImageRef[] {
  return Object.values(c.labels ?? {});
}

export class LabelAccess {
  private readonly allowed: ReadonlySet<string>;

  /** `purpose` names the reader in errors ("this training run", "evaluation"). */
  constructor(paths: Iterable<string>, readonly purpose: string) {
    this.allowed = new Set([...paths].map((p) => path.resolve(p)));
  }

  /** No label file at all. */
  static none(purpose: string): LabelAccess {
    return new LabelAccess([], purpose);
  }

  /** The label files of the given cases that are marked labeled. */
  static forCases(cases: readonly ManifestCase[], purpose: string): LabelAccess {
    return new LabelAccess(
      cases.filter((c) => c.labeled).flatMap((c) => caseLabelRefs(c).map(refPath)),
      purpose,
    );
  }

  /** The label files of every case the manifest marks labeled (standalone preprocessing). */
  static forManifest(manifest: Manifest, purpose = "preprocessing"): LabelAccess {
    return LabelAccess.forCases(manifest.cases, purpose);
  }

  /** Number of label files allowed. */
  get size(): number {
    return this.allowed.size;
  }

  /** Whether `p` may be opened. */
  allows(p: string): boolean {
    return this.allowed.has(path.resolve(p));
  }

  /** Whether a case is labeled here: marked labeled, and every one of its label files allowed. */
  allowsCase(c: ManifestCase): boolean {
    return c.labeled && caseLabelRefs(c).every((r) => this.allows(refPath(r)));
  }

  /** The case as this access sees it: unchanged, or unlabeled with no label references. */
  view(c: ManifestCase): ManifestCase {
    if (this.allowsCase(c)) return c;
    const { labels: _hidden, ...rest } = c;
    return { ...rest, labeled: false };
  }

  /** The manifest with every case seen through `view`. */
  restrict(manifest: Manifest): Manifest {
    return { ...manifest, cases: manifest.cases.map((c) => this.view(c)) };
  }

  /** Reads a label file; any file not allowed is an error and is never opened. */
  read(p: string, opts: ReadNiftiOptions = {}): Promise<NiftiImage> {
    if (!this.allows(p)) {
      return Promise.reject(
        new Error(
          `Cannot read label file ${p}: ${this.purpose} may not open it (it is not a label file ` +
            `of a labeled case in use: unlabeled cases' and test cases' labels are never opened)`,
        ),
      );
    }
    return readImage(p, opts);
  }
}
