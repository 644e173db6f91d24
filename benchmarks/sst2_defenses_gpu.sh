#!/usr/bin/env bash
# Every defense on SST-2 with all-MiniLM-L6-v2 at the paper's budget (full training
# set, 10 epochs) on one GPU, several runs sharing the card. Run from the repository
# root; weights and data come from .device/ (git-ignored), as for sst2_vanilla_gpu.sh:
#   .device/minilm             all-MiniLM-L6-v2 saved as fp16 safetensors (loaded as float32)
#   .device/sst-2/<attack>/    the files of ../shared/data/sst-2/<attack> the configs use
# Runs live in runs/gpu-defenses/ (kept between calls on a warm machine, so a second
# call resumes); results.json, heatmap.png and log.txt of each finished run are
# copied to $OUT/runs/, and the table to $OUT/. LIMIT caps the seconds spent running.
# Env: ATTACKS, DEFENSES (variants too, e.g. DEFENSES="muscle muscle@ga.subspace=4,ga.pure=true"),
# SEEDS, PARALLEL, SUFFIX.
set -u
out=${OUT:-runs/gpu-defenses-out}
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
timeout "${LIMIT:-540}" python3 benchmarks/sst2_defenses.py --budget paper --parallel "${PARALLEL:-8}" \
  --model .device/minilm --data .device/sst-2 --out runs/gpu-defenses --suffix "${SUFFIX:-}" \
  --attacks ${ATTACKS:-badnets addsent} --defenses ${DEFENSES:-vanilla muscle muscle-paper reference-only} \
  --seeds ${SEEDS:-0}
echo "benchmark exit: $?"
mkdir -p "$out/runs"
for run in runs/gpu-defenses/*/; do
  name=$(basename "$run")
  [ -f "$run/results.json" ] || { tail -n 5 "$run/log.txt" 2>/dev/null | sed "s/^/$name: /"; continue; }
  mkdir -p "$out/runs/$name"
  cp "$run"/{results.json,heatmap.png} "$out/runs/$name/" 2>/dev/null
  grep -v -E "Loading weights|LOAD REPORT|MISSING|^Key|^---|^Notes|^$|warn" "$run/log.txt" | tail -n 20 > "$out/runs/$name/log.txt"
done
cp benchmarks/results/sst2_defenses_paper*.{md,csv} "$out/" 2>/dev/null
exit 0
