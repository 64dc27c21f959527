"""Independent scorer of the real-data benchmark: Dice and HD95 per class and region at the original
grid, with nnU-Net/MedPy conventions, written without comodal's code.

    python bench/quality/score.py --pred DIR --ref RAW/labelsTr [--crops PREP/crops.json]
        [--regions "WT=1,2,3;TC=1,3;ET=3"] [--labels "lesion=1"] --out scores.json

--pred holds <case>.nii.gz label maps. With --crops they are at the coarse grid of
bench/quality/reference_prep.py: each voxel becomes its 2x2x2 block (nearest neighbour), the padding
voxel is dropped and the box is pasted into the full grid. Without --crops they must already be on
the reference grid.
Dice: 2|A n B| / (|A| + |B|), 1 when both are empty. HD95 (MedPy): surface = mask minus its
6-connected erosion, distances in mm both ways pooled, 95th percentile; 0 when both are empty,
undefined (counted, left out of the mean) when exactly one is empty.
"""

import argparse
import json
import os

import nibabel as nib
import numpy as np
from scipy import ndimage


def surface(m):
    return m & ~ndimage.binary_erosion(m, ndimage.generate_binary_structure(3, 1), border_value=0)


def hd95(a, b, spacing):
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return None
    sa, sb = surface(a), surface(b)
    da = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
    db = ndimage.distance_transform_edt(~sa, sampling=spacing)[sb]
    return float(np.percentile(np.hstack([da, db]), 95))


def dice(a, b):
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def parse_groups(text):
    out = {}
    for part in filter(None, (text or "").split(";" if ";" in (text or "") else ",")):
        name, vals = part.split("=")
        out[name.strip()] = [int(v) for v in vals.replace("+", " ").replace(",", " ").split()]
    return out


def restore(pred, crop):
    full = np.zeros(crop["shape"], np.int64)
    up = pred.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    bb = crop["bbox"]
    ext = [hi - lo for lo, hi in bb]
    full[tuple(slice(lo, hi) for lo, hi in bb)] = up[: ext[0], : ext[1], : ext[2]]
    return full


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pred", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--crops")
    ap.add_argument("--labels", default=None, help='classes "name=value,..." (default: every value in the references)')
    ap.add_argument("--regions", default=None, help='nested regions "name=v1+v2;..."')
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    crop_file = json.load(open(a.crops)) if a.crops else None
    crops = crop_file["cases"] if crop_file else None
    values = np.array(crop_file["values"]) if crop_file else None
    cases = sorted(f[:-7] for f in os.listdir(a.pred) if f.endswith(".nii.gz"))
    if crops:
        cases = [c for c in cases if c in crops]
    refs = {c: nib.load(os.path.join(a.ref, c + ".nii.gz")) for c in cases}
    if a.labels:
        groups = parse_groups(a.labels.replace(",", ";"))
    else:
        vals = sorted({int(v) for c in cases for v in np.unique(np.rint(refs[c].get_fdata())) if v != 0})
        groups = {f"class{v}": [v] for v in vals}
    groups.update(parse_groups(a.regions))
    per_case = {}
    for c in cases:
        ref = np.rint(refs[c].get_fdata()).astype(np.int64)
        pred = np.rint(nib.load(os.path.join(a.pred, c + ".nii.gz")).get_fdata()).astype(np.int64)
        if crops:
            pred = values[restore(pred, crops[c])]  # class indices -> label file values
        if pred.shape != ref.shape:
            raise SystemExit(f"{c}: prediction shape {pred.shape} differs from the reference {ref.shape}")
        spacing = refs[c].header.get_zooms()[:3]
        per_case[c] = {}
        for g, vs in groups.items():
            pa, ra = np.isin(pred, vs), np.isin(ref, vs)
            per_case[c][g] = {"dice": dice(pa, ra), "hd95": hd95(pa, ra, spacing), "ref_voxels": int(ra.sum())}
    summary = {}
    for g in groups:
        d = [per_case[c][g]["dice"] for c in cases]
        h = [per_case[c][g]["hd95"] for c in cases]
        fin = [x for x in h if x is not None]
        summary[g] = {
            "dice": float(np.mean(d)) if d else None,
            "hd95": float(np.mean(fin)) if fin else None,
            "hd95_undefined": len(h) - len(fin),
        }
    json.dump({"cases": per_case, "summary": summary}, open(a.out, "w"), indent=1)
    for g, s in summary.items():
        print(f"{g}: Dice {s['dice']:.4f}  HD95 {s['hd95'] if s['hd95'] is None else round(s['hd95'], 2)} mm"
              f" ({s['hd95_undefined']} undefined) over {len(cases)} cases")


if __name__ == "__main__":
    main()
