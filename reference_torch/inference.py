"""Running the PyTorch reference on images."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from core.config import DLNConfig
from reference_torch.model import DLN


def model_from_state(state: dict[str, np.ndarray], config: DLNConfig) -> DLN:
    """A DLN in eval mode holding `state` (torch names), loaded strictly."""
    model = DLN(config)
    model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in state.items()},
                          strict=True)
    return model.eval()


def make_enhancer(state: dict[str, np.ndarray], config: DLNConfig
                  ) -> Callable[[np.ndarray], np.ndarray]:
    model = model_from_state(state, config)

    def enhance(image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(image, np.float32).transpose(2, 0, 1))[None]
        with torch.no_grad():
            y = model(x)
        return y[0].numpy().transpose(1, 2, 0)

    return enhance
