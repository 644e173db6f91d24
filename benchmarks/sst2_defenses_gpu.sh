#!/usr/bin/env bash
# benchmarks/sst2_defenses.py on one GPU, several runs sharing the card, inside a
# fixed time. Run from the repository root; weights and data come from .device/
# (git-ignored):
#   .device/minilm             all-MiniLM-L6-v2 saved as fp16 safetensors (loaded as float32)
#   .device/sst-2/<attack>/    the files of ../shared/data/sst-2/<attack> the configs use
#
# Each argument is one benchmark invocation's own arguments (budget, attacks,
# defenses, seeds, --parallel, --suffix, --set ...); the invocations run side by
# side, each in its own runs/gpu-<i>/. Example:
#   LIMIT=500 OUT=$OUT bash benchmarks/sst2_defenses_gpu.sh \
#     "--budget paper --parallel 8 --defenses vanilla cube" \
#     "--budget cpu --parallel 4 --defenses bki --attacks stylebkd"
# Every 20 s, and once more when all are done or LIMIT seconds have passed, the
# finished runs' results.json (as archived in benchmarks/results/runs/) and the
# tables go into $OUT/results.tgz, and each unfinished run's last log lines into
# $OUT/unfinished.txt, so a run cut short loses none of what finished. Unpack
# the archive elsewhere and copy benchmarks/results/runs/* back, then rebuild
# the tables here with --no-run.
set -u
out=${OUT:-runs/gpu-defenses-out}
limit=${LIMIT:-540}
mkdir -p "$out"
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, peft, sklearn; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'peft', peft.__version__, 'sklearn', sklearn.__version__)"
mkdir -p runs && touch runs/.gpu-began
snapshot() {
  # finished runs (archived by the benchmark as each one ends) and the tables, newer than this call
  find benchmarks/results -newer runs/.gpu-began -type f \( -name '*.json' -o -name '*.md' -o -name '*.csv' \
    -o -name '*.txt' \) > runs/.gpu-files
  tar czf "$out/.results.tgz" -T runs/.gpu-files && mv "$out/.results.tgz" "$out/results.tgz"
  for log in runs/gpu-*/*/log.txt; do
    [ -f "$log" ] && [ ! -f "$(dirname "$log")/results.json" ] && tail -n 3 "$log" | sed "s|^|$log: |"
  done > "$out/unfinished.txt" 2>/dev/null
}
i=0
pids=()
for spec in "$@"; do
  i=$((i + 1))
  # shellcheck disable=SC2086  # each spec is a list of arguments
  python3 benchmarks/sst2_defenses.py --model .device/minilm --data .device/sst-2 --out "runs/gpu-$i" $spec \
    > "$out/bench-$i.log" 2>&1 &
  pids+=($!)
done
began=$SECONDS
while [ $((SECONDS - began)) -lt "$limit" ]; do
  alive=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] && break
  left=$((limit - (SECONDS - began)))
  sleep $((left < 20 ? (left > 0 ? left : 1) : 20))  # the last snapshot lands inside LIMIT
  snapshot
done
snapshot
echo "after $((SECONDS - began)) s: $(tr '\n' ' ' < runs/.gpu-files | wc -w) files in results.tgz"
grep -h -E "exit [0-9]+ after" "$out"/bench-*.log
exit 0
