#!/usr/bin/env bash
# Wheels that let a GPU machine with torch alone (no uv, no Snakemake, no package registry: the
# lent device, python3 3.12) run the graph's training jobs with the same Snakemake as here:
#
#   bash scripts/device_wheels.sh            # here: fills .whl/ (ignored; carried to the device)
#   # there, from the repo root (README "Snakemake on a GPU machine without uv"):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#   PYTHONPATH=$PWD:/tmp/site python3 -m snakemake trained --configfile workflow/config/smoke_gpu.yaml \
#     --cores all --resources gpu=1 --scheduler greedy
#
# What it carries: Snakemake and every package its import closure and the Snakefile's planning
# layer (nanigpt.graph: jsonschema, yaml) need, at the versions uv.lock pins, minus what the
# device image already has (/work/.library/device/KINDS.md's package list: numpy, pyarrow,
# pyyaml, jinja2, requests, packaging, psutil, wrapt, tabulate, attrs, tqdm, ...); and the
# project's Rust extension, built here (abi3 for CPython >= 3.11, so it loads on 3.12).
# What it leaves out, and why (the device call carries at most 64 MiB, repo included):
# - pulp (with its bundled CBC solver): only Snakemake's default `ilp` scheduler imports it;
#   `--scheduler greedy` never does, and a GPU session's jobs are few and serial on the `gpu` resource.
# - polars, altair, vl-convert: the fits, aggregates and figures are drawn back here from the
#   returned runs (nanigpt.scaling, nanigpt.plots); `rule trained` asks the device for none of them.
# - torch, triton and the rest of the image; nbformat and its deps (Jupyter notebooks only, imported
#   lazily by Snakemake's notebook support, which no rule uses).
# Prints each wheel's size and the total; fails if the total would not fit beside the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.local/bin:$PATH"
DEST=${DEST:-.whl}
LIMIT_MIB=${LIMIT_MIB:-56}  # the call's 64 MiB, less the tracked tree (~5 MiB) and margin

CARRY=(
  snakemake
  snakemake-interface-common snakemake-interface-executor-plugins
  snakemake-interface-logger-plugins snakemake-interface-report-plugins
  snakemake-interface-scheduler-plugins snakemake-interface-storage-plugins
  argparse-dataclass configargparse connection-pool conda-inject docutils dpath
  gitpython gitdb smmap humanfriendly immutables platformdirs smart-open tenacity throttler yte
  sqlmodel sqlalchemy greenlet pydantic pydantic-core annotated-types typing-inspection
  typing-extensions
  jsonschema jsonschema-specifications referencing rpds-py
)

# In the device image already (KINDS.md's package list), so not carried: Snakemake's and the
# planning layer's needs among them. typing-extensions is carried anyway: pydantic needs a recent one.
DEVICE_HAS=(
  attrs certifi charset-normalizer idna jinja2 markupsafe packaging psutil pyyaml requests tabulate
  urllib3 wrapt numpy pyarrow tqdm pillow typing-extensions
)
# Left out on purpose (see above): needed by no command of `rule trained` under --scheduler greedy.
LEFT_OUT=(
  pulp nbformat fastjsonschema jupyter-core traitlets polars polars-runtime-32
)

# Published on PyPI as a source archive only (uv.lock lists no wheel for them).
SDIST_ONLY="connection-pool"

command -v uv >/dev/null || { echo "device_wheels.sh: uv not found (PATH=$PATH)" >&2; exit 2; }
python3 -m pip --version >/dev/null || { echo "device_wheels.sh: python3 -m pip not found" >&2; exit 2; }

# name==version of every locked package (markers dropped: none of CARRY has per-Python pins).
pins=$(uv export --frozen --no-hashes --no-dev --no-emit-project --no-header 2>/dev/null \
  | grep -E '^[A-Za-z0-9_.-]+==' | sed 's/ *;.*//')
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
for name in "${CARRY[@]}"; do
  pin=$(grep -i -E "^${name}==" <<<"$pins" | head -1) || true
  if [[ -z $pin ]]; then
    echo "device_wheels.sh: $name is not in uv.lock" >&2
    exit 2
  fi
  if [[ " $SDIST_ONLY " == *" $name "* ]]; then  # pure Python: its wheel is built here
    python3 -m pip wheel -q --no-deps --no-binary=:all: -w "$DEST" "$pin"
    continue
  fi
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$DEST" "$pin"
done

# The Rust extension (nanigpt_rs): abi3-py311 (rust/Cargo.toml), native linux tag (the device's
# glibc need not match a manylinux policy; pip accepts linux_x86_64 on any x86-64 Linux).
uv run --frozen maturin build --quiet --release --manifest-path rust/Cargo.toml \
  --compatibility linux --out "$DEST" 2>&1 | grep -v '^$' | tail -3

if ls "$DEST"/*.whl | grep -v -E -- '-(none-any|cp312-cp312-manylinux[^/]*_x86_64|cp3[0-9]+-abi3-(manylinux[^/]*|linux)_x86_64)\.whl$'; then
  echo "device_wheels.sh: the wheels above are neither pure Python nor cp312 x86-64" >&2
  exit 1
fi
ls -l "$DEST"/*.whl | awk '{printf "%9.2f MiB  %s\n", $5 / 1048576, $NF}'
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "total: $(awk -v b="$total" 'BEGIN {printf "%.1f", b / 1048576}') MiB in $(ls "$DEST"/*.whl | wc -l) wheels"
if ((total > LIMIT_MIB * 1048576)); then
  echo "device_wheels.sh: over ${LIMIT_MIB} MiB: the device call would not carry them" >&2
  exit 1
fi
