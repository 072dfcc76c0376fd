"""HCCL rank table for Ascend multi-device runs (the predecessor's entry point); same as
`python -m mindrlhf.tools.rank_table`. Example:

    python scripts/hccl_tools.py --device_num "[0,8)"      # writes hccl_8p_01234567_<host ip>.json
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mindrlhf.tools.rank_table import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
