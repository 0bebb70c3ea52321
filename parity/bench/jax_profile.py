"""Where the JAX forward spends its time: per-op times from the JAX profiler, per layer.

One forward pass is traced with jax.profiler; every XLA op event is matched, by
instruction name, to the compiled HLO, whose metadata names the Flax layer that
emitted it (`feat_out_2/conv1_1/conv_Encoder/conv/conv_general_dilated`). Times
are summed per layer and per kind of work (3x3 convolutions, 1x1 convolutions,
concatenations, elementwise, reductions) and, with parity.bench.flops, turned into
GFLOP/s per layer: the profile that says which part keeps the forward from the
machine's matmul peak. Op times are thread time: ops on two threads at once can
add up to more than the wall time.
"""

from __future__ import annotations

import collections
import re
import tempfile
import time
from pathlib import Path

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*\S+\s+([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]+)"')


def hlo_layers(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (HLO opcode, op_name metadata) for every named instruction."""
    table = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if m:
            meta = _OP_NAME.search(line)
            table[m.group(1)] = (m.group(2), meta.group(1) if meta else "")
    return table


def layer_of(op_name: str) -> str | None:
    """'jit(f)/DLN/DLN.residual/feat_out_1/fusion/outlayer/conv/conv_general_dilated'
    -> 'feat_out_1.fusion.outlayer.conv' (the torch name of the conv or dense layer)."""
    for primitive in ("/conv_general_dilated", "/dot_general"):
        if op_name.endswith(primitive):
            path = op_name[: -len(primitive)].split("/")
            layers = [p for p in path if p and not p.startswith(("jit(", "DLN"))]
            return ".".join(p.replace("fc_", "fc.") for p in layers) or None
    return None


def kind_of(opcode: str, op_name: str, kernels: dict[str, int]) -> str:
    layer = layer_of(op_name)
    if layer is not None:
        k = kernels.get(layer)
        if k is None:
            return "dense (FA)"
        return f"{k}x{k} convolution" if k > 1 else "1x1 convolution"
    if opcode == "concatenate" or "concatenate" in op_name.rsplit("/", 1)[-1]:
        return "concatenate"
    if "reduce" in op_name.rsplit("/", 1)[-1]:
        return "reduction (FA means, brightness max)"
    return "elementwise (bias, PReLU, add, sub, scale)"


def profile_forward(apply, params, x, config, runs: int = 2) -> dict:
    """Trace `runs` forward passes of jit-compiled apply(params, x) (already warm)."""
    import jax

    from parity.bench.flops import layer_flops
    from weights.spec import tensor_specs

    height, width = x.shape[1:3]
    batch = x.shape[0]
    flops = {name.rsplit(".", 1)[0]: batch * f
             for name, f in layer_flops(config, height, width).items()}
    kernels = {s.torch_name.rsplit(".", 1)[0]: s.torch_shape[2]
               for s in tensor_specs(config) if s.kind == "conv"}
    table = hlo_layers(apply.lower(params, x).compile().as_text())
    per_layer: dict[str, float] = collections.defaultdict(float)
    per_kind: dict[str, float] = collections.defaultdict(float)
    walls = []
    with tempfile.TemporaryDirectory(prefix="dln-profile-") as tmp:
        with jax.profiler.trace(tmp):
            for _ in range(runs):
                start = time.perf_counter()
                apply(params, x).block_until_ready()
                walls.append(time.perf_counter() - start)
        trace = next(Path(tmp).rglob("*.xplane.pb"))
        data = jax.profiler.ProfileData.from_file(str(trace))
        for plane in data.planes:
            for line in plane.lines:
                for event in line.events:
                    if event.name not in table:
                        continue
                    opcode, op_name = table[event.name]
                    ms = event.duration_ns / 1e6 / runs
                    per_kind[kind_of(opcode, op_name, kernels)] += ms
                    layer = layer_of(op_name)
                    if layer is not None:
                        per_layer[layer] += ms
    layers = [{"layer": name, "ms": ms, "gflop": flops.get(name, 0) / 1e9,
               "gflops_per_s": flops.get(name, 0) / 1e9 / (ms * 1e-3) if ms > 0 else None}
              for name, ms in per_layer.items()]
    layers.sort(key=lambda r: -r["ms"])
    op_total = sum(per_kind.values())
    kinds = [{"kind": k, "ms": v, "share": v / op_total if op_total else 0.0}
             for k, v in sorted(per_kind.items(), key=lambda kv: -kv[1])]
    return {"wall_ms": 1e3 * min(walls), "op_ms_total": op_total, "by_kind": kinds,
            "layers": layers, "runs": runs}


def compiled_stats(apply, params, x) -> dict:
    """XLA's own view of the compiled forward: buffer bytes and HLO FLOP count."""
    compiled = apply.lower(params, x).compile()
    stats: dict = {}
    memory = compiled.memory_analysis()
    if memory is not None:
        stats["xla_temp_bytes"] = int(memory.temp_size_in_bytes)
        stats["xla_argument_bytes"] = int(memory.argument_size_in_bytes)
        stats["xla_output_bytes"] = int(memory.output_size_in_bytes)
    cost = compiled.cost_analysis()
    if isinstance(cost, list):  # older jax returned one dict per device
        cost = cost[0] if cost else None
    if cost and "flops" in cost:
        stats["xla_hlo_flops"] = float(cost["flops"])
    return stats
