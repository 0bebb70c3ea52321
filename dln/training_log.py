"""The record of a training run: per-step losses (CSV and JSON), held-out checks, a PNG.

log.csv      step,epoch,lr,loss,elapsed_s (one row per step; step counts steps done)
log.json     the settings, every row, every held-out evaluation, the final summary
loss.png     the loss per step with a running mean, the learning rate, and the held-out
             PSNR gain at each evaluation
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np

from core.atomic_files import save_figure_atomic
from core.errors import UserError
from core.report_files import write_report
from core.text import escape_text

CSV_FIELDS = ("step", "epoch", "lr", "loss", "elapsed_s")
CSV_FILE, JSON_FILE, PLOT_FILE = "log.csv", "log.json", "loss.png"
MAX_LOG_BYTES = 1 << 30  # ~10 million steps of rows; a larger log.json is not one of ours
EVAL_NUMBERS = ("mean_psnr_low_db", "mean_psnr_enhanced_db")  # what the plots read


class LogDamaged(UserError):
    """A log.json that exists but cannot be read as a training log."""


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{value!r:.40} is not a number")
    return float(value)


def _count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{value!r:.40} is not a step count")
    return value


def _valid_row(row) -> dict:
    """One per-step row as TrainLog.add_step writes it; TypeError/KeyError otherwise."""
    return {"step": _count(row["step"]), "epoch": _count(row["epoch"]),
            "lr": _number(row["lr"]), "loss": _number(row["loss"]),
            "elapsed_s": _number(row["elapsed_s"])}


def _valid_eval(entry) -> dict:
    if not isinstance(entry, dict):
        raise TypeError("an evaluation is not an object")
    _count(entry["step"])
    for key in EVAL_NUMBERS:
        _number(entry[key])
    return entry


@dataclasses.dataclass
class TrainLog:
    rows: list[dict] = dataclasses.field(default_factory=list)
    evals: list[dict] = dataclasses.field(default_factory=list)

    def add_step(self, step: int, epoch: int, lr: float, loss: float, elapsed_s: float) -> None:
        self.rows.append({"step": int(step), "epoch": int(epoch), "lr": float(lr),
                          "loss": float(loss), "elapsed_s": round(float(elapsed_s), 4)})

    def add_eval(self, step: int, result) -> None:
        self.evals.append({"step": int(step), **result.as_dict()})

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.rows]

    @classmethod
    def read(cls, out_dir: str | Path, upto_step: int) -> "TrainLog":
        """The log of an earlier run in out_dir, cut at `upto_step` (for --resume); an
        empty log when there is none. LogDamaged (one line) when log.json is there but
        is not a log this module wrote (cut short, edited, a FIFO, a huge file)."""
        return cls.read_file(Path(out_dir) / JSON_FILE, upto_step)

    @classmethod
    def read_file(cls, path: Path, upto_step: int) -> "TrainLog":
        from core.state_files import StateFileError, read_small_file

        try:
            data = read_small_file(path, MAX_LOG_BYTES)
        except FileNotFoundError:
            return cls()
        except (OSError, StateFileError) as err:
            raise LogDamaged(f"{escape_text(path)}: cannot be read "
                             f"({getattr(err, 'strerror', None) or err})") from None
        try:
            parsed = json.loads(data)
            rows = [_valid_row(r) for r in parsed["rows"]]
            evals = [_valid_eval(e) for e in parsed.get("evals", [])]
        except (ValueError, RecursionError, KeyError, TypeError, AttributeError) as err:
            reason = " ".join(str(err).split())[:80] or type(err).__name__
            raise LogDamaged(f"{escape_text(path)}: damaged ({type(err).__name__}: "
                             f"{escape_text(reason)})") from None
        return cls([r for r in rows if r["step"] <= upto_step],
                   [e for e in evals if e["step"] <= upto_step])

    def csv_text(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: (f"{row[k]:.8g}" if isinstance(row[k], float) else row[k])
                             for k in CSV_FIELDS})
        return buffer.getvalue()

    def json_text(self, header: dict) -> str:
        return json.dumps({**header, "rows": self.rows, "evals": self.evals}, indent=1,
                          allow_nan=True)

    def write(self, out_dir: str | Path, header: dict, plot: bool = True) -> list[Path]:
        """log.csv, log.json and (with plot) loss.png in out_dir, in that order."""
        files = {CSV_FILE: self.csv_text(), JSON_FILE: self.json_text(header)}
        if plot:
            files[PLOT_FILE] = lambda dst: plot_loss(self, dst,
                                                     title=header.get("title", "training"))
        return write_report(out_dir, files)


def running_mean(values: list[float], window: int) -> np.ndarray:
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return v
    window = max(1, min(window, v.size))
    cumulative = np.cumsum(np.insert(v, 0, 0.0))
    out = np.empty_like(v)
    for i in range(v.size):
        lo = max(0, i + 1 - window)
        out[i] = (cumulative[i + 1] - cumulative[lo]) / (i + 1 - lo)
    return out


def plot_loss(log: TrainLog, dst: Path, title: str = "training",
              others: dict[str, list[float]] | None = None) -> None:
    """Loss (and running mean) per step, lr on a second axis, held-out gain if any.
    `others` adds more loss curves by label (e.g. the other framework's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_evals = bool(log.evals)
    fig, axes = plt.subplots(1, 2 if has_evals else 1, figsize=(11 if has_evals else 7, 4),
                             squeeze=False)
    ax = axes[0][0]
    steps = [r["step"] for r in log.rows]
    if steps:
        ax.plot(steps, log.losses, color="tab:blue", alpha=0.35, lw=0.8, label="loss")
        window = max(1, len(steps) // 50)
        ax.plot(steps, running_mean(log.losses, window), color="tab:blue", lw=1.6,
                label=f"running mean ({window})")
        for label, values in (others or {}).items():
            ax.plot(steps[:len(values)], values, lw=1.0, ls="--", label=label)
        lr_ax = ax.twinx()
        lr_ax.plot(steps, [r["lr"] for r in log.rows], color="tab:gray", lw=0.8, ls=":")
        lr_ax.set_ylabel("learning rate (dotted)")
        lr_ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("1 - SSIM + 0.001 TV")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    if has_evals:
        ev = axes[0][1]
        ev.plot([e["step"] for e in log.evals], [e["mean_psnr_enhanced_db"] for e in log.evals],
                "o-", label="enhanced")
        low = [e["mean_psnr_low_db"] for e in log.evals]
        if low and all(math.isfinite(x) for x in low):
            ev.axhline(low[0], color="tab:red", ls="--", label="low-light input")
        ev.set_xlabel("step")
        ev.set_ylabel("mean held-out PSNR (dB)")
        ev.set_title("held-out")
        ev.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, dst)


def plot_runs(runs: dict[str, TrainLog], dst: Path,
              title: str = "one recipe, two frameworks") -> None:
    """Several runs in one figure: loss (faint per step, running mean bold) and held-out
    PSNR over steps, one colour per run (e.g. the JAX- and the PyTorch-trained model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, psnr_ax) = plt.subplots(1, 2, figsize=(11, 4))
    try:
        low = None
        window = max(1, max(len(log.rows) for log in runs.values()) // 50)
        for (label, log), color in zip(runs.items(), ("tab:blue", "tab:orange", "tab:green")):
            steps = [r["step"] for r in log.rows]
            loss_ax.plot(steps, log.losses, color=color, alpha=0.25, lw=0.6)
            loss_ax.plot(steps, running_mean(log.losses, window), color=color, lw=1.6,
                         label=f"{label} (running mean of {window})")
            evals = log.evals
            if evals:
                final = evals[-1]["mean_psnr_enhanced_db"]
                psnr_ax.plot([e["step"] for e in evals],
                             [e["mean_psnr_enhanced_db"] for e in evals], "o-", color=color,
                             label=f"{label} (final {final:.2f} dB)")
                low = evals[0]["mean_psnr_low_db"]
        if low is not None and math.isfinite(low):
            psnr_ax.axhline(low, color="tab:red", ls="--", lw=1, label=f"low-light input ({low:.2f} dB)")
        loss_ax.set_xlabel("step")
        loss_ax.set_ylabel("1 - SSIM + 0.001 TV")
        loss_ax.set_title(f"training loss: {title}")
        loss_ax.legend(fontsize=8)
        psnr_ax.set_xlabel("step")
        psnr_ax.set_ylabel("mean held-out PSNR (dB)")
        psnr_ax.set_title("held-out PSNR (chelsea, coffee, rocket)")
        psnr_ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure_atomic(fig, dst)
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """python -m dln.training_log --out PNG LABEL=RUN_DIR...: the runs' curves in one figure
    (RUN_DIR holds a run's log.json, as `dln train` writes it)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dln.training_log", description=main.__doc__)
    parser.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        label, sep, folder = item.partition("=")
        if not sep or not (Path(folder) / JSON_FILE).is_file():
            parser.error(f"{item!r}: want LABEL=RUN_DIR with RUN_DIR/{JSON_FILE}")
        runs[label] = TrainLog.read(folder, upto_step=2**62)
    plot_runs(runs, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
