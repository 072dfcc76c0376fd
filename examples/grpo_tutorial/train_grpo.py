"""GRPO (and Dr. GRPO, DAPO, RLOO, REINFORCE++ as config switches) against reward functions and / or a reward
model; same as `mindrlhf grpo`. Run with --help for the flags."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from mindrlhf.cli.grpo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="train_grpo.py"))
