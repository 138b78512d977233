"""Mixed precision: one autocast context for training and prediction alike."""
from __future__ import annotations

from typing import Optional

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device, amp: Optional[str]):
    """``torch.autocast`` for ``amp`` ("bf16", "fp16"), or a disabled one for None/"none"/"fp32"."""
    device_type = torch.device(device).type
    if amp in (None, "none", "fp32"):
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=AMP_DTYPES[amp])
