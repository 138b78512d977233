import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run in the interpreter on CPU tensors; read when the kernels are defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from .helpers import PARITY_DIR  # noqa: E402  (after TRITON_INTERPRET: it imports medmamba.ops)


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not (PARITY_DIR / "medmamba_official_parity.pt").is_file():
        pytest.skip(f"parity fixture not found at {PARITY_DIR} (set MEDMAMBA_PARITY_DIR to the folder holding "
                    f"medmamba_official_parity.pt and official_state_dict_layout.json)")
    return PARITY_DIR


@pytest.fixture(scope="session")
def parity(parity_dir):
    return torch.load(parity_dir / "medmamba_official_parity.pt", weights_only=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
