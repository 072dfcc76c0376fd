"""PPO (seed tutorial entry point): every iteration makes experience and trains on it in this one process; same as
`mindrlhf ppo`. Run with --help for the flags."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from mindrlhf.cli.ppo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="train.py"))
