#!/usr/bin/env bash
# GRPO (and its family: the recipe's grpo section) on several devices, like run_distribute_train.sh for PPO:
#
#   bash scripts/run_distribute_grpo.sh DATA_DIR RANK_TABLE_FILE RANK_START LOCAL_DEVICE_NUM CONFIG [grpo flags ...]
#   bash scripts/run_distribute_grpo.sh data/gsm8k_prompts.mindrecord hccl_8p_01234567_127.0.0.1.json 0 8 \
#        model_configs/gpt2_config/run_gpt2_tiny_grpo.yaml --sft_checkpoint sft/checkpoint
#
# DATA_DIR: prompt MindRecord (mindrlhf convert-prompts; reference answers ride along). RANK_START: global rank of
# this node's first device. LOCAL_DEVICE_NUM: devices used on this node. CONFIG: the policy recipe with its grpo
# section. Further flags go to examples/grpo_tutorial/train_grpo.py (= mindrlhf grpo) unchanged. On Ascend one
# process per local device runs with RANK_ID / DEVICE_ID / RANK_TABLE_FILE set; on CPU/GPU one device runs the
# script directly and more start LOCAL_DEVICE_NUM msrun workers (scripts/launch_ranks.sh). Each rank samples its own
# prompts' groups; groups are never split between ranks.
set -euo pipefail

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[[ $# -ge 5 ]] || { echo "run_distribute_grpo.sh: expected at least 5 arguments, got $#" >&2; usage; }
DATA_DIR=$1 RANK_TABLE=$2 RANK_START=$3 LOCAL_DEVICE_NUM=$4 CONFIG=$5
shift 5
[[ $RANK_START =~ ^[0-9]+$ ]] || { echo "run_distribute_grpo.sh: RANK_START must be a whole number, got '$RANK_START'" >&2; usage; }
[[ $LOCAL_DEVICE_NUM =~ ^[1-9][0-9]*$ ]] || { echo "run_distribute_grpo.sh: LOCAL_DEVICE_NUM must be a positive whole number, got '$LOCAL_DEVICE_NUM'" >&2; usage; }
for pair in "DATA_DIR:$DATA_DIR" "CONFIG:$CONFIG"; do
    [[ -e ${pair#*:} ]] || { echo "run_distribute_grpo.sh: ${pair%%:*} not found: ${pair#*:}" >&2; exit 2; }
done
SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$SCRIPTS/launch_ranks.sh"
launch_ranks run_distribute_grpo.sh "$SCRIPTS/../examples/grpo_tutorial/train_grpo.py" "$RANK_TABLE" "$RANK_START" \
    "$LOCAL_DEVICE_NUM" --config "$CONFIG" --dataset_dir "$DATA_DIR" "$@"
