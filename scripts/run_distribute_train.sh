#!/usr/bin/env bash
# PPO (stage 3) on several devices, as in the seed tutorial:
#
#   bash scripts/run_distribute_train.sh DATA_DIR RANK_TABLE_FILE RANK_START LOCAL_DEVICE_NUM SFT_MODEL_PATH \
#        REWARD_MODEL_PATH [train.py flags ...]
#   bash scripts/run_distribute_train.sh /path/to/dataset.mindrecord /path/to/hccl_1p_0_127.0.0.1.json 0 1 \
#        /path/to/run_gpt2_124m_ppo.yaml /path/to/run_gpt2_124m.yaml --sft_checkpoint sft/checkpoint
#
# DATA_DIR: prompt MindRecord (examples/rlhf_train_tutorial/rlhf_data.py). RANK_START: global rank of this node's
# first device. LOCAL_DEVICE_NUM: devices used on this node. SFT_MODEL_PATH / REWARD_MODEL_PATH: the policy and
# reward recipes. Further flags go to train.py unchanged (checkpoints, --output_dir, --set ...).
# On Ascend (npu-smi present) one process per local device i = 0..LOCAL_DEVICE_NUM-1 runs with DEVICE_ID = i,
# RANK_ID = RANK_START + i, RANK_SIZE = the devices of the validated rank table and RANK_TABLE_FILE exported, each
# logging to output/log/rank_<RANK_ID>/mindformer.log. On CPU/GPU the rank table is not needed: one device runs
# train.py directly, more start LOCAL_DEVICE_NUM workers through scripts/msrun_launcher.sh.
set -euo pipefail

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[[ $# -ge 6 ]] || { echo "run_distribute_train.sh: expected at least 6 arguments, got $#" >&2; usage; }
DATA_DIR=$1 RANK_TABLE=$2 RANK_START=$3 LOCAL_DEVICE_NUM=$4 SFT_MODEL_PATH=$5 REWARD_MODEL_PATH=$6
shift 6
[[ $RANK_START =~ ^[0-9]+$ ]] || { echo "run_distribute_train.sh: RANK_START must be a whole number, got '$RANK_START'" >&2; usage; }
[[ $LOCAL_DEVICE_NUM =~ ^[1-9][0-9]*$ ]] || { echo "run_distribute_train.sh: LOCAL_DEVICE_NUM must be a positive whole number, got '$LOCAL_DEVICE_NUM'" >&2; usage; }
for pair in "DATA_DIR:$DATA_DIR" "SFT_MODEL_PATH:$SFT_MODEL_PATH" "REWARD_MODEL_PATH:$REWARD_MODEL_PATH"; do
    [[ -f ${pair#*:} ]] || { echo "run_distribute_train.sh: ${pair%%:*} not found: ${pair#*:}" >&2; exit 2; }
done
SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$SCRIPTS/launch_ranks.sh"
launch_ranks run_distribute_train.sh "$SCRIPTS/../examples/rlhf_train_tutorial/train.py" "$RANK_TABLE" "$RANK_START" \
    "$LOCAL_DEVICE_NUM" --dataset_dir "$DATA_DIR" --sft_model_path "$SFT_MODEL_PATH" \
    --reward_model_path "$REWARD_MODEL_PATH" "$@"
