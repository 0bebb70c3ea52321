"""Names of tensors between the frameworks: the one rename rule, flat and nested variable
trees, and the one strict comparison of two tables of tensor shapes.

- Rename rule: a torch module name `a.b.0` is the Flax module path `a/b_0` (an index
  of an nn.Sequential / ModuleList becomes `_0`); a Flax `nn.Sequential` puts the same
  module at `a/b/layers_0`, the second candidate. NNX paths read like torch names;
  an nnx.Sequential adds `layers.` at any of the indices (`a.0` -> `a.layers.0`).
- Trees: `{'params': {'a': {'kernel': v}}}` <-> `{'params/a/kernel': v}` (or, with
  sep='.', dotted names such as `feat1.conv.kernel`; sep=None: tuple paths).
- `shape_mismatch` lists missing, unexpected and wrongly shaped tensors, sorted, in
  one line: every strict check of the toolkit (checkpoints, converted weights, a
  user's state dict, a fixture's variables) words its refusal this way.
Importing this module starts no framework.
"""

from __future__ import annotations

import re

_SEQUENTIAL_INDEX = re.compile(r"\.(\d+)(?=\.|$)")
MAX_SEQUENTIAL_LEVELS = 4  # NNX: indices of one name that may sit in an nnx.Sequential


def rename(torch_module: str) -> str:
    """The Flax path of a torch module name: `a.b.0` -> `a/b_0` ('' stays the root)."""
    return _SEQUENTIAL_INDEX.sub(r"_\1", torch_module).replace(".", "/")


def flax_path_candidates(torch_module: str) -> list[str]:
    """Paths a torch module may have in a Linen port: the rename rule first, then the
    same module inside a Flax nn.Sequential (`a.0` -> `a/layers_0`)."""
    first = rename(torch_module)
    sequential = _SEQUENTIAL_INDEX.sub(r"/layers_\1", torch_module).replace(".", "/")
    return [first] if sequential == first else [first, sequential]


def nnx_path_candidates(torch_module: str) -> list[str]:
    """Paths a torch module may have in an NNX port: its own name (NNX paths read like
    torch's), then the same with an nnx.Sequential at some of its indices (`a.0` ->
    `a.layers.0`; `blocks.0.mlp.1` -> `blocks.0.mlp.layers.1`, ...), fewest first."""
    import itertools

    parts = torch_module.split(".") if torch_module else []
    indices = [i for i, part in enumerate(parts) if part.isdigit()]
    out = []
    for count in range(min(len(indices), MAX_SEQUENTIAL_LEVELS) + 1):
        for chosen in itertools.combinations(indices, count):
            out.append(".".join(f"layers.{p}" if i in chosen else p
                                for i, p in enumerate(parts)))
    return out


def flatten_tree(tree, sep: str | None = "/") -> dict:
    """A nested mapping -> {'a/b/leaf': value} (keys joined by sep), or with sep=None
    {('a', 'b', 'leaf'): value}; empty subtrees leave nothing."""
    flat = {}

    def walk(node, path: tuple) -> None:
        for key, value in node.items():
            if hasattr(value, "items"):
                walk(value, (*path, key))
            else:
                flat[(*path, key) if sep is None else sep.join(map(str, (*path, key)))] = value
    walk(tree, ())
    return flat


def nest_tree(flat: dict, sep: str | None = "/") -> dict:
    """Inverse of flatten_tree."""
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name if sep is None else name.split(sep)
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def shape_mismatch(got: dict[str, tuple], expected: dict[str, tuple]) -> str:
    """'' when both tables hold the same names with the same shapes, else one line:
    `N missing: ...; N unexpected: ...; N wrong shape: name (got) != expected (shape)`."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(f"{k} {tuple(got[k])} != expected {tuple(expected[k])}"
                   for k in set(expected) & set(got) if tuple(got[k]) != tuple(expected[k]))
    return "; ".join(f"{len(items)} {label}: {listing(items, limit)}" for label, items, limit in
                     (("missing", missing, 8), ("unexpected", unexpected, 8),
                      ("wrong shape", wrong, 4)) if items)
