"""DPO (and IPO, hinge, conservative DPO, SimPO, ORPO as config switches) on preference pairs; same as
`mindrlhf dpo`. Run with --help for the flags."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from mindrlhf.cli.dpo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
