"""How much memory a comparison will need, known before anything is allocated.

What the engine keeps is every recorded output and the inputs, once per side, and the
parameters three times (the torch model's, the converted copy, the copy the JAX side
runs): `comparison_bytes`. For any model the outputs are counted by running it once on
meta tensors (shapes only: no memory, no compute; the first such run in a process costs
~2 s of torch start-up) with a hook on every compared module; a model that cannot run on
meta tensors is estimated as one input-sized output per compared module. A preset may
count its outputs from its structure instead. A run needing more than
MEMORY_BUDGET_BYTES is refused in one line.
"""

from __future__ import annotations

import math

from core.errors import UserError
from core.units import format_bytes

# Both sides keep every compared output; beyond this a run is refused before it starts
# (the development machine has 23 GiB; a dim-64 DLN on 96 x 128 needs 0.28 GiB, on the
# default 2 x 45 x 67 batch 0.14 GiB).
MEMORY_BUDGET_BYTES = 8 * 2**30
FLOAT_BYTES = 4


class TooMuchMemory(UserError, MemoryError):
    """A comparison that would need more memory than the budget."""


def capture_bytes(torch_model, input_shapes: list[tuple[int, ...]],
                  names: list[str] | None = None) -> int:
    """Bytes one comparison of `torch_model` on inputs of these shapes keeps (see above)."""
    import torch
    from torch.func import functional_call

    modules = dict(torch_model.named_modules())
    chosen = [n for n in modules if n] if names is None else list(names)
    inputs = sum(math.prod(s) for s in input_shapes)
    params = sum(t.numel() for t in torch_model.parameters())
    outputs = 0

    def count(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() if value.is_floating_point() else 0
        items = value.values() if isinstance(value, dict) else \
            value if isinstance(value, (tuple, list)) else ()
        return sum(count(v) for v in items)

    def hook(_module, _args, output):
        nonlocal outputs
        outputs += count(output)

    handles = [modules[n].register_forward_hook(hook) for n in chosen]
    try:
        meta = {name: torch.empty(t.shape, dtype=t.dtype, device="meta") for name, t in
                [*torch_model.named_parameters(), *torch_model.named_buffers()]}
        with torch.no_grad():
            result = functional_call(torch_model, meta, tuple(torch.empty(s, device="meta")
                                                              for s in input_shapes))
        outputs += count(result)  # after the call: the hooks have counted meanwhile
    except Exception:  # noqa: BLE001 - an op without a meta kernel: the rough estimate
        outputs = inputs * (len(chosen) + 1)
    finally:
        for handle in handles:
            handle.remove()
    return comparison_bytes(outputs, inputs, params)


def comparison_bytes(outputs: int, inputs: int, params: int) -> int:
    """Bytes for this many output, input and parameter values (see the module note)."""
    return FLOAT_BYTES * (2 * (outputs + inputs) + 3 * params)


def check_memory(need: int, what: str, advice: str) -> int:
    """`need` when it fits MEMORY_BUDGET_BYTES, else TooMuchMemory naming `what`."""
    if need > MEMORY_BUDGET_BYTES:
        raise TooMuchMemory(f"comparing {what} needs about {format_bytes(need)} (limit "
                            f"{format_bytes(MEMORY_BUDGET_BYTES)}); {advice}")
    return need
