#!/usr/bin/env bash
# Lays out open_ms_data (Lesjak et al. 2017, CC-BY; 30 multiple-sclerosis patients, FLAIR, T1, T1POST,
# T2 and a consensus lesion mask, co-registered in MNI space at 1 mm) as an nnU-Net raw dataset:
#
#   bash scripts/open_ms_data.sh SRC OUT
#
# SRC is a checkout of the open_ms_data repository (a folder holding cross_sectional/MNI/patientNN/),
# or its bare git directory. OUT gets imagesTr/msNN_000{0..3}.nii.gz (FLAIR, T1, T1POST, T2),
# labelsTr/msNN.nii.gz (0 background, 1 lesion) and dataset.json. A patient whose five files are not
# all present (some copies of the repository leave out files of 4 MiB and more) is skipped and named.
# The data is never committed to this repository.
set -euo pipefail
SRC=${1:?usage: open_ms_data.sh SRC OUT}
OUT=${2:?usage: open_ms_data.sh SRC OUT}
SEQS=(FLAIR T1 T1POST T2)
TAIL=_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz
GOLD=GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz
mkdir -p "$OUT/imagesTr" "$OUT/labelsTr"
if [ -d "$SRC/cross_sectional/MNI" ]; then
  get() { [ -s "$SRC/$1" ] && cp "$SRC/$1" "$2"; }
  list() { ls "$SRC/cross_sectional/MNI"; }
elif git --git-dir="$SRC" rev-parse HEAD >/dev/null 2>&1; then
  get() { git --git-dir="$SRC" cat-file -e "HEAD:$1" 2>/dev/null && git --git-dir="$SRC" cat-file blob "HEAD:$1" > "$2"; }
  list() { git --git-dir="$SRC" ls-tree --name-only HEAD cross_sectional/MNI/ | xargs -n1 basename; }
else
  echo "open_ms_data.sh: $SRC is neither a checkout with cross_sectional/MNI nor a git directory" >&2
  exit 1
fi
n=0
skipped=()
for p in $(list | grep '^patient[0-9][0-9]*$'); do
  id=ms${p#patient}
  ok=1
  for i in 0 1 2 3; do
    get "cross_sectional/MNI/$p/${SEQS[$i]}$TAIL" "$OUT/imagesTr/${id}_000$i.nii.gz" 2>/dev/null || ok=0
  done
  get "cross_sectional/MNI/$p/$GOLD" "$OUT/labelsTr/$id.nii.gz" 2>/dev/null || ok=0
  # a file that is present but not gzip (a Git LFS pointer, a truncated copy) counts as missing
  for f in "$OUT/imagesTr/${id}"_000?.nii.gz "$OUT/labelsTr/$id.nii.gz"; do
    [ -s "$f" ] && gzip -t "$f" 2>/dev/null || ok=0
  done
  if [ $ok = 1 ]; then n=$((n + 1)); else
    skipped+=("$p"); rm -f "$OUT/imagesTr/${id}"_000?.nii.gz "$OUT/labelsTr/$id.nii.gz"
  fi
done
cat > "$OUT/dataset.json" <<JSON
{
  "name": "OpenMS",
  "description": "open_ms_data cross_sectional/MNI (Lesjak et al. 2017, CC-BY), laid out by scripts/open_ms_data.sh",
  "channel_names": {"0": "FLAIR", "1": "T1", "2": "T1POST", "3": "T2"},
  "labels": {"background": 0, "lesion": 1},
  "numTraining": $n,
  "file_ending": ".nii.gz"
}
JSON
echo "open_ms_data.sh: $n patients in $OUT${skipped:+; skipped (files missing): ${skipped[*]}}"
