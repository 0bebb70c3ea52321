"""Training mode (`dln check --train`): both sides normalise with the batch's statistics, and
the BatchNorm running averages each updates are compared as rows of their own
(`bn1.running_mean`, `bn1.running_var`), so a momentum defect shows.

Conventions that differ, converted here so that a correct port agrees:
- momentum: torch's is the weight of the new batch (0.1), Flax's the weight of the old
  average (0.9): new = (1 - m) * old + m * batch in torch, momentum * old + (1 - momentum)
  * batch in Flax;
- the variance: torch's running_var takes the unbiased batch variance (n / (n - 1)), Flax's
  the biased one; the torch row is rewritten to the biased convention:
  expected = torch_new - (torch_new - (1 - m) * old) / n, n = elements per channel.
Dropout stays off on both sides (random masks cannot be compared). The torch model's
own weights and statistics are restored after the run: the conversion uses the ones
before the step.
"""

from __future__ import annotations

import numpy as np

from parity.engine.frontend import AS_IS
from parity.engine.torch_side import TorchCapture, record_torch

DROPOUT_KINDS = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
                 "FeatureAlphaDropout")


def record_training(torch_model, inputs, names=None, input_layouts=None,
                    extra_rules=None) -> TorchCapture:
    """record_torch in training mode, with the updated BatchNorm statistics appended as
    outputs (module, '.running_mean' / '.running_var') in Flax's conventions."""
    import torch

    from weights.rules import plan_conversion

    before = {k: v.detach().clone() for k, v in torch_model.state_dict().items()}
    modes = {m: m.training for m in torch_model.modules()}
    try:
        torch_model.train()
        for m in torch_model.modules():
            if any(c.__name__ in DROPOUT_KINDS for c in type(m).__mro__):
                m.eval()
        capture = record_torch(torch_model, inputs, names, input_layouts)
        after = {k: v.detach().cpu().numpy().copy() for k, v in torch_model.state_dict().items()}
    finally:
        torch_model.load_state_dict(before)
        for m, mode in modes.items():
            m.train(mode)
    modules = dict(torch_model.named_modules())
    for rule in plan_conversion(torch_model, extra_rules=extra_rules).rules:
        if rule.collection != "batch_stats" or rule.leaf not in ("mean", "var"):
            continue
        module = modules[rule.module]
        new = after[rule.torch_name].astype(np.float32)
        if rule.leaf == "var":
            shape = capture.input_shapes.get(rule.module)
            momentum = module.momentum
            if shape is not None and momentum:
                n = int(np.prod(shape)) // int(shape[1])
                old = before[rule.torch_name].cpu().numpy().astype(np.float32)
                new = new - (new - (1 - momentum) * old) / n
        suffix = ".running_mean" if rule.leaf == "mean" else ".running_var"
        capture.outputs[(rule.module, suffix)] = new
        capture.layouts[(rule.module, suffix)] = AS_IS
    # the root's rows stay last
    for key in [k for k in capture.outputs if k[0] == ""]:
        capture.outputs.move_to_end(key)
    return capture
