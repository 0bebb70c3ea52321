"""Running the defect catalogue on a port: one mutant per defect and site, a status each.

Statuses:
    caught           the engine diverges, first at the site's module, inside it (a
                     module of the site that runs after the defect), or at its
                     innermost compared ancestor when the site itself has no Flax row,
                     or (a site with no Flax row) named by the verdict among the
                     torch-only suspects just before the first divergence
    missed           the engine diverges elsewhere first (the defect is mislocated)
    equivalent       the mutant provably computes the same function at these shapes
    below-tolerance  every block's measured effect stays within the tolerance (shown) and
                     the hyperparameter diff does not see it either: a blind spot, which
                     counts as missed (the score never reads 100% over one)
    not-applicable   the port has no site for the defect (one entry, with the reason)
The mutation score is caught / (caught + missed + below-tolerance); every missed mutant is
named. A port that already diverges is not scored: its mutants could prove nothing.
A run in which no mutant could be judged (every requested defect not applicable or
equivalent here) proves nothing either: it is `unproven`, and a verdict that asked for
mutants does not pass on it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from core.text import escape_text
from parity.engine.rows import PREDICTION
from parity.zoo.catalogue import CATALOGUE, Site

CAUGHT, MISSED, EQUIVALENT, BELOW, NOT_APPLICABLE = (
    "caught", "missed", "equivalent", "below-tolerance", "not-applicable")
MAX_SITES_PER_DEFECT = 12   # on bigger models a seeded sample of the sites
SAMPLE_SEED = 0


@dataclasses.dataclass(frozen=True)
class MutantResult:
    defect: str
    site: str | None
    status: str
    first_divergence: str | None
    max_rel_error: float | None
    expected: str | None          # where it should show (torch module name)
    note: str = ""

    @property
    def caught(self) -> bool:
        return self.status == CAUGHT

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["caught"] = self.caught
        value = out["max_rel_error"]
        out["max_rel_error"] = None if value is None or not np.isfinite(value) else value
        return out


@dataclasses.dataclass
class MutationReport:
    results: list[MutantResult]
    not_scored: str | None = None     # why no mutant was run (the port itself diverges)

    @property
    def missed(self) -> list[MutantResult]:
        """Mislocated mutants and blind spots (below tolerance, unseen by the diff)."""
        return [r for r in self.results if r.status in (MISSED, BELOW)]

    @property
    def unproven(self) -> str | None:
        """Why this run proves nothing although it ran (no mutant could be judged)."""
        if self.not_scored or self.score is not None:
            return None
        return ("no requested defect could be injected and judged on this port (each is "
                "not applicable or equivalent here): the verdict is not proven by mutation")

    @property
    def passed(self) -> bool:
        """Every judged mutant caught, at least one judged, and the port scored."""
        return not self.not_scored and not self.missed and self.score is not None

    @property
    def score(self) -> float | None:
        judged = [r for r in self.results if r.status in (CAUGHT, MISSED, BELOW)]
        return None if not judged else sum(r.caught for r in judged) / len(judged)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in (CAUGHT, MISSED, EQUIVALENT, BELOW, NOT_APPLICABLE)}
        for r in self.results:
            out[r.status] += 1
        return out

    def summary(self) -> str:
        if self.not_scored:
            return f"mutants not run: {self.not_scored}"
        c = self.counts()
        score = "n/a" if self.score is None else f"{self.score:.0%}"
        line = (f"mutation score {score}: {c[CAUGHT]} caught, {c[MISSED]} missed, "
                f"{c[EQUIVALENT]} equivalent, {c[BELOW]} below tolerance (missed: blind "
                "spots), "
                f"{c[NOT_APPLICABLE]} defects not applicable")
        if self.missed:
            line += "; missed: " + ", ".join(f"{r.defect} at {r.site}" for r in self.missed)
        if self.unproven:
            line += f"; FAIL: {self.unproven}"
        return line


def _compared_modules(report) -> set[str]:
    return {r.module for r in report.rows if r.compared and r.module is not None}


def located_at(first: str | None, site: Site, compared: set[str]) -> bool:
    """Is the first divergence the site, inside it, or its innermost compared ancestor?"""
    if first is None:
        return False
    module = "" if first == PREDICTION else first
    target = site.torch_module
    if target == "" or module == target or module.startswith(target + "."):
        return True
    parts = target.split(".")
    ancestors = [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)] + [""]
    innermost = next((a for a in ancestors if a in compared), "")
    return target not in compared and module == innermost


def named_as_suspect(report, site: Site, compared: set[str]) -> bool:
    """A site with no row of its own (a function in the port, in a torch container the
    port does not have: a classifier's Hardswish) that the verdict names among the
    torch-only modules just before the first divergence."""
    from parity.engine.rows import suspects

    return bool(site.torch_module) and site.torch_module not in compared and \
        site.torch_module in suspects(report)


def expected_location(site: Site, compared: set[str]) -> str:
    if site.torch_module in compared:
        return site.torch_module or PREDICTION
    parts = site.torch_module.split(".")
    ancestors = [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
    return next((a for a in ancestors if a in compared), PREDICTION)


def sample_sites(sites: list[Site], limit: int = MAX_SITES_PER_DEFECT,
                 seed: int = SAMPLE_SEED) -> list[Site]:
    if len(sites) <= limit:
        return sites
    keep = sorted(np.random.default_rng(seed).choice(len(sites), limit, replace=False))
    return [sites[i] for i in keep]


def mutant_report(port, mutation):
    """The comparison of one mutant of the port (parity.zoo.catalogue.Mutation)."""
    # a mutant with a context is traced once: run eagerly, compiling would cost more
    # than it saves (tiny example: ~5 s per compiled mutant vs well under 1 s eagerly;
    # DLN dim 16 concat-order 0.6 s eager vs 2.2 s compiled), unless the mutation says
    return port.compare(mutation.variables, mutation.context, mutation.flax_model,
                        jit=mutation.context is None or mutation.compile,
                        **({"attributes": mutation.attributes} if mutation.attributes else {}),
                        **({"call_changes": mutation.call_changes} if mutation.call_changes
                           else {}))


def run_mutant(port, defect, site: Site, compared: set[str]) -> MutantResult:
    mutation = defect.mutate(port, site)
    expected = expected_location(site, compared)
    if mutation.equivalent:
        return MutantResult(defect.name, site.label, EQUIVALENT, None, None, expected,
                            mutation.equivalent)
    report = mutant_report(port, mutation)
    effect = report.max_rel_error
    first = report.first_divergence_module
    if report.passed:
        return MutantResult(defect.name, site.label, BELOW, None, effect, expected,
                            f"largest block effect {effect:.2e} <= tolerance {port.tol:.0e}")
    if located_at(first, site, compared) or named_as_suspect(report, site, compared):
        return MutantResult(defect.name, site.label, CAUGHT, first, effect, expected)
    return MutantResult(defect.name, site.label, MISSED, first, effect, expected,
                        f"first divergence {first}, expected {expected}")


def run_zoo(port, *, names: list[str] | None = None, catalogue: dict | None = None,
            baseline=None, max_sites: int = MAX_SITES_PER_DEFECT, seed: int = SAMPLE_SEED,
            progress=None) -> MutationReport:
    """Every defect of `catalogue` (default: the one for any model; or `names` of it) at
    every applicable site of a prepared port (parity.zoo.prepared.prepare_port)."""
    catalogue = CATALOGUE if catalogue is None else catalogue
    baseline = baseline or port.compare()
    if not baseline.passed:
        return MutationReport([], f"the port itself diverges first at "
                                  f"{escape_text(baseline.first_divergence)}")
    compared = _compared_modules(baseline)
    compared.add("")
    results = []
    for name in names or list(catalogue):
        defect = catalogue[name]
        sites = sample_sites(defect.sites(port), max_sites, seed)
        if not sites:
            kinds = ", ".join(k.replace("call:", "calls of ") for k in defect.kinds)
            results.append(MutantResult(name, None, NOT_APPLICABLE, None, None, None,
                                        f"no applicable site (applies to {kinds})"))
            continue
        for site in sites:
            results.append(run_mutant(port, defect, site, compared))
            if progress is not None:
                progress(results[-1])
    return MutationReport(results)
