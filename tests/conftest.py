import os
import tempfile

# Tests never reach the network: the Hub is offline and its cache is a private temporary folder. Set before any
# test module imports huggingface_hub, which reads these once.
_HUB_CACHE = tempfile.mkdtemp(prefix="agdm-hub-cache-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = _HUB_CACHE
os.environ["HF_HOME"] = os.path.join(_HUB_CACHE, "home")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny tensors gain nothing from a second thread, and on a busy machine OpenMP threads waiting for each other made
# the tests up to 30x slower: the whole suite runs on one.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def hub_cache():
    return _HUB_CACHE
