import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run in the interpreter on CPU tensors; read when the kernels are defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDMAMBA_SHARED", REPO.parent / "shared"))
PARITY_DIR = Path(os.environ.get("MEDMAMBA_PARITY_DIR", SHARED / "parity"))


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not (PARITY_DIR / "medmamba_official_parity.pt").is_file():
        pytest.skip(f"parity fixture not found at {PARITY_DIR} (set MEDMAMBA_PARITY_DIR to the folder holding "
                    f"medmamba_official_parity.pt and official_state_dict_layout.json)")
    return PARITY_DIR


@pytest.fixture(scope="session")
def parity(parity_dir):
    return torch.load(parity_dir / "medmamba_official_parity.pt", weights_only=True)


def rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """||ours - theirs|| / ||theirs||, the parity README's measure."""
    ours, theirs = ours.detach().double(), theirs.detach().double()
    return ((ours - theirs).norm() / theirs.norm().clamp_min(1e-30)).item()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
