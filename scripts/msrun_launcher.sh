#!/usr/bin/env bash
# Start a command on several workers with MindSpore's own launcher (msrun dynamic cluster; CPU, GPU or Ascend).
#
#   bash scripts/msrun_launcher.sh "EXECUTE_ORDER" [WORKER_NUM]
#   bash scripts/msrun_launcher.sh "EXECUTE_ORDER" WORKER_NUM MASTER_PORT LOG_DIR JOIN CLUSTER_TIME_OUT
#   bash scripts/msrun_launcher.sh "EXECUTE_ORDER" WORKER_NUM LOCAL_WORKER MASTER_ADDR MASTER_PORT NODE_RANK LOG_DIR \
#        JOIN CLUSTER_TIME_OUT
#
# EXECUTE_ORDER is one quoted string, e.g. "python reward_train.py --config '/my dir/run.yaml'": quote paths with
# spaces inside it; a leading python/python3 is dropped (msrun starts the script with the python on PATH).
# Defaults: WORKER_NUM=8 LOCAL_WORKER=WORKER_NUM MASTER_ADDR=127.0.0.1 MASTER_PORT=8118 NODE_RANK=0
# LOG_DIR=output/msrun_log JOIN=True CLUSTER_TIME_OUT=600. msrun sets each worker's rank itself (no rank table).
set -euo pipefail

usage() {
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[[ $# -eq 1 || $# -eq 2 || $# -eq 6 || $# -eq 9 ]] || { echo "msrun_launcher.sh: expected 1, 2, 6 or 9 arguments, got $#" >&2; usage; }
EXECUTE_ORDER=$1
WORKER_NUM=${2:-8}
LOCAL_WORKER=$WORKER_NUM MASTER_ADDR=127.0.0.1 MASTER_PORT=8118 NODE_RANK=0
LOG_DIR=output/msrun_log JOIN=True CLUSTER_TIME_OUT=600
if [[ $# -eq 6 ]]; then
    MASTER_PORT=$3 LOG_DIR=$4 JOIN=$5 CLUSTER_TIME_OUT=$6
elif [[ $# -eq 9 ]]; then
    LOCAL_WORKER=$3 MASTER_ADDR=$4 MASTER_PORT=$5 NODE_RANK=$6 LOG_DIR=$7 JOIN=$8 CLUSTER_TIME_OUT=$9
fi
for pair in "WORKER_NUM:$WORKER_NUM" "LOCAL_WORKER:$LOCAL_WORKER" "MASTER_PORT:$MASTER_PORT" "NODE_RANK:$NODE_RANK" \
            "CLUSTER_TIME_OUT:$CLUSTER_TIME_OUT"; do
    [[ ${pair#*:} =~ ^[0-9]+$ ]] || { echo "msrun_launcher.sh: ${pair%%:*} must be a whole number, got '${pair#*:}'" >&2; usage; }
done
[[ $JOIN == True || $JOIN == False ]] || { echo "msrun_launcher.sh: JOIN must be True or False, got '$JOIN'" >&2; usage; }

eval "command_words=($EXECUTE_ORDER)"
[[ ${#command_words[@]} -gt 0 ]] || { echo "msrun_launcher.sh: EXECUTE_ORDER is empty" >&2; usage; }
case "${command_words[0]}" in python|python3|*/python|*/python3) command_words=("${command_words[@]:1}") ;; esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$LOG_DIR"
args=(--worker_num="$WORKER_NUM" --local_worker_num="$LOCAL_WORKER" --master_port="$MASTER_PORT"
      --log_dir="$LOG_DIR" --join="$JOIN" --cluster_time_out="$CLUSTER_TIME_OUT")
if [[ $WORKER_NUM != "$LOCAL_WORKER" ]]; then
    args+=(--master_addr="$MASTER_ADDR" --node_rank="$NODE_RANK")
fi
echo "msrun ${args[*]} ${command_words[*]}"
exec msrun "${args[@]}" "${command_words[@]}"
