# Sourced by the device scripts (h200_call.sh, waterfall_call.sh, device_snakemake.sh): the lent
# GPU machine's environment. $OUT for what comes back, unbuffered Python, NVLink multicast off (the
# device README: a program that uses it can take the host's GPUs out of service), Triton compiling
# for the GPU (never the interpreter), and the carried wheels of .whl/ installed into $SITE, which
# goes on PYTHONPATH after the repository root.
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
unset TRITON_INTERPRET
SITE=${SITE:-/tmp/site}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || echo "wheel install failed" >&2
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
