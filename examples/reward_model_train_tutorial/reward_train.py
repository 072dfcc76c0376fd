"""Reward model train (seed tutorial entry point); same as `mindrlhf rm train`. Run with --help for the flags."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from mindrlhf.cli.reward import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("train"))
