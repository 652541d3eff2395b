#!/usr/bin/env bash
# The backbone train-step tables (benchmarks.flax_vs_torch) on an accelerator, in fp32
# and in bf16, written to experiments/results/gpu_bench.md (+ one .json each).
#
#   bash experiments/gpu_bench.sh                      # on a GPU/TPU machine
#   bash experiments/gpu_bench.sh --steps=20           # extra flags go to both runs
#   GPU_BENCH_TINY=1 bash experiments/gpu_bench.sh     # smoke run: any machine, seconds
#
# Rows: ResNet-50 and ViT-B/16 train steps at 112 and 224 px, ResNet-50 frozen
# to stage 3, every method's digits step, and the ResNet-50 ERM / DAN / DANN / CDAN
# steps at 224 px fed by their input pipelines (JPEGs written for the run); and
# (not in the smoke run) five DANN digits seeds trained together against five
# separate runs (benchmarks.seeds, gpu_num_seeds.json) and whole DANN / MCC
# digits runs against TLlib's loop in PyTorch (benchmarks.end_to_end,
# gpu_end_to_end.md).
# On an accelerator the Flax step uses XLA's native convolutions (conv_impl
# 'auto') and jax.nn.dot_product_attention's default implementation; PyTorch
# runs the same step on CUDA (bf16 through autocast). GPU_BENCH_OUT changes the
# output folder (default experiments/results).
set -euo pipefail
cd "$(dirname "$0")/.."

out_dir=${GPU_BENCH_OUT:-experiments/results}
mkdir -p "$out_dir"
if [[ -n "${GPU_BENCH_TINY:-}" ]]; then
  args=(--models=small_cnn --sizes=32 --batch=8 --steps=1 --warmup=0 --torch=false
        --frozen=false --hugepages=false --matmul_size=256 --digits_steps=1 --adapt_sizes=32
        --adapt_backbone=resnet18 --adapt_images=31 --adapt_threads=1
        --remat_models=vit_tiny_patch16)
  # One row of each kind in fp32; the bf16 pass times the backbone row only.
  float32_args=(--digits_methods=dann --adapt_methods=dann)
  bfloat16_args=(--digits_methods= --adapt_methods=)
else
  # + ResNet-50 ERM, DAN, DANN and CDAN steps at 224 px, batch 32 + 32, input pipeline on.
  args=(--models=resnet50,vit_base_patch16 --sizes=112,224 --batch=32 --steps=10 --warmup=2
        --adapt_sizes=224)
  float32_args=()
  bfloat16_args=()
fi

device=$(python -c "import jax; print(jax.default_backend(), '|', jax.devices()[0].device_kind)")
for dtype in float32 bfloat16; do
  dtype_args="${dtype}_args[@]"
  python -m benchmarks.flax_vs_torch "${args[@]}" "${!dtype_args}" --dtype="$dtype" \
    --out="$out_dir/gpu_bench_$dtype" "$@"
done

if [[ -z "${GPU_BENCH_TINY:-}" ]]; then
  # Five seeds of DANN on digits in one process (--config.num_seeds=5, vmapped
  # step) against five separate runs, the whole run each (README command 1).
  python -m benchmarks.seeds --config=configs/dann.py:digits --seeds=5 --total_steps=2000 \
    --out="$out_dir/gpu_num_seeds.json"
  # Whole DANN / MCC digits runs, tljax against TLlib's loop in PyTorch (both on the GPU).
  python -m benchmarks.end_to_end --methods=dann,mcc --total_steps=2000 \
    --out="$out_dir/gpu_end_to_end"
fi

{
  echo "# Train step on an accelerator: Flax vs PyTorch, fp32 and bf16"
  echo
  echo "\`bash experiments/gpu_bench.sh $*\`${GPU_BENCH_TINY:+ (GPU_BENCH_TINY=1: smoke-test sizes)}; JAX backend: $device."
  echo "bf16: Flax computes in bf16 with fp32 parameters; PyTorch uses CUDA autocast (fp32 on CPU)."
  for dtype in float32 bfloat16; do
    echo
    echo "### $dtype"
    echo
    tail -n +2 "$out_dir/gpu_bench_$dtype.md"
  done
} > "$out_dir/gpu_bench.md"
rm -f "$out_dir"/gpu_bench_float32.md "$out_dir"/gpu_bench_bfloat16.md
echo "wrote $out_dir/gpu_bench.md"
