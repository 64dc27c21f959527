/**
 * Writes DICOM series with dcmjs for the tests: one CT Image Storage file per slice, explicit VR
 * little endian, with the geometry and rescale tags a scanner writes. File names and instance
 * numbers are shuffled, as exported series often are, so readers must order slices by position.
 */
import * as path from "node:path";
import dcmjs from "dcmjs";
import type { Mat4 } from "./affine.ts";

const { DicomDict, DicomMetaDictionary } = dcmjs.data;

export interface DicomSeriesSpec {
  /** Stored pixel values per slice (x fastest), [cols, rows, slices]. */
  stored: Int16Array;
  dims: [number, number, number];
  /** LPS voxel -> patient affine (row-major 4x4); its columns are row, column and slice steps. */
  lps: Mat4;
  slope?: number;
  intercept?: number;
  /** Slice indices not written (a series with missing slices). */
  skip?: number[];
  seriesUid?: string;
  /** Transfer syntax written in the file meta information (default explicit VR little endian). */
  transferSyntax?: string;
}

/** Writes the series into `dir` (created); returns the file paths in slice order. */
export function writeDicomSeries(dir: string, spec: DicomSeriesSpec): string[] {
  Deno.mkdirSync(dir, { recursive: true });
  const [cols, rows, n] = spec.dims;
  const m = spec.lps;
  const colSp = Math.hypot(m[0], m[4], m[8]);
  const rowSp = Math.hypot(m[1], m[5], m[9]);
  const iop = [m[0] / colSp, m[4] / colSp, m[8] / colSp, m[1] / rowSp, m[5] / rowSp, m[9] / rowSp];
  const series = spec.seriesUid ?? DicomMetaDictionary.uid();
  const study = DicomMetaDictionary.uid();
  const frame = DicomMetaDictionary.uid();
  const order = [...Array(n).keys()].sort((a, b) => ((a * 7919 + 13) % n) - ((b * 7919 + 13) % n));
  const files: string[] = [];
  for (let k = 0; k < n; k++) {
    const name = path.join(dir, `IM${String(order[k]).padStart(4, "0")}.dcm`);
    files.push(name);
    if (spec.skip?.includes(k)) continue;
    const plane = spec.stored.slice(k * rows * cols, (k + 1) * rows * cols);
    const sop = DicomMetaDictionary.uid();
    const ds = {
      SOPClassUID: "1.2.840.10008.5.1.4.1.1.2",
      SOPInstanceUID: sop,
      StudyInstanceUID: study,
      SeriesInstanceUID: series,
      FrameOfReferenceUID: frame,
      Modality: "CT",
      PatientName: "Test^Phantom",
      PatientID: "comodal-test",
      InstanceNumber: order[k] + 1,
      ImagePositionPatient: [
        m[2] * k + m[3],
        m[6] * k + m[7],
        m[10] * k + m[11],
      ],
      ImageOrientationPatient: iop,
      PixelSpacing: [rowSp, colSp],
      SliceThickness: Math.hypot(m[2], m[6], m[10]),
      Rows: rows,
      Columns: cols,
      SamplesPerPixel: 1,
      PhotometricInterpretation: "MONOCHROME2",
      BitsAllocated: 16,
      BitsStored: 16,
      HighBit: 15,
      PixelRepresentation: 1,
      RescaleSlope: spec.slope ?? 1,
      RescaleIntercept: spec.intercept ?? 0,
      PixelData: [plane.buffer],
      _vrMap: { PixelData: "OW" },
    };
    const meta = {
      FileMetaInformationVersion: new Uint8Array([0, 1]).buffer,
      MediaStorageSOPClassUID: ds.SOPClassUID,
      MediaStorageSOPInstanceUID: sop,
      TransferSyntaxUID: spec.transferSyntax ?? "1.2.840.10008.1.2.1",
      ImplementationClassUID: "1.2.826.0.1.3680043.10.1",
    };
    const dict = new DicomDict(DicomMetaDictionary.denaturalizeDataset(meta));
    dict.dict = DicomMetaDictionary.denaturalizeDataset(ds);
    Deno.writeFileSync(name, new Uint8Array(dict.write()));
  }
  return files;
}
