"""Shared fixtures: a fresh random seed for every test, recorded so that a failure can be replayed.

Every test gets ``torch.manual_seed(seed)`` with a new random ``seed`` (printed, so pytest shows it with
the failure, and stored in the test report's ``user_properties``). Replay with
``SGC_TEST_SEED=<seed> pytest tests/...``.
"""

from __future__ import annotations

import os
import random

import pytest
import torch


@pytest.fixture(autouse=True)
def seed(request) -> int:
    value = int(os.environ.get("SGC_TEST_SEED") or random.SystemRandom().randrange(2**31))
    torch.manual_seed(value)
    random.seed(value)
    request.node.user_properties.append(("seed", value))
    print(f"[{request.node.nodeid}] SGC_TEST_SEED={value}")
    return value


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): faster on a
    busy 2-core machine, and the same reduction order in every run."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
