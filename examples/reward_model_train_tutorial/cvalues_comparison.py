"""Preference JSONL -> MindRecord for reward-model training (seed tutorial entry point); same as
`python -m mindrlhf.data.convert_preference`. Example (from any folder):

    python cvalues_comparison.py --model llama --src_file data/jsonl/train.jsonl \
        --dst_file data/mindrecord/train_4096.mindrecord --seq_length 4096 --pad_token_id 2
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from mindrlhf.data.convert_preference import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
