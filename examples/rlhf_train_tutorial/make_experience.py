"""PPO stage 1 of 2 (seed tutorial entry point): make the next iteration's experience and write it to
--save_data_file; `ppo_train.py` then trains on it. Same as
`mindrlhf ppo --align_type rlhf_stages --stage experience`."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from mindrlhf.cli.ppo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="make_experience.py", default_stage="experience", align_type="rlhf_stages"))
