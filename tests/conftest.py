import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread: tiny models gain nothing from more, and spinning threads stall on a busy 2-core machine.
torch.set_num_threads(1)

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture
def tiny_tok():
    from alignkit.models.tiny import tiny_tokenizer
    return tiny_tokenizer("chatml")


@pytest.fixture
def tiny_lm(tiny_tok):
    from alignkit.models.tiny import tiny_model
    return tiny_model(tiny_tok)


@pytest.fixture
def shared_data():
    path = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(path):
        pytest.skip("../shared/data is not present")
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny model saved as a Hugging Face folder, for commands that take a model path (read, never written)."""
    from alignkit.models.lora import save_model
    from alignkit.models.tiny import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("model") / "tiny"
    tok = tiny_tokenizer()
    save_model(tiny_model(tok), tok, str(path))
    return str(path)
