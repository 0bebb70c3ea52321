"""Converting a PyTorch model's tensors to Flax variables by rules per torch module kind.

Each rule takes one torch module (its own parameters and buffers, not its children's)
and says, for every tensor, which Flax collection, variable name and layout it
becomes. Module names follow the rename rule of weights/trees.py (`a.b.0` -> `a/b_0`) unless a
mapping names the path.

    torch module kind            tensor -> Flax variable (layout)
    Conv1d/2d/3d (any groups)    weight (O, I/g, *k) -> params kernel (*k, I/g, O); bias
    ConvTranspose1d/2d/3d        weight (I, O, *k) -> params kernel: (*k, I, O) with the
                                 spatial axes flipped when the Flax module has
                                 transpose_kernel=False (Flax's default: no flip inside),
                                 (*k, O, I) unflipped when transpose_kernel=True; bias
    Linear                       weight (O, I) -> params kernel (I, O); bias
    BatchNorm1d/2d/3d            weight -> params scale, bias -> params bias,
                                 running_mean -> batch_stats mean, running_var ->
                                 batch_stats var; num_batches_tracked dropped (listed)
    LayerNorm, GroupNorm         weight -> params scale, bias -> params bias
    PReLU                        weight (1,) -> params negative_slope () (flax nn.PReLU);
                                 weight (C,) -> params negative_slope (C,)
    Embedding                    weight (V, D) -> params embedding (V, D)

A module kind that holds parameters or buffers and has no rule is refused by name
(`NoConverterRule`, a user error): passing its tensors through unchanged could be
silently wrong. Importing this module starts no framework; the rules read the torch
modules they are given.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from core.errors import PortDiverges, UserError
from weights.trees import flax_path_candidates, nest_tree, shape_mismatch


class NoConverterRule(UserError, ValueError):
    """A torch module kind with tensors but no conversion rule."""


class ConversionMismatch(PortDiverges, ValueError):
    """Converted tensors do not fit the Flax model's variables: the port lacks, adds or
    reshapes a tensor of the reference (a FAIL verdict, exit 1)."""


@dataclasses.dataclass(frozen=True)
class TensorRule:
    torch_name: str                 # e.g. "enc.conv.weight"
    module: str                     # torch module name, e.g. "enc.conv"
    module_kind: str                # torch class name, e.g. "Conv2d"
    collection: str                 # "params" or "batch_stats"
    flax_path: str                  # Flax module path, e.g. "enc/conv"
    leaf: str                       # e.g. "kernel"
    kind: str                       # layout: conv | conv_transpose | conv_transpose_flip |
                                    # dense | prelu | bias | scale | mean | var | embedding |
                                    # same (a bare tensor) | mha_<part>_<kernel|bias>:<heads>
    torch_shape: tuple[int, ...]

    @property
    def flax_name(self) -> str:
        """Dotted Flax name within the collection (`enc.conv.kernel`)."""
        return ".".join([*filter(None, self.flax_path.split("/")), self.leaf])

    @property
    def key(self) -> str:
        """The variable's flat key, collection first (`params/enc/conv/kernel`)."""
        return "/".join([self.collection, *filter(None, self.flax_path.split("/")), self.leaf])

    @property
    def flax_shape(self) -> tuple[int, ...]:
        return flax_shape(self.kind, self.torch_shape)


# ---- layouts: torch <-> Flax, exact (only moves values) -----------------------------------
def _spatial(ndim: int) -> tuple[int, ...]:
    return tuple(range(2, ndim))


def to_flax(kind: str, value: np.ndarray) -> np.ndarray:
    """One tensor's layout rule, torch -> Flax."""
    value = np.asarray(value)
    if kind == "conv":            # (O, I/g, *k) -> (*k, I/g, O)
        return np.ascontiguousarray(value.transpose(*_spatial(value.ndim), 1, 0))
    if kind == "conv_transpose":  # (I, O, *k) -> (*k, O, I): Flax transpose_kernel=True
        return np.ascontiguousarray(value.transpose(*_spatial(value.ndim), 1, 0))
    if kind == "conv_transpose_flip":  # (I, O, *k) -> flipped (*k, I, O)
        flipped = np.flip(value, axis=_spatial(value.ndim))
        return np.ascontiguousarray(flipped.transpose(*_spatial(value.ndim), 0, 1))
    if kind == "dense":
        return np.ascontiguousarray(value.T)
    if kind == "prelu":
        return value.reshape(()) if value.size == 1 else value
    if kind.startswith("mha_"):
        return np.ascontiguousarray(_mha_to_flax(kind, value))
    return value


def _mha_kind(kind: str) -> tuple[str, int]:
    """'mha_1_kernel:8' -> ('1_kernel', 8)."""
    body, heads = kind[len("mha_"):].split(":")
    return body, int(heads)


def _mha_to_flax(kind: str, value: np.ndarray) -> np.ndarray:
    """nn.MultiheadAttention's fused in_proj (3E, E) / (3E,) split into query, key, value
    (part 0, 1, 2) of flax MultiHeadDotProductAttention: kernel (E, heads, head_dim),
    bias (heads, head_dim); out_proj (E, E) -> out kernel (heads, head_dim, E)."""
    body, heads = _mha_kind(kind)
    if body == "out_kernel":
        return value.T.reshape(heads, -1, value.shape[0])
    part, what = int(body[0]), body[2:]
    size = value.shape[0] // 3
    piece = value[part * size:(part + 1) * size]
    if what == "kernel":
        return piece.T.reshape(piece.shape[1], heads, -1)
    return piece.reshape(heads, -1)


def flax_shape(kind: str, torch_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape to_flax gives a tensor of torch_shape, by arithmetic on the shape alone:
    nothing is allocated, so a shape a hostile file claims costs nothing to check."""
    shape = tuple(int(n) for n in torch_shape)
    if kind in ("conv", "conv_transpose") and len(shape) >= 2:
        return (*shape[2:], shape[1], shape[0])
    if kind == "conv_transpose_flip" and len(shape) >= 2:
        return (*shape[2:], shape[0], shape[1])
    if kind == "dense":
        return shape[::-1]
    if kind == "prelu":
        return () if math.prod(shape) == 1 else shape
    if kind.startswith("mha_"):
        body, heads = _mha_kind(kind)
        if body == "out_kernel":
            return (heads, shape[1] // heads, shape[0])
        size = shape[0] // 3
        return (shape[1], heads, size // heads) if body.endswith("kernel") else \
            (heads, size // heads)
    if kind in ("conv", "conv_transpose", "conv_transpose_flip"):
        raise ValueError(f"a {kind} tensor has at least 2 axes, got shape {shape}")
    return shape


def to_torch(kind: str, value: np.ndarray, torch_shape: tuple[int, ...] | None = None
             ) -> np.ndarray:
    """Inverse of to_flax (the torch shape is needed only for a scalar PReLU)."""
    value = np.asarray(value)
    n = value.ndim
    if kind in ("conv", "conv_transpose"):   # (*k, a, b) -> (b, a, *k)
        return np.ascontiguousarray(value.transpose(n - 1, n - 2, *range(n - 2)))
    if kind == "conv_transpose_flip":        # flipped (*k, I, O) -> (I, O, *k)
        moved = value.transpose(n - 2, n - 1, *range(n - 2))
        return np.ascontiguousarray(np.flip(moved, axis=_spatial(n)))
    if kind == "dense":
        return np.ascontiguousarray(value.T)
    if kind == "prelu":
        return value.reshape(torch_shape if torch_shape is not None else (value.size,))
    if kind.startswith("mha_"):
        body, heads = _mha_kind(kind)
        if body == "out_kernel":
            return np.ascontiguousarray(value.reshape(-1, value.shape[-1]).T)
        raise ValueError(f"a {kind} tensor is one third of a fused torch tensor: it has no "
                         "torch layout of its own")
    return value


# ---- rules per torch module kind --------------------------------------------------------
def _own_tensors(module) -> dict[str, np.ndarray]:
    tensors = {}
    for name, p in module.named_parameters(recurse=False):
        tensors[name] = p.detach().cpu().numpy()
    for name, b in module.named_buffers(recurse=False):
        if b is not None:
            tensors[name] = b.detach().cpu().numpy()
    return tensors


# a rule: (module, flax module attributes or None) -> {torch tensor name: (collection, leaf,
# kind)} (None: dropped), or, for a tensor split over several Flax modules, a list of
# (flax sub-path, collection, leaf, kind)
Rule = Callable[[object, object], dict]


def _conv_rule(module, flax_module) -> dict:
    return {"weight": ("params", "kernel", "conv"), "bias": ("params", "bias", "bias")}


def _conv_transpose_rule(module, flax_module) -> dict:
    if getattr(module, "groups", 1) != 1:
        raise NoConverterRule(f"ConvTranspose with groups={module.groups}: flax.linen."
                              "ConvTranspose has no feature groups")
    flip = not bool(getattr(flax_module, "transpose_kernel", False))
    return {"weight": ("params", "kernel", "conv_transpose_flip" if flip else "conv_transpose"),
            "bias": ("params", "bias", "bias")}


def _linear_rule(module, flax_module) -> dict:
    return {"weight": ("params", "kernel", "dense"), "bias": ("params", "bias", "bias")}


def _batchnorm_rule(module, flax_module) -> dict:
    return {"weight": ("params", "scale", "scale"), "bias": ("params", "bias", "bias"),
            "running_mean": ("batch_stats", "mean", "mean"),
            "running_var": ("batch_stats", "var", "var"),
            "num_batches_tracked": None}  # a training counter; Flax has no such variable


def _norm_rule(module, flax_module) -> dict:
    return {"weight": ("params", "scale", "scale"), "bias": ("params", "bias", "bias")}


def _instance_norm_rule(module, flax_module) -> dict:
    # flax.linen.InstanceNorm keeps no running statistics: a torch InstanceNorm that
    # tracks them uses them in eval mode, which the port cannot do
    if getattr(module, "track_running_stats", False):
        raise NoConverterRule(
            f"{type(module).__name__} with track_running_stats=True (tensors: running_mean, "
            "running_var): flax.linen.InstanceNorm keeps no running statistics")
    return _norm_rule(module, flax_module)


def _prelu_rule(module, flax_module) -> dict:
    return {"weight": ("params", "negative_slope", "prelu")}


def _embedding_rule(module, flax_module) -> dict:
    return {"weight": ("params", "embedding", "embedding")}


def _holds(flax_module, *names: str) -> bool:
    """Does the Flax module have these submodules (by attribute or by name)?"""
    if flax_module is None:
        return False
    return all(getattr(flax_module, n, None) is not None for n in names)


def _multihead_attention_rule(module, flax_module) -> dict:
    """nn.MultiheadAttention: a port built on flax.linen.MultiHeadDotProductAttention holds
    query/key/value kernels (E, heads, head_dim): the fused in_proj (3E, E) is split in
    that order; any other port keeps in_proj_weight/in_proj_bias as same-named variables."""
    heads = int(module.num_heads)
    if getattr(module, "bias_k", None) is not None or not module._qkv_same_embed_dim:
        raise NoConverterRule(
            "MultiheadAttention with add_bias_kv or kdim/vdim != embed_dim (tensors: "
            f"{', '.join(sorted(_own_tensors(module)))}) has no Flax counterpart rule")
    if type(flax_module).__name__ == "MultiHeadDotProductAttention":
        return {"in_proj_weight": [(part, "params", "kernel", f"mha_{i}_kernel:{heads}")
                                   for i, part in enumerate(("query", "key", "value"))],
                "in_proj_bias": [(part, "params", "bias", f"mha_{i}_bias:{heads}")
                                 for i, part in enumerate(("query", "key", "value"))]}
    return {"in_proj_weight": ("params", "in_proj_weight", "same"),
            "in_proj_bias": ("params", "in_proj_bias", "same")}


# rules by torch class name; a module takes the rule of the first class of its MRO that
# has one (subclasses such as timm's BatchNormAct2d or torchvision's
# NonDynamicallyQuantizableLinear take their base's; the most specific rule wins)
RULES: dict[str, Rule] = {
    **{f"Conv{d}d": _conv_rule for d in (1, 2, 3)},
    **{f"ConvTranspose{d}d": _conv_transpose_rule for d in (1, 2, 3)},
    "Linear": _linear_rule,
    **{f"BatchNorm{d}d": _batchnorm_rule for d in (1, 2, 3)},
    "SyncBatchNorm": _batchnorm_rule,
    **{f"InstanceNorm{d}d": _instance_norm_rule for d in (1, 2, 3)},
    "LayerNorm": _norm_rule, "GroupNorm": _norm_rule, "RMSNorm": _norm_rule,
    "PReLU": _prelu_rule, "Embedding": _embedding_rule,
    "MultiheadAttention": _multihead_attention_rule,
}


def rule_for(module, extra_rules: dict | None = None) -> tuple[str, Rule] | None:
    """(matched class name, rule) of the most specific class in the module's MRO with a
    rule: a user rule (keyed by class or class name) before a built-in one of the same
    class; None when no class has one."""
    extra = extra_rules or {}
    for cls in type(module).__mro__:
        for key in (cls, cls.__name__):
            if key in extra:
                return cls.__name__, extra[key]
        if cls.__name__ in RULES and cls.__module__.startswith("torch."):
            return cls.__name__, RULES[cls.__name__]
    return None


CONTAINERS = ("Module", "Sequential", "ModuleList", "ModuleDict", "ParameterList",
              "ParameterDict")


def _from_torch_nn(module) -> bool:
    """A layer kind torch itself defines (LSTM, Bilinear, ...): its tensors have a meaning
    no same-name pass-through can know. Containers (nn.Module, nn.Sequential, ...) holding
    tensors are the user's own."""
    kind = type(module)
    return kind.__module__.startswith("torch.nn.") and kind.__name__ not in CONTAINERS


def _is_index(value: np.ndarray) -> bool:
    """Integer and boolean buffers are indices or counters (num_batches_tracked, Swin's
    relative_position_index), not weights: dropped from the conversion and listed."""
    return not np.issubdtype(np.asarray(value).dtype, np.floating)


@dataclasses.dataclass
class ConversionPlan:
    rules: list[TensorRule]                 # in torch state-dict order
    dropped: list[str]                      # torch tensors deliberately not converted

    def by_module(self) -> dict[str, list[TensorRule]]:
        out: dict[str, list[TensorRule]] = {}
        for rule in self.rules:
            out.setdefault(rule.module, []).append(rule)
        return out


def _refuse(where: str, kind: str, tensors: dict, why: str) -> NoConverterRule:
    shown = ", ".join(f"{n} {tuple(v.shape)}" for n, v in sorted(tensors.items()))
    return NoConverterRule(f"no converter rule for torch module {where} of kind {kind} "
                           f"(tensors: {shown}): {why}")


def plan_conversion(torch_model, mapping: dict[str, str] | None = None,
                    flax_modules: dict[str, object] | None = None,
                    extra_rules: dict | None = None,
                    paths_of: Callable[[str], list[str]] | None = None) -> ConversionPlan:
    """The rule of every tensor of `torch_model`. A module takes the rule of the most
    specific class of its MRO that has one (extra_rules: {class or class name: rule},
    before the built-in ones); the parameters and float buffers of a module of your own
    (cls_token, pos_embed, a layer-scale gamma, a bias table) go to same-named variables
    of the port's module; integer buffers are dropped and listed. A torch.nn kind with
    tensors and no rule (LSTM, ...) is refused (NoConverterRule) naming the module, its
    kind and its tensors. flax_modules: Flax path -> Flax module (read for ConvTranspose's
    transpose_kernel and MultiheadAttention's layout); mapping: torch name -> Flax path.
    paths_of: the port's rename rule (an NNX port's: parity.engine.nnx), whose paths
    (and the mapping's) are taken as spelled; default the Linen rule, whose mapping may
    be spelled with dots (`enc.conv` -> `enc/conv`)."""
    paths_of = paths_of or flax_path_candidates
    mapping = {k: v.replace(".", "/") if paths_of is flax_path_candidates else v
               for k, v in (mapping or {}).items()}
    flax_modules = flax_modules or {}
    planned: list[TensorRule] = []
    dropped: list[str] = []
    attention_out: dict[str, tuple[str, int]] = {}   # out_proj -> (Flax `out` path, heads)
    for name, module in torch_model.named_modules():
        tensors = _own_tensors(module)
        if not tensors:
            continue
        kind = type(module).__name__
        where = f"'{name}'" if name else "the root module"
        path = mapping.get(name)
        if path is None:
            candidates = paths_of(name)
            path = next((c for c in candidates if c in flax_modules), candidates[0])
        found = rule_for(module, extra_rules)
        if name in attention_out:
            path, heads = attention_out[name]
            found = ("Linear", lambda m, f, h=heads: {
                "weight": ("params", "kernel", f"mha_out_kernel:{h}"),
                "bias": ("params", "bias", "bias")})
        elif found is not None and found[0] == "MultiheadAttention" and \
                type(flax_modules.get(path)).__name__ == "MultiHeadDotProductAttention":
            attention_out[f"{name}.out_proj" if name else "out_proj"] = (
                f"{path}/out", int(module.num_heads))
        weights = {n: v for n, v in tensors.items() if not _is_index(v)}
        if found is None and _from_torch_nn(module) and weights:
            raise _refuse(where, kind, weights, "pass --rules FILE.py (a RULES dict) or "
                          f"extra_rules; rules exist for {', '.join(sorted(RULES))}")
        try:
            table = {} if found is None else found[1](module, flax_modules.get(path))
        except NoConverterRule as err:   # a rule that refuses this module's settings
            raise _refuse(where, kind, tensors, str(err)) from None
        for tensor_name, value in tensors.items():
            full = f"{name}.{tensor_name}" if name else tensor_name
            target = table.get(tensor_name, "same" if tensor_name not in table else None)
            if _is_index(value) or target is None:
                dropped.append(full)
                continue
            if target == "same":
                if found is not None and _from_torch_nn(module):
                    raise _refuse(where, kind, {tensor_name: value},
                                  f"the {found[0]} rule does not know this tensor")
                target = ("params", tensor_name, "same")
            for item in (target if isinstance(target, list) else [target]):
                sub, (collection, leaf, layout) = (item[0], item[1:]) if len(item) == 4 \
                    else ("", item)
                planned.append(TensorRule(full, name, kind, collection,
                                          "/".join(filter(None, (path, sub))), leaf, layout,
                                          tuple(value.shape)))
    return ConversionPlan(planned, dropped)


def convert_model(torch_model, expected: dict[str, tuple[int, ...]] | None = None,
                  mapping: dict[str, str] | None = None,
                  flax_modules: dict[str, object] | None = None,
                  extra_rules: dict[str, Rule] | None = None,
                  paths_of: Callable[[str], list[str]] | None = None
                  ) -> tuple[dict, ConversionPlan]:
    """(Flax variables {collection: tree}, plan) from a torch model's own tensors.

    expected: the Flax model's variable shapes, flat ('params/a/kernel' -> shape);
    when given, the conversion is strict: sorted missing, unexpected and misshapen
    lists in one ConversionMismatch. A PReLU whose Flax module names its one slope
    differently (e.g. 'alpha') uses that name.
    """
    plan = plan_conversion(torch_model, mapping, flax_modules, extra_rules, paths_of)
    if expected is not None:
        plan = _adopt_collections(plan, expected)
    state = {}
    for name, module in torch_model.named_modules():
        for tensor_name, value in _own_tensors(module).items():
            state[f"{name}.{tensor_name}" if name else tensor_name] = value
    if expected is not None:
        plan = _adopt_prelu_names(plan, expected)
    flat = {r.key: np.asarray(to_flax(r.kind, state[r.torch_name]), np.float32)
            for r in plan.rules}
    problems = expected is not None and shape_mismatch(
        {k: v.shape for k, v in flat.items()}, expected)
    if problems:
        raise ConversionMismatch(f"converted weights do not fit the Flax model: {problems}")
    return nest_tree(flat), plan


def _adopt_collections(plan: ConversionPlan, expected: dict) -> ConversionPlan:
    """A bare tensor (cls_token, a float buffer) goes to whichever collection of the port
    holds a variable of its name at its module's path."""
    rules = []
    for r in plan.rules:
        if r.kind == "same" and r.key not in expected:
            tail = "/" + "/".join([*filter(None, r.flax_path.split("/")), r.leaf])
            found = [k.split("/")[0] for k in expected if k.endswith(tail) and
                     k.count("/") == tail.count("/")]
            if len(found) == 1:
                r = dataclasses.replace(r, collection=found[0])
        rules.append(r)
    return ConversionPlan(rules, plan.dropped)


def _adopt_prelu_names(plan: ConversionPlan, expected: dict) -> ConversionPlan:
    rules = []
    for r in plan.rules:
        if r.kind == "prelu" and r.key not in expected:
            prefix = "/".join(["params", *filter(None, r.flax_path.split("/"))]) + "/"
            leaves = [k[len(prefix):] for k in expected
                      if k.startswith(prefix) and "/" not in k[len(prefix):]]
            if len(leaves) == 1:
                r = dataclasses.replace(r, leaf=leaves[0])
        rules.append(r)
    return ConversionPlan(rules, plan.dropped)
