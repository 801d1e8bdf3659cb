"""Test-wide settings: small thread pool, deterministic seeds, hypothesis profile."""

import os

# With two cores shared by several processes, busy-waiting OpenMP threads slow torch down badly.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

settings.register_profile(
    "storyreel", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, print_blob=True
)
settings.load_profile("storyreel")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (run on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def one_thread():
    """Tiny models run fastest (and reproducibly) on one thread; the session's setting is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The `debug` recipe's StoryWorld data, synthesised once for every training test."""
    from storyreel.train import load_recipe
    from storyreel.train.scenes import ensure_dataset

    path = tmp_path_factory.mktemp("storyworld") / "debug"
    return ensure_dataset(path, load_recipe("debug").data.synth, progress=False)
