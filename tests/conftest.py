"""Fixtures shared by the test suite: MindSpore execution mode, seeds and a temporary directory.

Every test starts in PYNATIVE mode with seeds 0 (the autouse ``seeded`` fixture), so the global MindSpore mode
never leaks from one test into the next. Tests that must hold in both modes request ``ms_mode``.
"""

from __future__ import annotations

import numpy as np
import mindspore as ms
import pytest

from tests.helpers import set_mode

SEED = 0


@pytest.fixture(autouse=True)
def seeded():
    """Seed numpy and MindSpore and start in PYNATIVE mode on CPU."""
    set_mode("pynative")
    np.random.seed(SEED)
    ms.set_seed(SEED)
    return SEED


@pytest.fixture(params=["graph", "pynative"])
def ms_mode(request, seeded):
    """Run the test once in GRAPH_MODE and once in PYNATIVE_MODE (CPU); yields the mode name."""
    set_mode(request.param)
    np.random.seed(seeded)
    ms.set_seed(seeded)
    return request.param


@pytest.fixture
def tmp_dir(tmp_path) -> str:
    """A fresh empty directory for this test, as a ``str`` path."""
    return str(tmp_path)
