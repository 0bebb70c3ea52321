"""Where a JAX training step spends its time: per-op times by kind of work, with FLOP rates.

One compiled step is traced with jax.profiler (as parity.bench.jax_profile traces the
forward); every executed XLA op is matched by instruction name to the compiled HLO and
put in one kind:

- convolutions, split by what they compute: the forward (3x3 here), the input gradient
  (a convolution whose window is the kernel's size, under autodiff's `transpose(...)` or
  the port's `input_grad` scope), the kernel gradient (a convolution whose window spans
  the whole image, or the `kernel_grad` scope), SSIM's Gaussian filter (a convolution
  outside the network);
- matrix products (1x1 convolutions and the FA's dense layers), forward and backward;
- the loss (`dln_loss` scope: SSIM and TV arithmetic), Adam (`adam` scope), data
  movement (concatenate, slice, copy, transpose, pad, reverse), and the remaining
  elementwise and reduction work of the network, forward and backward.

FLOP of each convolution and matrix product are counted from its HLO shapes (2 per
multiply-add), so every kind with arithmetic gets a GFLOP/s figure. Op times are thread
time: ops that run on two threads at once add up to more than the step's wall time.
"""

from __future__ import annotations

import collections
import re
import tempfile
import time
from pathlib import Path

from parity.bench.jax_profile import hlo_layers

_SHAPE = re.compile(r"f32\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s*\(.*\{\s*$")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_WINDOW = re.compile(r"window=\{size=([\dx]+)")
_DIM_LABELS = re.compile(r"dim_labels=(\w+)_(\w+)->(\w+)")
_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
_OPERANDS = re.compile(r"\b(convolution|dot)\(%([\w.\-]+), %([\w.\-]+)\)")

DATA_MOVEMENT = ("concatenate", "slice", "copy", "transpose", "pad", "reverse", "dynamic-slice",
                 "dynamic-update-slice", "bitcast", "broadcast")


def _dims(text: str) -> list[int]:
    return [int(d) for d in text.split(",") if d]


def hlo_computations(hlo_text: str) -> dict[str, list[str]]:
    """Computation name -> its instruction lines (fused computations included)."""
    bodies: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            current = m.group(1)
            bodies[current] = []
        elif line.startswith("}"):
            current = None
        elif current is not None:
            bodies[current].append(line)
    return bodies


def _shapes_by_name(lines: list[str]) -> dict[str, list[int]]:
    shapes = {}
    for line in lines:
        m = re.match(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*f32\[([\d,]*)\]", line)
        if m:
            shapes[m.group(1)] = _dims(m.group(2))
    return shapes


def arithmetic_of(line: str, lines: list[str]) -> dict | None:
    """The convolution or matrix product on `line` (one HLO instruction of `lines`, its
    computation): {"op", "flop", "window"} or None."""
    m = _OPERANDS.search(line)
    out = _SHAPE.search(line.split("=", 1)[1]) if "=" in line else None
    if not m or not out:
        return None
    shapes = _shapes_by_name(lines)
    op, lhs, rhs = m.group(1), shapes.get(m.group(2)), shapes.get(m.group(3))
    out_size = 1
    for d in _dims(out.group(1)):
        out_size *= d
    if op == "dot":
        c = _CONTRACTING.search(line)
        if lhs is None or c is None:
            return None
        k = 1
        for d in _dims(c.group(1)):
            k *= lhs[d]
        return {"op": "dot", "flop": 2 * out_size * k, "window": None}
    window = _WINDOW.search(line)
    labels = _DIM_LABELS.search(line)
    if rhs is None or window is None or labels is None:
        return None
    size = [int(s) for s in window.group(1).split("x")]
    taps = 1
    for s in size:
        taps *= s
    in_features = rhs[labels.group(2).index("i")]
    return {"op": "convolution", "flop": 2 * out_size * taps * in_features, "window": size,
            "lhs_spatial": [lhs[labels.group(1).index(c)] for c in "01"] if lhs else None}


_SCOPED_GRAD = re.compile(r"/(input|kernel)_grad_(\d+x\d+)(/|$)")


def classify(opcode: str, op_name: str, arithmetic: dict | None) -> str:
    """The kind of work of one executed op (module docstring)."""
    path = op_name.split("/")
    backward = any(p.startswith("transpose(") for p in path)
    if not op_name and arithmetic is None:  # layout copies XLA inserted
        return "data movement (concatenate, slice, copy, transpose)"
    if "/adam" in op_name:
        return "Adam update"
    if "dln_loss" in op_name:
        if arithmetic and arithmetic["op"] == "convolution":
            return "SSIM Gaussian filter, backward" if backward else "SSIM Gaussian filter"
        return ("loss (SSIM filter and arithmetic, TV), backward" if backward
                else "loss (SSIM filter and arithmetic, TV)")
    scoped = _SCOPED_GRAD.search(op_name)
    if scoped:
        which, size = scoped.group(1), scoped.group(2)
        if arithmetic:
            return f"{size} conv, {which} gradient"
        return "elementwise and reductions, backward (PReLU, bias, FA)"
    if arithmetic and arithmetic["op"] == "convolution":
        window, spatial = arithmetic["window"], arithmetic.get("lhs_spatial")
        if spatial and window and window[0] > 3 and window[0] >= spatial[0] - 2:
            return "3x3 conv, kernel gradient"  # a window spanning the image
        return "3x3 conv, input gradient" if backward else "3x3 conv, forward"
    if arithmetic and arithmetic["op"] == "dot":
        return "1x1 conv / dense, backward" if backward else "1x1 conv / dense, forward"
    if opcode in DATA_MOVEMENT or path[-1] in DATA_MOVEMENT:
        return "data movement (concatenate, slice, copy, transpose)"
    return ("elementwise and reductions, backward (PReLU, bias, FA)" if backward
            else "elementwise and reductions, forward (PReLU, bias, FA)")


def op_table(hlo_text: str) -> dict[str, tuple[str, str, dict | None]]:
    """Instruction name -> (opcode, op_name, arithmetic) for every top-level instruction;
    a fusion's arithmetic is that of the convolution or product inside it."""
    names = hlo_layers(hlo_text)
    bodies = hlo_computations(hlo_text)
    table = {}
    for body in bodies.values():
        for line in body:
            m = re.match(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=", line)
            if not m or m.group(1) not in names:
                continue
            opcode, op_name = names[m.group(1)]
            arithmetic = arithmetic_of(line, body)
            called = _CALLS.search(line)
            if arithmetic is None and called and called.group(1) in bodies:
                inner = bodies[called.group(1)]
                for inner_line in inner:
                    arithmetic = arithmetic_of(inner_line, inner)
                    if arithmetic:
                        meta = re.search(r'op_name="([^"]+)"', inner_line)
                        op_name = meta.group(1) if meta else op_name
                        break
            table[m.group(1)] = (opcode, op_name, arithmetic)
    return table


def profile_step(step, args: tuple, runs: int = 2, carry: int = 0) -> dict:
    """Trace `runs` calls of the jit-compiled `step(*args)` (already warm). The first
    `carry` outputs of each call are the first `carry` arguments of the next (a train
    step's weights and optimiser state, which it may donate)."""
    import jax

    table = op_table(step.lower(*args).compile().as_text())
    args = tuple(args)
    per_kind: dict[str, float] = collections.defaultdict(float)
    flop: dict[str, float] = collections.defaultdict(float)
    walls = []
    with tempfile.TemporaryDirectory(prefix="dln-train-profile-") as tmp:
        with jax.profiler.trace(tmp):
            for _ in range(runs):
                start = time.perf_counter()
                out = jax.block_until_ready(step(*args))
                walls.append(time.perf_counter() - start)
                args = (*out[:carry], *args[carry:])
        data = jax.profiler.ProfileData.from_file(str(next(Path(tmp).rglob("*.xplane.pb"))))
        seen: dict[str, int] = collections.defaultdict(int)
        for plane in data.planes:
            for line in plane.lines:
                for event in line.events:
                    if event.name not in table:
                        continue
                    opcode, op_name, arithmetic = table[event.name]
                    kind = classify(opcode, op_name, arithmetic)
                    per_kind[kind] += event.duration_ns / 1e6 / runs
                    seen[event.name] += 1
    for name in seen:  # an op may be split over threads: its FLOP count once per step
        opcode, op_name, arithmetic = table[name]
        if arithmetic:
            flop[classify(opcode, op_name, arithmetic)] += arithmetic["flop"]
    op_total = sum(per_kind.values())
    kinds = []
    for kind, ms in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        row = {"kind": kind, "ms": ms, "share": ms / op_total if op_total else 0.0}
        if flop.get(kind):
            row["gflop"] = flop[kind] / 1e9
            row["gflops_per_s"] = flop[kind] / 1e9 / (ms * 1e-3) if ms > 0 else None
        kinds.append(row)
    return {"wall_ms": 1e3 * min(walls), "op_ms_total": op_total, "by_kind": kinds,
            "runs": runs}
