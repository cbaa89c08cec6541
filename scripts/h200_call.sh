#!/usr/bin/env bash
# One device call on a lent H200 (issue 21): the stages named on the command line, in order, each
# timed, each writing its JSON under $OUT; a failing stage is reported and the next one still runs.
#
#   bash scripts/h200_call.sh probe ceilings throughput kernels checkpoint    # call 1
#   bash scripts/h200_call.sh sweep                                           # call 2
#   bash scripts/h200_call.sh scaling_lr    # lr probe, its pick per size, the sweep at it (issue 16)
#
# What it needs beside the tracked tree (carried, all ignored by git):
#   .nanogpt/model.py   karpathy/nanoGPT's model file, fetched (never committed)
#   .whl/*.whl          Liger-Kernel (pure Python), installed into /tmp/site for the kernel bench
#   .gpu/rs/nanigpt_rs  the Rust extension built here (abi3, loads on the device's python 3.12)
#   .gpu/plan.json      `python scripts/gpu_session.py plan workflow/config/h200.yaml` (sweep)
#   .gpu/plan_probe.json, .gpu/plan_sweep.json   the plans of docs/measurements/h200/scaling_lr/
#                       probe.yaml and config.yaml (scaling_lr)
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
export PYTHONPATH="$PWD/.gpu/rs:$PYTHONPATH"
HW=results/hardware
status=0

stage() {  # stage NAME COMMAND...: run, time, log to $OUT/NAME.log
  local name=$1
  shift
  local t0=$SECONDS
  echo "=== $name: $*"
  if "$@" >"$OUT/$name.log" 2>&1; then
    echo "=== $name ok in $((SECONDS - t0)) s"
  else
    echo "=== $name FAILED ($?) in $((SECONDS - t0)) s; tail:"
    tail -25 "$OUT/$name.log"
    status=1
  fi
}

for what in "$@"; do
  case $what in
    probe)
      stage probe bash -c 'nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.draw,memory.used --format=csv;
        python3 -c "import torch, triton, sys; print(sys.version, torch.__version__, triton.__version__, torch.cuda.get_device_name())";
        python3 -c "import nanigpt_rs; print(\"nanigpt_rs ok\")"; python3 -c "import liger_kernel; print(\"liger ok\")"'
      cat "$OUT/probe.log" ;;
    ceilings)
      slug=$(python3 -c "from nanigpt.analysis.ceilings import device_slug; print(device_slug('cuda'))")
      stage ceilings python3 -m nanigpt.analysis.ceilings --device cuda --out "$HW/$slug.json"
      cp "$HW/$slug.json" "$OUT/" 2>/dev/null ;;
    throughput)
      stage throughput python3 -m nanigpt.bench.throughput --preset gpu --nanogpt-dir .nanogpt \
        --out "$OUT/throughput.json" --steps 10 --windows 3 --warmup 5 --profile-steps 3
      tail -8 "$OUT/throughput.log"
      if [[ -e "$OUT/throughput_failures.json" ]]; then  # the Triton ops as custom_ops instead
        NANIGPT_TRITON_OP=0 stage throughput_custom_op python3 -m nanigpt.bench.throughput \
          --preset gpu --impls ours_triton --out "$OUT/throughput_custom_op.json" --steps 10 \
          --windows 3 --warmup 5 --profile-steps 3
      fi ;;
    kernels)
      stage kernels python3 -m nanigpt.kernels.bench --preset gpu --out "$OUT/kernels_bench.json" ;;
    checkpoint)
      stage checkpoint python3 -m nanigpt.bench.checkpoint --device cuda --model gpt2_124M gpt2_350M \
        --methods torch_sha256 safetensors rust --repeats 3 --dir /tmp/ckpt --out "$OUT/checkpoint_h200.parquet" ;;
    trainer)  # the trainer's own loop (lagged metrics) at GPT-2 124M and 350M, profiled
      stage trainer python3 scripts/gpu_session.py throughput --out "$OUT" --steps 40 ;;
    sweep)
      stage sweep python3 scripts/gpu_session.py sweep --plan .gpu/plan.json --out "$OUT" \
        --gpus 1 --per-gpu 4 --deadline-s 420
      tail -15 "$OUT/sweep.log" ;;
    scaling_lr)  # one call: the machine is given back when idle, so the pick happens on it
      mkdir -p /tmp/probe_out
      stage lr_probe python3 scripts/gpu_session.py sweep --plan .gpu/plan_probe.json \
        --out /tmp/probe_out --gpus 1 --per-gpu 6 --deadline-s 150
      stage pick_lr python3 scripts/gpu_session.py pick-lr --probe .gpu/plan_probe.json \
        --plan .gpu/plan_sweep.json --out .gpu/plan_picked.json --picks "$OUT/lr_picks.json"
      cat "$OUT/lr_picks.json"
      stage sweep python3 scripts/gpu_session.py sweep --plan .gpu/plan_picked.json --out "$OUT" \
        --gpus 1 --per-gpu 6 --deadline-s 300
      tail -15 "$OUT/sweep.log" ;;
    *)
      echo "unknown stage $what"; status=2 ;;
  esac
done
ls -la "$OUT"
exit $status
