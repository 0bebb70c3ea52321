"""The PyTorch side of training: one step of the authors' torch.optim.Adam update.

This module is one framework's training *step* (and the trainer object holding the
model and optimizer); the loop, the schedule, logging and checkpoints are
dln/training_loop.py, shared with the Flax twin port/trainer.py. The hyper-parameters
come from a core.recipe.TrainingRecipe (the authors' by default).

Same interface as port.trainer.JaxTrainer (see dln.training_loop). Batches arrive NHWC
float32 from core.data and are transposed to NCHW; weights and Adam moments travel
as flat Flax-named arrays (weights.training_checkpoint), converted with weights/spec.py's
layout rules, so checkpoints are interchangeable between the two trainers.
Runs on CUDA when available (with --precision highest: no TF32), else on the CPU.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from core.config import DLNConfig
from core.recipe import AUTHORS_RECIPE, TrainingRecipe
from weights.training_checkpoint import (TrainingCheckpoint, flax_to_torch_state,
                                         torch_to_flax_state)
from reference_torch.losses import dln_loss
from reference_torch.model import DLN


def _tensor(array: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, np.float32)).to(device)


class TorchTrainer:
    def __init__(self, config: DLNConfig, state: TrainingCheckpoint,
                 recipe: TrainingRecipe = AUTHORS_RECIPE, device: str | None = None,
                 precision: str = "highest"):
        torch.manual_seed(recipe.seed)
        self.precision = precision
        self.config = config
        self.tv_weight = recipe.tv_weight
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda":
            # "highest": true float32 convolutions, like JAX's; "default": torch's own
            # default (TF32 convolutions on recent GPUs)
            torch.backends.cudnn.allow_tf32 = precision != "highest"
            torch.backends.cuda.matmul.allow_tf32 = False if precision == "highest" else \
                torch.backends.cuda.matmul.allow_tf32
        self.model = DLN(config).to(self.device)
        weights = flax_to_torch_state(state.params, config)
        self.model.load_state_dict({k: _tensor(v, self.device) for k, v in weights.items()},
                                   strict=True)
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=recipe.lr,
                                          betas=(recipe.beta1, recipe.beta2), eps=recipe.eps)
        self.count = int(state.count)
        if state.mu is not None and state.nu is not None:
            mu = flax_to_torch_state(state.mu, config)
            nu = flax_to_torch_state(state.nu, config)
            for name, param in self.model.named_parameters():
                self.optimizer.state[param] = {
                    "step": torch.tensor(float(self.count), dtype=torch.float32),
                    "exp_avg": _tensor(mu[name], self.device),
                    "exp_avg_sq": _tensor(nu[name], self.device)}

    def describe(self) -> str:
        if self.device.type == "cuda":
            return (f"torch {torch.__version__}: {torch.cuda.get_device_name(self.device)}, "
                    f"precision {self.precision}")
        return f"torch {torch.__version__}: cpu"

    def step(self, low: np.ndarray, high: np.ndarray, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x = _tensor(low.transpose(0, 3, 1, 2), self.device)
        y = _tensor(high.transpose(0, 3, 1, 2), self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss = dln_loss(self.model(x), y, self.tv_weight)
        loss.backward()
        self.optimizer.step()
        self.count += 1
        return loss.detach()

    @staticmethod
    def loss_value(loss: torch.Tensor) -> float:
        return float(loss.cpu())

    def _named(self, fn) -> dict[str, np.ndarray]:
        return {name: fn(param).detach().cpu().numpy().copy()
                for name, param in self.model.named_parameters()}

    def weights(self) -> dict[str, np.ndarray]:
        """The current weights, flat Flax names and layouts, float32 numpy."""
        return torch_to_flax_state(self._named(lambda p: p), self.config)

    def export(self) -> TrainingCheckpoint:
        params = self._named(lambda p: p)
        if not self.optimizer.state:
            return TrainingCheckpoint(torch_to_flax_state(params, self.config), count=self.count)
        mu = self._named(lambda p: self.optimizer.state[p]["exp_avg"])
        nu = self._named(lambda p: self.optimizer.state[p]["exp_avg_sq"])
        return TrainingCheckpoint(torch_to_flax_state(params, self.config),
                                  torch_to_flax_state(mu, self.config),
                                  torch_to_flax_state(nu, self.config), self.count)

    def enhancer(self, weights: dict[str, np.ndarray] | None = None
                 ) -> Callable[[np.ndarray], np.ndarray]:
        """HWC float32 image -> network output, with the current weights (or `weights`,
        flat Flax names, in a copy of the model)."""
        model = self.model
        if weights is not None:
            model = DLN(self.config).to(self.device)
            state = flax_to_torch_state(weights, self.config)
            model.load_state_dict({k: _tensor(v, self.device) for k, v in state.items()},
                                  strict=True)

        def enhance(image: np.ndarray) -> np.ndarray:
            x = _tensor(np.asarray(image, np.float32).transpose(2, 0, 1)[None], self.device)
            model.eval()
            try:
                with torch.no_grad():
                    return model(x)[0].cpu().numpy().transpose(1, 2, 0)
            finally:
                model.train()

        return enhance
