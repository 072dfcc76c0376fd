# Sourced by the run_distribute_*.sh scripts: start one training script on this node's ranks.
#
#   launch_ranks NAME TRAIN_SCRIPT RANK_TABLE RANK_START LOCAL_DEVICE_NUM [script flags ...]
#
# On Ascend (npu-smi present) one process per local device i = 0..LOCAL_DEVICE_NUM-1 runs with DEVICE_ID = i,
# RANK_ID = RANK_START + i, RANK_SIZE = the devices of the validated rank table and RANK_TABLE_FILE exported, each
# logging to output/log/rank_<RANK_ID>/mindformer.log. On CPU/GPU the rank table is not needed: one device runs the
# script directly, more start LOCAL_DEVICE_NUM workers through msrun_launcher.sh. NAME prefixes error messages.

launch_ranks() {
    local NAME=$1 TRAIN=$2 RANK_TABLE=$3 RANK_START=$4 LOCAL_DEVICE_NUM=$5
    shift 5
    local SCRIPTS order validated rank pids failed i
    SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    if ! command -v npu-smi >/dev/null 2>&1; then
        if [[ $LOCAL_DEVICE_NUM -eq 1 ]]; then
            echo "no Ascend device (npu-smi not found): running $(basename "$TRAIN") as one process; the rank table is not used"
            exec python "$TRAIN" "$@"
        fi
        echo "no Ascend device (npu-smi not found): starting $LOCAL_DEVICE_NUM workers with msrun; the rank table is not used"
        order=$(printf '%q ' python "$TRAIN" "$@")
        exec bash "$SCRIPTS/msrun_launcher.sh" "$order" "$LOCAL_DEVICE_NUM" "${MASTER_PORT:-8118}" output/msrun_log True 600
    fi

    RANK_TABLE_FILE=$(realpath -m "$RANK_TABLE")
    [[ -f $RANK_TABLE_FILE ]] || { echo "$NAME: rank table not found: $RANK_TABLE_FILE" >&2; exit 2; }
    validated=$(PYTHONPATH="$SCRIPTS/..${PYTHONPATH:+:$PYTHONPATH}" python -m mindrlhf.tools.rank_table --validate "$RANK_TABLE_FILE")
    RANK_SIZE=$(sed -E 's/.*valid, ([0-9]+) devices.*/\1/' <<< "$validated")
    (( RANK_START + LOCAL_DEVICE_NUM <= RANK_SIZE )) || { echo "$NAME: ranks $RANK_START..$((RANK_START + LOCAL_DEVICE_NUM - 1)) are not all in the rank table ($RANK_SIZE devices)" >&2; exit 2; }
    export RANK_TABLE_FILE RANK_SIZE
    ulimit -u unlimited 2>/dev/null || true
    pids=()
    for ((i = 0; i < LOCAL_DEVICE_NUM; i++)); do
        rank=$((RANK_START + i))
        mkdir -p "output/log/rank_$rank"
        echo "start training for rank $rank, device $i"
        (export RANK_ID=$rank DEVICE_ID=$i; python "$TRAIN" "$@") &> "output/log/rank_$rank/mindformer.log" &
        pids+=($!)
    done
    failed=0
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || { echo "rank $((RANK_START + i)) failed: see output/log/rank_$((RANK_START + i))/mindformer.log" >&2; failed=1; }
    done
    return $failed
}
