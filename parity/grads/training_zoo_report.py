"""The training zoo's report: a status per defect, the score, and the figures behind them.

Written as training_zoo.json, training_zoo.md and training_zoo.png (each defect's
figures as multiples of their limits, beside the correct run's: a caught defect reaches
past 1 in the check it names).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from core.atomic_files import save_figure_atomic
from core.report_files import write_report
from parity.grads.training_zoo import (BELOW, CAUGHT, DEFECTS, MISSED, NOT_APPLICABLE,
                                       status_of)

STATUSES = (CAUGHT, MISSED, BELOW, NOT_APPLICABLE)


@dataclasses.dataclass
class TrainingZooReport:
    correct: object                 # TrainingParityResult of the correct JAX trainer
    defects: dict[str, object]      # name -> TrainingParityResult with that defect

    def statuses(self) -> dict[str, tuple[str, str]]:
        out = {}
        for name, result in self.defects.items():
            defect = DEFECTS[name]
            why = defect.applicable(result.rates)
            out[name] = (NOT_APPLICABLE, why) if why else status_of(defect, result,
                                                                   self.correct)
        return out

    def not_caught(self) -> list[str]:
        return [name for name, (status, _) in self.statuses().items()
                if status in (MISSED, BELOW)]

    @property
    def score(self) -> float | None:
        judged = [s for s, _ in self.statuses().values() if s != NOT_APPLICABLE]
        return None if not judged else judged.count(CAUGHT) / len(judged)

    @property
    def passed(self) -> bool:
        """The correct trainer passes and every applicable defect is caught."""
        return self.correct.passed and not self.not_caught()

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for status, _ in self.statuses().values():
            out[status] += 1
        return out

    def summary(self) -> str:
        c = self.counts()
        score = "n/a" if self.score is None else f"{self.score:.0%}"
        line = (f"training zoo score {score}: {c[CAUGHT]} caught, {c[MISSED]} missed, "
                f"{c[BELOW]} below tolerance, {c[NOT_APPLICABLE]} not applicable; correct "
                f"trainer {'PASS' if self.correct.passed else 'FAIL'}")
        if self.not_caught():
            line += "; not caught: " + ", ".join(self.not_caught())
        return line

    def table(self) -> list[str]:
        """One line per defect: name, status, its largest figure relative to its limit."""
        width = max([len(n) for n in self.defects] + [7])
        lines = [f"{'defect':<{width}}  {'status':<15}  note"]
        for name, (status, note) in self.statuses().items():
            lines.append(f"{name:<{width}}  {status:<15}  {note}")
        return lines

    def as_dict(self) -> dict:
        statuses = self.statuses()
        return {"passed": self.passed, "score": self.score, "counts": self.counts(),
                "summary": self.summary(), "correct": self.correct.as_dict(),
                "defects": [{"name": name, "summary": DEFECTS[name].summary,
                             "shows_in": list(DEFECTS[name].shows_in),
                             "status": statuses[name][0], "note": statuses[name][1],
                             "result": result.as_dict()}
                            for name, result in self.defects.items()]}

    def markdown(self) -> str:
        lines = ["# Training zoo: defects of the JAX training step", "",
                 f"**{self.summary()}**", "", "![figures / limits](training_zoo.png)", "",
                 "| defect | what | must fail in | status | note |",
                 "| --- | --- | --- | --- | --- |"]
        for name, (status, note) in self.statuses().items():
            d = DEFECTS[name]
            lines.append(f"| `{name}` | {d.summary} | {' or '.join(d.shows_in)} | {status} | "
                         f"{note} |")
        lines += ["", "## Correct trainer", "", "```", self.correct.text(), "```", ""]
        return "\n".join(lines)

    def write_report(self, out_dir: str | Path) -> list[Path]:
        return write_report(out_dir, {"training_zoo.json": json.dumps(self.as_dict(), indent=1),
                                      "training_zoo.md": self.markdown(),
                                      "training_zoo.png": self.plot})

    def plot(self, dst: Path) -> None:
        """Per defect (and the correct run), each judged figure as a multiple of its limit,
        on a log axis with the line at 1 (above it: the check fails)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        runs = [("correct", self.correct), *self.defects.items()]
        checks = list(dict.fromkeys(c for _, r in runs for c, *_ in r.figures()))
        fig, ax = plt.subplots(figsize=(max(8.0, 0.6 * len(runs) + 3), 5))
        try:
            for k, check in enumerate(checks):
                xs, ys = [], []
                for i, (_, result) in enumerate(runs):
                    ratios = [v / lim for c, _, v, lim in result.figures() if c == check]
                    if ratios:
                        worst = max(ratios, key=lambda r: math.inf if math.isnan(r) else r)
                        xs.append(i + (k - len(checks) / 2) * 0.1)
                        ys.append(1e4 if not np.isfinite(worst) else max(worst, 1e-4))
                ax.scatter(xs, ys, s=22, label=check)
            ax.axhline(1.0, color="tab:red", linestyle="--", linewidth=1, label="limit")
            ax.set_yscale("log")
            ax.set_xticks(range(len(runs)))
            statuses = self.statuses()
            ax.set_xticklabels([name if name == "correct" else f"{name} ({statuses[name][0]})"
                                for name, _ in runs], rotation=60, ha="right", fontsize=7)
            ax.set_ylabel("figure / its limit (worst of the check)")
            ax.set_title(self.summary(), fontsize=8)
            ax.legend(fontsize=7, loc="upper left")
            fig.tight_layout()
            save_figure_atomic(fig, dst)
        finally:
            plt.close(fig)
