#!/bin/sh
# Re-learn the schedules shipped for builtin:digits (seed 0, 100 teacher pairs: 50 train / 50 validation).
# Run from the repository root: sh odelt/schedules/builtin/make.sh   (about 1-2 minutes each on 2 cores)
set -e
OUT=odelt/schedules/builtin
CLI=".venv/bin/odelt-export schedule builtin:digits --cache-dir ${TMPDIR:-/tmp}/odelt-teacher"
$CLI --method ld3  --solver euler --nfe 4 --out $OUT/ld3-euler-4.json
$CLI --method ld3  --solver ipndm --nfe 4 --out $OUT/ld3-ipndm-4.json
$CLI --method ld3  --solver euler --nfe 8 --out $OUT/ld3-euler-8.json
$CLI --method amed --solver ipndm --nfe 4 --out $OUT/amed-ipndm-4.json
$CLI --method amed --solver euler --nfe 4 --out $OUT/amed-euler-4.json
$CLI --method ld3  --solver euler --lengths auto --block-budget "${BUDGET:-16}" --out $OUT/ld3-euler-b"${BUDGET:-16}".json
