#!/usr/bin/env bash
# The GPU half of issue 5, for a session lent an H100: two or three device calls of under 10 minutes.
#
#   bench    (~6 min)  benchmarks/step.py at full size (CIFAR-10 network at batch 512, and the CPU
#                      network) with the fp32/NCHW ablation, MFU and the bf16-vs-fp32 check of one GC
#                      step; then the CUDA tests (shared dropout, bf16 vs fp32, fast vs reference step,
#                      the sync-free hot loop) and a short CUDA training smoke run.
#   mnist    (~8 min)  MNIST IC vs GC from the mnist-ic / mnist-gc presets at equal steps (3000 each,
#                      classifier-FD and pixel sliced W2 every 1000 steps), sample grids of both.
#   compile  (~5 min)  benchmarks/step.py --size cifar10 --compile (gcflow's step under torch.compile).
#   precision (~4 min) benchmarks/precision.py --device cuda: fp32 (TF32 convolutions, PyTorch's
#                      default), bf16 and fp16 autocast against float64 on the GPU at N = 10, 80, 320 and
#                      1280, random and trained weights (the bf16 check at N = 10 alone says nothing about
#                      the end of the curriculum); then a digits-gc run with train.precision=auto (its
#                      switches are in metrics.jsonl).
#
# Prepare once on the development machine, in the repository root (the device machine reaches no
# network; POT and lion-pytorch are not in its image, and ../shared does not travel):
#
#   echo /.whl/ >> .git/info/exclude; echo /.gpu-data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl pot==0.9.7.post1 lion-pytorch==0.2.5
#   mkdir -p .gpu-data && cp -r ../shared/data/mnist .gpu-data/
#
# Then call the device tool's run with carry [".whl", ".gpu-data"] and, one call each,
#   command: "bash benchmarks/gpu_session.sh bench"    (then "... mnist", then "... compile")
# and bring the results home:
#   python benchmarks/step.py --from-json <files_at>/step_<gpu>.json     # BENCHMARKS.md + benchmarks/results
#   cp <files_at>/mnist_* benchmarks/results/                             # and fill in BENCHMARKS.md's MNIST table
#
# Everything is written under $OUT (at most 8 files per call come back: logs are merged).
# SMOKE=1 runs every part at toy sizes (minutes on a CPU), to check the script itself.
set -uo pipefail
what="${1:-bench}"
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
if [ -n "${SMOKE:-}" ]; then
    sizes=(tiny); mnist_steps=6; mnist_samples=100; tests=(tests/test_fast_step.py); digits_steps=4
    mnist_extra=(train.batch_size=16 network.channels=8 network.num_blocks=1)
else
    sizes=(cifar10 cpu); mnist_steps=3000; mnist_samples=5000; digits_steps=300; mnist_extra=()
    tests=(tests/test_dropout.py tests/test_fast_step.py tests/test_train.py)
fi
export PYTHONUNBUFFERED=1 GCFLOW_CACHE="${GCFLOW_CACHE:-/tmp/gcflow-cache}"
PY="${PYTHON:-python3}"  # the device image's python3 holds PyTorch
if ! "$PY" -c "import ot, lion_pytorch" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
"$PY" - <<'EOF' 2>&1 | tee "$OUT/$what.log"
import torch, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
import gcflow, ot, lion_pytorch  # noqa: F401  (the carried wheels are importable)
EOF

case "$what" in
bench)
    "$PY" benchmarks/step.py --size "${sizes[@]}" --ablate --out "$OUT/step_gpu.json" --markdown "$OUT/step_block.md" \
        2>&1 | tee -a "$OUT/bench.log"
    # Name the JSON after the device as step.py would (step_<gpu>.json).
    key=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['device_key'])" "$OUT/step_gpu.json") \
        && mv "$OUT/step_gpu.json" "$OUT/step_$key.json"
    "$PY" -m pytest -q -p no:cacheprovider -rs "${tests[@]}" 2>&1 | tee "$OUT/tests.log"
    # The agreement check at every curriculum stage, N = 1280 included (issue 11).
    "$PY" benchmarks/precision.py --device cuda --out "$OUT/precision_cuda.json" 2>&1 | tee -a "$OUT/bench.log"
    # A short CUDA training run through the CLI (fp32, channels-last, deferred non-finite check).
    "$PY" -m gcflow train --preset digits-gc --no-progress --overwrite --out /tmp/digits-gc "train.steps=$digits_steps" \
        "train.eval_every=$((digits_steps / 2))" "train.checkpoint_every=$((digits_steps / 2))" 2>&1 | tee -a "$OUT/tests.log"
    ;;
mnist)
    root="$PWD/.gpu-data/mnist"
    [ -f "$root/train-images-idx3-ubyte.gz" ] || { echo "no MNIST under $root; see the header of this script" | tee -a "$OUT/mnist.log"; exit 1; }
    common=(--no-progress --overwrite "data.root=$root" "train.steps=$mnist_steps" "train.eval_every=$((mnist_steps / 3))"
            "train.checkpoint_every=$((mnist_steps / 3))" "train.eval_samples=$mnist_samples" "${mnist_extra[@]}")
    # One tiny run first trains and caches the evaluation classifier, so the two runs below can share it.
    "$PY" -m gcflow train --preset mnist-ic --out /tmp/mnist-warm "${common[@]}" train.steps=1 train.eval_samples=100 \
        2>&1 | tee -a "$OUT/mnist.log"
    for kind in ic gc; do
        "$PY" -m gcflow train --preset "mnist-$kind" --out "/tmp/mnist-$kind" "${common[@]}" > "/tmp/mnist-$kind.log" 2>&1 &
    done
    wait
    for kind in ic gc; do
        cat "/tmp/mnist-$kind.log" >> "$OUT/mnist.log"
        cp "/tmp/mnist-$kind/samples.png" "$OUT/mnist_${kind}_samples.png"
        cp "/tmp/mnist-$kind/metrics.png" "$OUT/mnist_${kind}_metrics.png"
    done
    "$PY" - "$OUT/mnist_compare.json" <<'EOF' 2>&1 | tee -a "$OUT/mnist.log"
import json, sys
rows = {}
for kind in ("ic", "gc"):
    rows[kind] = [json.loads(l) for l in open(f"/tmp/mnist-{kind}/metrics.jsonl") if l.strip()]
json.dump({"note": "mnist-ic vs mnist-gc presets, both runs side by side on one GPU", "runs": rows},
          open(sys.argv[1], "w"), indent=2)
print("| step | IC classifier-FD | GC classifier-FD | IC pixel sliced W2 | GC pixel sliced W2 | floor (FD / W2) |")
print("|---|---|---|---|---|---|")
for a, b in zip(rows["ic"], rows["gc"]):
    print(f"| {a['step']} | {a.get('classifier_fd', float('nan')):.3f} | {b.get('classifier_fd', float('nan')):.3f} | "
          f"{a['pixel_sliced_w2']:.4f} | {b['pixel_sliced_w2']:.4f} | "
          f"{a.get('classifier_fd_noise_floor', float('nan')):.3f} / {a.get('pixel_sliced_w2_noise_floor', float('nan')):.4f} |")
EOF
    ;;
precision)
    if [ -n "${SMOKE:-}" ]; then ptiny=(--tiny); else ptiny=(); fi
    dev=cuda; "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || dev=cpu
    "$PY" benchmarks/precision.py --device "$dev" "${ptiny[@]}" --out "$OUT/precision_$dev.json" 2>&1 | tee -a "$OUT/precision.log"
    "$PY" benchmarks/precision.py --markdown "$OUT/precision_$dev.json" 2>&1 | tee -a "$OUT/precision.log"
    "$PY" -m gcflow train --preset digits-gc --no-progress --overwrite --out /tmp/digits-auto train.precision=auto \
        "train.steps=$((digits_steps * 10))" 2>&1 | tee -a "$OUT/precision.log"
    grep '"event"' /tmp/digits-auto/metrics.jsonl | tee -a "$OUT/precision.log"
    ;;
compile)
    "$PY" benchmarks/step.py --size "${sizes[0]}" --compile --rounds 3 --out "$OUT/step_gpu_compiled.json" \
        --markdown "$OUT/step_block_compiled.md" 2>&1 | tee -a "$OUT/compile.log"
    ;;
*)
    echo "usage: bash benchmarks/gpu_session.sh bench|mnist|compile|precision" >&2
    exit 2
    ;;
esac
