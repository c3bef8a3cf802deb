#!/usr/bin/env bash
# Deviation, profile and benchmark of a CNN (ResNet-18) and a ViT (ViT-B/16) at 224 px on one CUDA GPU,
# ending with one table. Budget: under 8 minutes on an H100-class card (each step has its own timeout).
#   benchmarks/gpu_efficiency.sh [OUT_DIR]        (default runs/efficiency/gpu)
# Settings: configs/efficiency/gpu_{deviation,profile,benchmark}.yaml; models: configs/supervised/*.yaml.
# Inputs are synthetic tensors: no dataset folder is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${1:-runs/efficiency/gpu}
export NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled

# Fail fast, before any model is built, when there is no CUDA device.
"$PY" - <<'PYEOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_efficiency.sh needs a CUDA GPU, but torch {torch.__version__} sees none "
             f"(torch.cuda.is_available() is False). Nothing was run; the CPU checks are "
             f"`fimvision-efficiency ... --device=cpu`.")
print(f"GPU: {torch.cuda.get_device_name()} | torch {torch.__version__} | CUDA {torch.version.cuda}")
PYEOF

CNN=(--config configs/supervised/resnet18_color.yaml --data.init_args.image_size=224
     --data.init_args.root=/nonexistent)
VIT=(--config configs/supervised/vit_color.yaml --model.init_args.backbone=vit_base_patch16_224
     "--model.init_args.backbone_kwargs={patch_size: 16, drop_path_rate: 0.0}" --data.init_args.image_size=224
     --data.init_args.root=/nonexistent)
mkdir -p "$OUT"
START=$SECONDS
for model in cnn vit; do
  if [ "$model" = cnn ]; then ARGS=("${CNN[@]}"); else ARGS=("${VIT[@]}"); fi
  for sub in deviation profile benchmark; do
    echo "== $model $sub ($((SECONDS - START)) s so far)"
    timeout 200 "$PY" -m fimvision.efficiency.cli "$sub" "${ARGS[@]}" --device=cuda \
      --settings="configs/efficiency/gpu_$sub.yaml" --out="$OUT/$model" > "$OUT/$model.$sub.log" 2>&1 \
      || { echo "$model $sub failed; last lines of $OUT/$model.$sub.log:"; tail -20 "$OUT/$model.$sub.log"; exit 1; }
  done
done
echo "== done in $((SECONDS - START)) s; results in $OUT"
"$PY" -m fimvision.efficiency.summary "$OUT"
