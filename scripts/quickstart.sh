#!/usr/bin/env bash
# The README's first command: set up the project venv (first run only), then run `mindrlhf demo` on CPU: a proxy
# reward model and PPO on the bundled pretrained TinyStories-656K, judged by a gold judge on held-out openings (a
# few minutes on 2 cores). It ends with the before / after table and writes report.md, plots and TensorBoard events
# under output/demo. Extra arguments go to `mindrlhf demo` (for example --output_dir runs/demo,
# --ppo_iterations 40, or --task cvalues for the seeds' SFT -> reward model -> PPO on Chinese data).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh base
exec "$MINDRLHF_PYTHON" -m mindrlhf.cli.main demo "$@"
