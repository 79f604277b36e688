import os
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"

# 2 cores on CI: keep torch from oversubscribing when pytest runs in one process
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def data_dir() -> Path:
    return DATA
