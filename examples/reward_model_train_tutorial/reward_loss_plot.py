"""Reward-model loss curve (seed tutorial entry point); same as `python -m mindrlhf.tools.loss_plot`. Example:

python reward_loss_plot.py --log_file output/log/rank_0/info.log --output_file_dir loss_dir
tensorboard --logdir=loss_dir --port=6006        # or open loss_dir/loss.png
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from mindrlhf.tools.loss_plot import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
