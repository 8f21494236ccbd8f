"""A fixture that runs torch on one thread for a test module: import `one_torch_thread` into the module to apply it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    # On a 2-core machine shared with other jobs, two torch threads made a
    # LoRA training step about ten times slower than one (0.45 s against
    # 0.05 s of CPU), because each thread waits for the other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
