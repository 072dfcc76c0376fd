#!/usr/bin/env bash
# Run a reward-model command (train, eval or infer) on several devices, as in the seed tutorial:
#
#   bash scripts/run_distribute_reward.sh "EXECUTE_ORDER" RANK_TABLE_FILE DEVICE_RANGE RANK_SIZE
#   bash scripts/run_distribute_reward.sh "python reward_train.py --config run_llama_2_7b_rm.yaml \
#        --train_dataset train_4096.mindrecord" hccl_8p_01234567_127.0.0.1.json [0,8] 8
#
# On Ascend (npu-smi present) one process per device of DEVICE_RANGE ([START,END), end exclusive whatever the
# bracket) is started with RANK_TABLE_FILE, RANK_SIZE, RANK_ID = device - START and DEVICE_ID = device exported; the
# rank table is validated first; each rank logs to output/log/rank_<RANK_ID>/mindformer.log. On CPU/GPU the rank
# table is not needed: the same command starts RANK_SIZE workers through scripts/msrun_launcher.sh.
# The script waits for every rank and exits non-zero if any failed.
set -euo pipefail

usage() {
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[[ $# -eq 4 ]] || { echo "run_distribute_reward.sh: expected 4 arguments, got $#" >&2; usage; }
EXECUTE_ORDER=$1 RANK_TABLE=$2 DEVICE_RANGE=$3 RANK_SIZE=$4
[[ $DEVICE_RANGE =~ ^\[([0-9]+),([0-9]+)[]\)]$ ]] || { echo "run_distribute_reward.sh: DEVICE_RANGE must look like [0,8], got '$DEVICE_RANGE'" >&2; usage; }
START=${BASH_REMATCH[1]} END=${BASH_REMATCH[2]}
[[ $RANK_SIZE =~ ^[0-9]+$ ]] || { echo "run_distribute_reward.sh: RANK_SIZE must be a whole number, got '$RANK_SIZE'" >&2; usage; }
(( END > START )) || { echo "run_distribute_reward.sh: DEVICE_RANGE $DEVICE_RANGE holds no device" >&2; exit 2; }
(( END - START == RANK_SIZE )) || { echo "run_distribute_reward.sh: DEVICE_RANGE $DEVICE_RANGE has $((END - START)) devices but RANK_SIZE is $RANK_SIZE" >&2; exit 2; }
SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! command -v npu-smi >/dev/null 2>&1; then
    echo "no Ascend device (npu-smi not found): starting $RANK_SIZE workers with msrun; the rank table is not used"
    exec bash "$SCRIPTS/msrun_launcher.sh" "$EXECUTE_ORDER" "$RANK_SIZE" "${MASTER_PORT:-8118}" output/msrun_log True 600
fi

RANK_TABLE_FILE=$(realpath -m "$RANK_TABLE")
[[ -f $RANK_TABLE_FILE ]] || { echo "run_distribute_reward.sh: rank table not found: $RANK_TABLE_FILE" >&2; exit 2; }
PYTHONPATH="$SCRIPTS/..${PYTHONPATH:+:$PYTHONPATH}" python -m mindrlhf.tools.rank_table --validate "$RANK_TABLE_FILE" \
    --expect "$RANK_SIZE" >/dev/null
export RANK_TABLE_FILE RANK_SIZE
ulimit -u unlimited 2>/dev/null || true
pids=()
for ((device = START; device < END; device++)); do
    rank=$((device - START))
    mkdir -p "output/log/rank_$rank"
    echo "start training for rank $rank, device $device"
    (export RANK_ID=$rank DEVICE_ID=$device; eval "$EXECUTE_ORDER") &> "output/log/rank_$rank/mindformer.log" &
    pids+=($!)
done
failed=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { echo "rank $i failed: see output/log/rank_$i/mindformer.log" >&2; failed=1; }
done
exit $failed
