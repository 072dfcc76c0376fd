"""PPO stage 2 of 2 (seed tutorial entry point): train one iteration on the experience `make_experience.py` wrote
to --save_data_file and save the checkpoint. Same as `mindrlhf ppo --align_type rlhf_stages --stage train`."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from mindrlhf.cli.ppo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="ppo_train.py", default_stage="train", align_type="rlhf_stages"))
