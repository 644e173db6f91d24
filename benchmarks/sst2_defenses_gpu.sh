#!/usr/bin/env bash
# benchmarks/sst2_defenses.py on one GPU, several runs sharing the card, inside a
# fixed time. Run from the repository root; weights and data come from .device/
# (git-ignored):
#   .device/minilm             all-MiniLM-L6-v2 saved as fp16 safetensors (loaded as float32)
#   .device/sst-2/<attack>/    the files of ../shared/data/sst-2/<attack> the configs use
#
# Each argument is one benchmark invocation's own arguments (budget, attacks,
# defenses, seeds, --parallel, --suffix, --set ...), split at spaces (a value
# cannot hold one); the invocations run side by side, each in its own
# runs/gpu-<i>/. Example:
#   LIMIT=500 OUT=$OUT bash benchmarks/sst2_defenses_gpu.sh \
#     "--budget paper --parallel 8 --defenses vanilla cube" \
#     "--budget cpu --parallel 4 --defenses bki --attacks stylebkd"
# Every 20 s, and once more when all are done or LIMIT seconds have passed, the
# finished runs' results.json (as archived in benchmarks/results/runs/) and the
# tables go into $OUT/results.tgz, and each unfinished run's last log lines into
# $OUT/unfinished.txt, so a run cut short loses none of what finished. Unpack
# the archive elsewhere and copy benchmarks/results/runs/* back, then rebuild
# the tables here with --no-run. At LIMIT the invocations still running are
# stopped with every run they started (each has its own process group); an
# invocation that exits with an error (a bad argument: at once) is reported
# with its log's last lines.
set -u
out=${OUT:-runs/gpu-defenses-out}
limit=${LIMIT:-540}
if ! [[ "$limit" =~ ^(0|[1-9][0-9]{0,5})$ ]]; then  # no leading zero (octal in $(( ))), at most 999999 s
  echo "LIMIT must be a whole number of seconds from 0 to 999999 without a leading zero, got '$limit'" >&2
  exit 2
fi
[ "$#" -gt 0 ] || { echo "give at least one benchmark invocation's arguments, e.g. \"--budget cpu --defenses vanilla\"" >&2; exit 2; }
for spec in "$@"; do
  [[ -n "${spec//[[:space:]]/}" ]] || { echo "an invocation's arguments are empty (it would run the whole default benchmark)" >&2; exit 2; }
done
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
report() {  # invocation $1 (pid $2) has ended: say how, with its log's end where it failed
  wait "$2"
  local code=$?
  codes[$1]=$code
  if [ "$code" != 0 ]; then
    echo "invocation $1 (${specs[$1]}) exited with $code after $((SECONDS - began)) s; its log ends:"
    tail -n 5 "$out/bench-$1.log" | sed 's/^/    /'
  fi
}
specs=("" "$@")
pids=("")
codes=("")
began=$SECONDS
set -f  # a spec's words are arguments, never file patterns
for i in $(seq 1 $#); do
  # shellcheck disable=SC2086  # each spec is a list of arguments
  setsid python3 benchmarks/sst2_defenses.py --model .device/minilm --data .device/sst-2 --out "runs/gpu-$i" \
    ${specs[$i]} > "$out/bench-$i.log" 2>&1 &
  pids[$i]=$!
  codes[$i]=""
done
set +f
while [ $((SECONDS - began)) -lt "$limit" ]; do
  alive=0
  for i in $(seq 1 $#); do
    if kill -0 "${pids[$i]}" 2>/dev/null; then alive=1
    elif [ -z "${codes[$i]}" ]; then report "$i" "${pids[$i]}"  # said at once, not at LIMIT
    fi
  done
  [ "$alive" = 0 ] && break
  left=$((limit - (SECONDS - began)))
  nap=$(( SECONDS - began < 20 ? 5 : 20 ))  # short naps at first: a bad argument is reported within seconds
  sleep $((left < nap ? (left > 0 ? left : 1) : nap))  # the last snapshot lands inside LIMIT
  snapshot
done
stopped=0
for i in $(seq 1 $#); do  # past LIMIT: stop the invocation and every run it started (its process group)
  if kill -0 "${pids[$i]}" 2>/dev/null; then
    echo "invocation $i (${specs[$i]}) stopped at LIMIT ($limit s)"
    kill -TERM -- "-${pids[$i]}" 2>/dev/null
    codes[$i]=stopped
    stopped=1
  elif [ -z "${codes[$i]}" ]; then
    report "$i" "${pids[$i]}"
  fi
done
if [ "$stopped" = 1 ]; then
  sleep 2  # once for all: then whatever is left of any group (a run ignoring TERM) is killed
  for i in $(seq 1 $#); do
    if [ "${codes[$i]}" = stopped ]; then
      kill -KILL -- "-${pids[$i]}" 2>/dev/null
      wait "${pids[$i]}" 2>/dev/null
    fi
  done
fi
snapshot
echo "after $((SECONDS - began)) s: $(tr '\n' ' ' < runs/.gpu-files | wc -w) files in results.tgz"
grep -h -E "exit [0-9]+ after" "$out"/bench-*.log
for i in $(seq 1 $#); do [ "${codes[$i]}" = 0 ] || exit 1; done
exit 0
