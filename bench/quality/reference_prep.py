"""Preprocessing of the plain PyTorch U-Net recipe (bench/quality/RECIPE.md, "Data"), written once so
that the PyTorch reference and comodal train on the very same arrays.

    python bench/quality/reference_prep.py --manifest FOLD.json --out OUT [--zscore] [--mask-modality M]

FOLD.json is a comodal manifest (as bench/quality_bench.ts writes one per fold, absolute paths):
labeled training cases (with a shared label file) and test cases (split "test"; their labels are
not read here). Per case: brain = the mask modality > 0.5 (--mask-modality) or, by default, any
modality non-zero (skull-stripped MRI); crop images and label to the brain's bounding box;
optionally z-score each modality inside the brain (--zscore, for data not already z-scored);
multiply images by the brain mask; pad each odd axis at its end by one voxel; downsample to 2x the
spacing: images by the mean of each 2x2x2 block, labels by the majority of the 8 voxels (ties to
the lowest class). Label file values become class indices 0..K-1 (background, then the manifest's
classes by value).

OUT is an nnU-Net raw folder at the coarse spacing: imagesTr/labelsTr for the labeled training
cases, imagesTs for the test cases (no labels), dataset.json, and crops.json (per case: original
shape, bounding box; the class values) for bench/quality/score.py to paste predictions back.
scl_slope/scl_inter are applied by nibabel.
"""

import argparse
import json
import os

import nibabel as nib
import numpy as np


def brain_mask(chans, mask):
    if mask is not None:
        return mask > 0.5
    m = np.zeros(chans[0].shape, bool)
    for c in chans:
        m |= c != 0
    return m


def bbox(mask):
    idx = np.nonzero(mask)
    if len(idx[0]) == 0:
        raise SystemExit("empty brain mask")
    return [(int(i.min()), int(i.max()) + 1) for i in idx]


def pad_even(a):
    pads = [(0, s % 2) for s in a.shape]
    return np.pad(a, pads) if any(p[1] for p in pads) else a


def block_mean(a):
    d, h, w = a.shape
    return a.reshape(d // 2, 2, h // 2, 2, w // 2, 2).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def block_majority(lab, k):
    d, h, w = lab.shape
    blocks = lab.reshape(d // 2, 2, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5).reshape(d // 2, h // 2, w // 2, 8)
    counts = np.stack([(blocks == c).sum(-1) for c in range(k)], -1)
    return counts.argmax(-1).astype(np.uint8)  # argmax takes the first maximum: ties go to the lowest label


def coarse_affine(aff, start):
    """Affine of the 2x grid whose voxel i covers fine voxels start + 2i, start + 2i + 1."""
    t = np.eye(4)
    t[:3, 3] = np.array(start) + 0.5
    s = np.diag([2.0, 2.0, 2.0, 1.0])
    return aff @ t @ s


def load(path):
    n = nib.load(path)
    return np.asarray(n.get_fdata(dtype=np.float32)), n.affine


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mask-modality", default=None)
    ap.add_argument("--zscore", action="store_true")
    a = ap.parse_args()
    man = json.load(open(a.manifest))
    mods = [m for m in man["modalities"] if m != a.mask_modality]
    values = [0] + sorted(v for v in man["classes"].values() if v != 0)
    lut = {v: i for i, v in enumerate(values)}
    k = len(values)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(a.out, sub), exist_ok=True)
    crops = {}
    n_train = 0
    for case in man["cases"]:
        cid, split = case["id"], case["split"]
        if split == "train" and not case.get("labeled"):
            continue  # the reference is supervised: unlabeled cases are not used
        sub = "Ts" if split == "test" else "Tr"
        imgs, aff = [], None
        for m in mods:
            x, aff0 = load(case["images"][m])
            aff = aff0 if aff is None else aff
            imgs.append(x)
        mask = load(case["images"][a.mask_modality])[0] if a.mask_modality else None
        brain = brain_mask(imgs, mask)
        bb = bbox(brain)
        sl = tuple(slice(lo, hi) for lo, hi in bb)
        b = brain[sl]
        out_imgs = []
        for x in imgs:
            x = x[sl].astype(np.float32)
            if a.zscore:
                v = x[b]
                x = (x - v.mean()) / max(v.std(), 1e-8)
            out_imgs.append(block_mean(pad_even(x * b)))
        caff = coarse_affine(aff, [lo for lo, _ in bb])
        for c, x in enumerate(out_imgs):
            nib.save(nib.Nifti1Image(x, caff), os.path.join(a.out, "images" + sub, f"{cid}_{c:04d}.nii.gz"))
        if sub == "Tr":
            lab_file = case["labels"]["shared"] if "shared" in case["labels"] else next(iter(case["labels"].values()))
            raw = np.rint(load(lab_file)[0]).astype(np.int64)[sl]
            lab = np.zeros(raw.shape, np.int64)
            for v, i in lut.items():
                lab[raw == v] = i
            lab = block_majority(pad_even(lab), k)
            nib.save(nib.Nifti1Image(lab, caff), os.path.join(a.out, "labelsTr", f"{cid}.nii.gz"))
            n_train += 1
        crops[cid] = {"shape": list(brain.shape), "bbox": bb, "split": sub}
        print(f"[prep] {cid}: brain box {[hi - lo for lo, hi in bb]} -> {list(out_imgs[0].shape)} at 2x", flush=True)
    json.dump({
        "name": man["task"],
        "channel_names": {str(i): m for i, m in enumerate(mods)},
        "labels": {"background": 0, **{name: lut[v] for name, v in sorted(man["classes"].items(), key=lambda t: t[1]) if v != 0}},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
    }, open(os.path.join(a.out, "dataset.json"), "w"), indent=1)
    json.dump({"values": values, "cases": crops}, open(os.path.join(a.out, "crops.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
