"""Golden surface-distance values from SciPy for src/metrics/metrics_test.ts.

Computes HD95 (max of directed 95th percentiles, and pooled), ASSD and Dice the way MONAI does
(surface = mask XOR binary_erosion(mask) with the 6-connected cross, border as background; distances
from scipy.ndimage.distance_transform_edt with sampling=spacing) on random blob masks, and writes
the masks bit-packed (row-major, last axis fastest, numpy packbits order) with the expected values.

Run: PYTHONPATH=<dir with scipy> python src/metrics/testdata/gen_scipy_golden.py
"""
import base64
import json
import pathlib

import numpy as np
from scipy import ndimage

rng = np.random.default_rng(11)
cases = []
for t in range(4):
    shape = tuple(int(v) for v in rng.integers(12, 30, 3))
    spacing = tuple(round(float(v), 3) for v in rng.uniform(0.4, 5, 3))

    def blob():
        m = rng.random(shape) < 0.03
        return ndimage.binary_dilation(m, iterations=int(rng.integers(1, 3)))

    p, r = blob(), blob()
    ep = p ^ ndimage.binary_erosion(p)
    er = r ^ ndimage.binary_erosion(r)
    dp = ndimage.distance_transform_edt(~er, sampling=spacing)[ep]
    dr = ndimage.distance_transform_edt(~ep, sampling=spacing)[er]
    both = np.concatenate([dp, dr])
    cases.append({
        "dims": list(shape),
        "spacing": list(spacing),
        "pred": base64.b64encode(np.packbits(p.ravel())).decode(),
        "ref": base64.b64encode(np.packbits(r.ravel())).decode(),
        "hd95": float(max(np.percentile(dp, 95), np.percentile(dr, 95))),
        "hd95Pooled": float(np.percentile(both, 95)),
        "hd100": float(max(dp.max(), dr.max())),
        "assd": float(both.mean()),
        "dice": float(2 * (p & r).sum() / (p.sum() + r.sum())),
    })
out = pathlib.Path(__file__).with_name("scipy_golden.json")
out.write_text(json.dumps(cases, indent=1) + "\n")
print(f"wrote {out} ({len(cases)} cases)")
