#!/usr/bin/env bash
# PPO (stage 3) on one device:
#
#   bash scripts/run_standalone_train.sh DATA_DIR SFT_MODEL_PATH REWARD_MODEL_PATH [train.py flags ...]
#   bash scripts/run_standalone_train.sh ppo_prompts.mindrecord model_configs/gpt2_config/run_gpt2_tiny_ppo.yaml \
#        model_configs/gpt2_config/run_gpt2_tiny_rm.yaml --sft_checkpoint sft/checkpoint --reward_checkpoint rm/checkpoint
#
# DATA_DIR: prompt MindRecord (examples/rlhf_train_tutorial/rlhf_data.py); SFT_MODEL_PATH / REWARD_MODEL_PATH: the
# policy and reward recipes; further flags go to train.py unchanged. DEVICE_ID (default 0) picks the device on
# GPU/Ascend. Logs: stdout and <output_dir>/log/rank_0/info.log.
set -euo pipefail

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[[ $# -ge 3 ]] || { echo "run_standalone_train.sh: expected at least 3 arguments, got $#" >&2; usage; }
DATA_DIR=$1 SFT_MODEL_PATH=$2 REWARD_MODEL_PATH=$3
shift 3
for pair in "DATA_DIR:$DATA_DIR" "SFT_MODEL_PATH:$SFT_MODEL_PATH" "REWARD_MODEL_PATH:$REWARD_MODEL_PATH"; do
    [[ -f ${pair#*:} ]] || { echo "run_standalone_train.sh: ${pair%%:*} not found: ${pair#*:}" >&2; exit 2; }
done
SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export DEVICE_ID=${DEVICE_ID:-0} RANK_ID=0 RANK_SIZE=1
exec python "$SCRIPTS/../examples/rlhf_train_tutorial/train.py" --dataset_dir "$DATA_DIR" \
    --sft_model_path "$SFT_MODEL_PATH" --reward_model_path "$REWARD_MODEL_PATH" "$@"
