#!/usr/bin/env bash
# The README's first command: set up the project venv (first run only), then run the whole pipeline on the bundled
# data on CPU: SFT -> reward model -> PPO (`mindrlhf demo`, a few minutes on 2 cores). It ends with the before /
# after table and writes report.md, plots and TensorBoard events under output/demo. Extra arguments go to
# `mindrlhf demo` (for example --output_dir runs/demo or --ppo_iterations 48).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh base
exec "$MINDRLHF_PYTHON" -m mindrlhf.cli.main demo "$@"
