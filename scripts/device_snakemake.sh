#!/usr/bin/env bash
# The graph's Snakemake on a GPU machine that has torch but no uv, Snakemake or package registry
# (the lent device): installs the wheels of scripts/device_wheels.sh (carried in .whl/) into
# /tmp/site, runs `python3 -m snakemake` with the arguments given, and packs what it built into
# $OUT/built.tar.gz (cut into 15 MiB parts when larger: the device returns files of 16 MiB at most).
#
#   bash scripts/device_snakemake.sh trained --configfile workflow/config/smoke_gpu.yaml --resources gpu=1
#
# The pack holds results/ (runs, job folders, logs, benchmarks) and .snakemake/metadata, without
# model weights and checkpoints (`*.pt`, `*.safetensors`, snapshots/: PACK_WEIGHTS=1 keeps them),
# and data/'s ground truth and tokenizers (the text and token shards are rebuilt here, bit for bit,
# from the config). README, "Snakemake on a GPU machine without uv", says how the figures are then
# built here from it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device_out}
SITE=${SITE:-/tmp/site}
mkdir -p "$OUT" /tmp/nanigpt-bin
if ! ls .whl/*.whl >/dev/null 2>&1; then
  echo "device_snakemake.sh: no wheels in .whl/ (run scripts/device_wheels.sh here and carry .whl)" >&2
  exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" .whl/*.whl || exit 2
# The rules call `python`; the image's interpreter with torch is `python3`, in a virtual
# environment: a wrapper, not a link (a link's interpreter would look for the venv beside the link).
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" >/tmp/nanigpt-bin/python
chmod +x /tmp/nanigpt-bin/python
export PATH="/tmp/nanigpt-bin:$PATH" PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

# `greedy`: the default `ilp` scheduler needs pulp (16 MiB with its solver), not carried.
python3 -m snakemake --scheduler greedy "$@" 2>&1 | tee "$OUT/snakemake.log"
status=${PIPESTATUS[0]}

weights=(--exclude='*.pt' --exclude='*.safetensors' --exclude='snapshots')
[[ ${PACK_WEIGHTS:-0} == 1 ]] && weights=()
keep=$(ls -d results .snakemake/metadata 2>/dev/null; find data -name ground_truth.json -o -name tokenizer.json 2>/dev/null)
tar czf "$OUT/built.tar.gz" "${weights[@]}" $keep
size=$(stat -c %s "$OUT/built.tar.gz")
if ((size > 15 * 1048576)); then
  split -b 15M -d "$OUT/built.tar.gz" "$OUT/built.tar.gz.part" && rm "$OUT/built.tar.gz"
  echo "packed $OUT/built.tar.gz.part* ($((size / 1048576)) MiB): cat built.tar.gz.part* > built.tar.gz"
else
  echo "packed $OUT/built.tar.gz ($((size / 1024)) KiB)"
fi
exit "$status"
