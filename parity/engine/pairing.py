"""Pairing torch modules with the port's Flax modules: by name, then by shape and order.

1. A user mapping, then the rename rule (torch `a.b.0` <-> Flax `a/b_0`, the frontend's
   `path_candidates`) pair what they can: these pairs are certain. A name whose Flax
   module holds other shapes than the converted ones is not taken (a port's list that
   leaves out torch's activations numbers its layers 0, 1, 2 where torch has 0, 2, 4).
2. Every other torch module with tensors (a port with Flax's automatic names, `Conv_0`) is
   paired with an unclaimed Flax module whose variables have exactly the converted shapes:
   - one candidate, and no other unpaired torch module of that signature: paired;
   - several: the one that runs right after the Flax counterpart of the torch module's
     predecessor (the module with tensors that ran before it): a BatchNorm follows its
     conv, so a port that builds or runs its projection shortcut first cannot swap two
     BatchNorms of the same width;
   - still several: the one nearest its position in execution order (torch's call order
     vs the Flax side's), when exactly one is nearest; a tie is refused (AmbiguousPairing,
     one line naming the module and the candidates: pass a mapping).
   Every pair of step 2 is a guess and is listed (`Pairing.guessed`), with how it was made.
3. A torch module without tensors (a block, a Sequential) is paired with the Flax module
   whose modules with variables are exactly the counterparts of its own.
"""

from __future__ import annotations

import dataclasses

from core.errors import UserError


class AmbiguousPairing(UserError, ValueError):
    """Two Flax modules fit one torch module equally well: a mapping must say which."""


@dataclasses.dataclass
class Pairing:
    mapping: dict[str, str]                       # torch module -> Flax path (all pairs)
    guessed: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    # (torch module, Flax path, how: "shape" | "after <pred>" | "position")

    def lines(self) -> list[str]:
        return [f"{t} -> {f} (by {how})" for t, f, how in self.guessed]


def _signature(shapes: dict) -> tuple:
    return tuple(sorted(shapes.items()))


def pair_modules(plan, census, mapping: dict[str, str] | None = None, paths_of=None,
                 torch_order: list[str] | None = None, torch_tree=None) -> Pairing:
    """The pairing of a conversion plan (weights.rules) with a census (frontend). torch_order:
    torch module names in call order (torch_side.TorchCapture.order); torch_tree: the torch
    model (for step 3)."""
    from weights.trees import flax_path_candidates

    paths_of = paths_of or flax_path_candidates
    owners: dict[str, dict[str, tuple]] = {}
    for key, shape in census.shapes.items():
        collection, *path, leaf = key.split("/")
        owners.setdefault("/".join(path), {})[f"{collection}/{leaf}"] = tuple(shape)

    def port_path(path: str) -> str:
        # a Linen path is `a/b_0` (`a.b_0` accepted), an NNX path `a.b.0` as given
        for form in (path, path.replace(".", "/")):
            if form in owners or form in census.modules:
                return form
        return path.replace(".", "/")

    mapping = {k: port_path(v) for k, v in (mapping or {}).items()}
    flax_order = [p for p in census.modules if p in owners] + \
        [p for p in owners if p not in census.modules]
    flax_pos = {p: i for i, p in enumerate(flax_order)}
    by_module = plan.by_module()
    wanted = {m: _signature({f"{r.collection}/{r.leaf}": r.flax_shape for r in rules})
              for m, rules in by_module.items()}
    order = [m for m in (torch_order or []) if m in wanted]
    order = list(dict.fromkeys(order + list(wanted)))   # modules never called go last
    torch_pos = {m: i for i, m in enumerate(order)}
    claimed = set(mapping.values())
    pairs = dict(mapping)
    pending = []
    def fits(module, path) -> bool:
        # a name that holds other shapes is another module's (a port's list that skips
        # torch's activations: torch features.2 is the port's features_1); a name the
        # user's mapping gives another module is that module's
        return path not in claimed and (path not in owners or
                                        _signature(owners[path]) == wanted[module])

    result = Pairing(pairs)
    for module, path in _list_positions(order, wanted, owners, paths_of, pairs):
        pairs[module] = path
        claimed.add(path)
        result.guessed.append((module, path, "position in the port's list"))

    for module in order:
        found = pairs.get(module) or next((c for c in paths_of(module) if (
            c in owners or c in census.modules) and fits(module, c)), None)
        if found is not None:
            pairs[module] = found
            claimed.add(found)
        else:
            pending.append(module)

    def candidates(module) -> list[str]:
        return [p for p in flax_order if p not in claimed and _signature(owners[p]) ==
                wanted[module]]

    def previous(sequence: list[str], item: str) -> str | None:
        i = sequence.index(item)
        return sequence[i - 1] if i > 0 else None

    def take(module, path, how) -> None:
        pairs[module] = path
        claimed.add(path)
        pending.remove(module)
        result.guessed.append((module, path, how))

    while pending:
        progress = False
        for module in list(pending):
            found = candidates(module)
            if not found:
                continue
            rivals = [m for m in pending if wanted[m] == wanted[module]]
            if len(found) == 1 and len(rivals) == 1:
                take(module, found[0], "shape")
                progress = True
                continue
            pred = previous(order, module)
            if pred is not None and pred in pairs:
                after = [p for p in found if previous(flax_order, p) == pairs[pred]]
                if len(after) == 1:
                    take(module, after[0], f"shape, after {pred}")
                    progress = True
            elif pred is None:
                first = [p for p in found if previous(flax_order, p) is None]
                if len(first) == 1:
                    take(module, first[0], "shape, first to run")
                    progress = True
        if progress:
            continue
        # no anchored pair left: the nearest position, for the first module still pending
        module = next((m for m in pending if candidates(m)), None)
        if module is None:
            break     # unpaired modules are refused by the strict conversion
        found = candidates(module)
        distance = {p: abs(flax_pos[p] - torch_pos[module]) for p in found}
        best = min(distance.values())
        nearest = [p for p in found if distance[p] == best]
        if len(nearest) > 1:
            raise AmbiguousPairing(
                f"torch module '{module}' fits {len(nearest)} Flax modules equally well "
                f"({', '.join(nearest)}): pass a mapping (--mapping FILE.json with "
                f'{{"{module}": "{nearest[0]}"}})')
        take(module, nearest[0], "shape, position in execution order")
    if torch_tree is not None:
        _pair_containers(torch_tree, census, owners, pairs, claimed, paths_of)
    result.mapping = pairs
    return result


def _list_positions(order, wanted, owners, paths_of, pairs) -> list[tuple[str, str]]:
    """A port's list that leaves out torch's activations: torch's Sequential `features`
    holds convs at 0, 2, 4 (ReLUs between), the port's list `features` holds them at 0,
    1, 2. When the torch Sequential's numbered children with tensors are not numbered so
    on the Flax side but a list of exactly as many (0 .. n-1) is, with the same converted
    shapes position by position, they pair by position (the rename rule would pair
    torch's features.2 with the port's third conv when their shapes agree)."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for module in order:
        parent, _, last = module.rpartition(".")
        if last.isdigit() and module not in pairs:
            groups.setdefault(parent, []).append((int(last), module))
    out = []
    for parent, children in groups.items():
        children.sort()
        indices = [i for i, _ in children]
        if indices == list(range(len(indices))):
            continue          # numbered alike on both sides: the rename rule holds

        def flax_path(i):
            return next((c for c in paths_of(f"{parent}.{i}" if parent else str(i))
                         if c in owners), None)

        ranked = [flax_path(i) for i in range(len(indices))]
        beyond = [flax_path(i) for i in range(len(indices), indices[-1] + 1)]
        if any(p is None for p in ranked) or any(p is not None for p in beyond) or \
                any(_signature(owners[p]) != wanted[m] for p, (_, m) in zip(ranked, children)):
            continue
        out += [(m, p) for p, (_, m) in zip(ranked, children)]
    return out


def _pair_containers(torch_model, census, owners, pairs, claimed, paths_of) -> None:
    """Step 3: a torch module without a pair whose weighted descendants' counterparts are
    exactly the weighted descendants of one Flax module is paired with that module."""
    weighted = [m for m in pairs if m]
    names = [name for name, _ in torch_model.named_modules()]
    # a Flax module the rename rule gives some torch module is that module's, not another's
    claimed = claimed | {c for name in names for c in paths_of(name) if c in census.modules}
    for name, _module in torch_model.named_modules():
        if not name or name in pairs or any(c in census.modules for c in paths_of(name)):
            continue
        inside = [pairs[m] for m in weighted if m.startswith(name + ".")]
        if not inside:
            continue
        parts = [p.split("/") for p in inside]
        common = []
        for level in zip(*parts):
            if len(set(level)) != 1:
                break
            common.append(level[0])
        path = "/".join(common)
        if not path or path in claimed or path not in census.modules:
            continue
        below = {p for p in owners if p.startswith(path + "/")}
        if below == set(inside):
            pairs[name] = path
            claimed.add(path)
