"""Shared test configuration: this folder is on sys.path, so the shared test helpers import as ``testkit.<name>``
(test doubles, model factories, detection comparison); helpers of one folder sit beside its tests."""

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module's training steps: on a shared 2-core machine, oversubscribed threads make
    each step several times slower. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
