"""RLHF prompts JSONL -> MindRecord for PPO (seed tutorial entry point); same as `mindrlhf convert-prompts`.
Example (from any folder):

    python rlhf_data.py --tokenizer_name_or_path gpt2 --file_path prompts.jsonl \
        --output_path data/ppo_prompts.mindrecord --max_prompt_length 224 --seq_length 257 --pad_token_id 50256
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from mindrlhf.cli.common import setup_logging  # noqa: E402
from mindrlhf.data.convert_prompts import main  # noqa: E402

if __name__ == "__main__":
    setup_logging()  # the statistics (truncated prompts, ...) are logged, as with `mindrlhf convert-prompts`
    sys.exit(main())
