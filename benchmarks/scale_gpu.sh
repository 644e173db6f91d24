#!/usr/bin/env bash
# benchmarks/scale.py on one GPU: the spectral engine against the dense method and the
# floor (N = 1,000 to 50,000), the GA/LoRA step ratio, and one MuScleLoRA run of a
# BERT-base-sized model (random weights) on the example config's SST-2 subset. Run from
# the repository root; weights and data come from .device/ (git-ignored):
#   .device/minilm             all-MiniLM-L6-v2 saved as fp16 safetensors (tokenizer + GA section)
#   .device/sst-2/addsent/     the files of ../shared/data/sst-2/addsent
# The table goes to $OUT/scale_cuda.md. LIMIT caps the seconds spent running.
set -u
out=${OUT:-runs/scale-gpu-out}
mkdir -p "$out"
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout "${LIMIT:-300}" python3 benchmarks/scale.py --device cuda --sections "${SECTIONS:-spectral,ga,bertbase}" \
  --large 20000 50000 --data .device/sst-2 --model .device/minilm --out "$out/scale_cuda.md"
echo "benchmark exit: $?"
exit 0
