#!/usr/bin/env bash
# The README's first command: set up the project venv (first run only), build the tiny GPT-2 from its bundled
# recipe and generate responses to the demo prompts with KV-cache decoding. Extra arguments go to
# `mindrlhf generate` (for example --prompt "..." or --set generation.max_new_tokens=64).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh base
exec "$MINDRLHF_PYTHON" -m mindrlhf.cli.main generate --config model_configs/gpt2_config/run_gpt2_tiny.yaml "$@"
