"""Where every second of a `dln enhance` run goes: the account of its --profile timeline.

A run's wall time, from the moment the benchmark started the process to the moment
it ended, is split into what the main thread did (its spans, each counted without the
spans nested in it, so that nothing is counted twice), the time before its first span
(interpreter start-up and the command's imports), the gaps between its spans
(untracked), and the time after its last span (writing the profile, interpreter exit).
The main thread is the critical path: "wait for compute" is the network computing
while nothing else was left to do; the other threads' work (decoding the next images,
fetching, quantising, encoding and writing the previous ones) overlapped it and is
listed beside. Compute per bucket sums each program's execution (from dispatch to
result) over the run.
"""

from __future__ import annotations

import collections
import json

# main-thread span -> the row it is accounted in, in the order of the table
MAIN_ROWS = (
    ("imports", "imports (checkpoint reader, framework)"),
    ("load_checkpoint", "reading and checking the checkpoint"),
    ("predictor", "building the predictor (cache folder, stages)"),
    ("load_weights", "weights to the device"),
    ("plan", "planning (headers, memory plan, buckets)"),
    ("wait_decode", "waiting for decoded images"),
    ("host_prep", "host preparation (transpose, pad, stack)"),
    ("trace", "tracing and lowering"),
    ("compile", "compiling (or reading the compilation cache)"),
    ("place_weights", "weights for a lane or transposed (waits for busy devices)"),
    ("dispatch", "dispatching"),
    ("wait_previous", "waiting for compute"),
    ("compute", "computing (synchronous backends)"),
    ("tiled", "tiled runs: dispatching tiles, sums"),
    ("tile_read", "tiles: reading inputs (maps, image, mask)"),
    ("tile_wait", "tiles: waiting for compute"),
    ("tile_write", "tiles: writing results (maps, sums)"),
    ("wait_writer", "waiting for the writer"),
    ("drain", "last results: fetch, encode, write"),
)
OTHER_THREADS = ("decode", "transfer", "quantize", "encode_write")


def _exclusive(spans: list[dict]) -> dict[str, float]:
    """Seconds per span name on one thread, each span without the spans nested in it."""
    spans = sorted(spans, key=lambda s: (s["start"], -s["end"]))
    totals: dict[str, float] = collections.defaultdict(float)
    stack: list[dict] = []
    for span in spans:
        while stack and span["start"] >= stack[-1]["end"]:
            stack.pop()
        duration = span["end"] - span["start"]
        totals[span["name"]] += duration
        if stack:
            totals[stack[-1]["name"]] -= duration
        stack.append(span)
    return dict(totals)


def account(profile: dict, started: float, ended: float) -> dict:
    """The account of one run: profile = the JSON of `dln enhance --profile`; started,
    ended = time.time() when the process was started and when it ended."""
    spans = profile["spans"]
    # a dispatched program's execution overlaps the main thread's own work: not in it
    main = [s for s in spans if s["thread"] == "MainThread" and not s.get("asynchronous")]
    first = min((s["start"] for s in main), default=ended)
    last = max((s["end"] for s in main), default=ended)
    exclusive = _exclusive(main)
    covered = _union(main)
    rows = [("start-up (interpreter, command imports)", first - started)]
    rows += [(label, exclusive.pop(name)) for name, label in MAIN_ROWS if name in exclusive]
    rows += [(f"other: {name}", seconds) for name, seconds in sorted(exclusive.items())]
    rows.append(("untracked (between spans)", (last - first) - covered))
    rows.append(("after the last span (profile, exit)", ended - last))
    overlapped = collections.defaultdict(float)
    for s in spans:
        if s["thread"] != "MainThread" and s["name"] in OTHER_THREADS:
            overlapped[s["name"]] += s["end"] - s["start"]
    per_program: dict[str, dict] = {}
    for s in spans:
        if s["name"] == "compute":
            entry = per_program.setdefault(s.get("program", "?"), {"runs": 0, "seconds": 0.0})
            entry["runs"] += 1
            entry["seconds"] += s["end"] - s["start"]
    return {"total_s": ended - started, "rows": [{"what": w, "seconds": v} for w, v in rows],
            "overlapped": dict(overlapped), "compute_per_program": per_program,
            "compute_s": sum(p["seconds"] for p in per_program.values()),
            "facts": profile.get("facts", {})}


def _union(spans: list[dict]) -> float:
    total, end = 0.0, None
    for s in sorted(spans, key=lambda s: s["start"]):
        if end is None or s["start"] > end:
            total += s["end"] - s["start"]
            end = s["end"]
        elif s["end"] > end:
            total += s["end"] - end
            end = s["end"]
    return total


def account_text(label: str, acc: dict, reference_s: float | None = None) -> list[str]:
    lines = [f"where the {acc['total_s']:.1f} s of {label} went (main thread, the critical "
             "path; other threads overlapped it):",
             "| part | seconds | share |", "| --- | --- | --- |"]
    for row in acc["rows"]:
        if abs(row["seconds"]) >= 0.005:
            lines.append(f"| {row['what']} | {row['seconds']:.2f} | "
                         f"{row['seconds'] / acc['total_s']:.1%} |")
    if acc["overlapped"]:
        lines.append("overlapped in the reader / writer threads: " + ", ".join(
            f"{name} {seconds:.2f} s" for name, seconds in sorted(acc["overlapped"].items())))
    if acc["compute_per_program"]:
        lines.append(f"compute per program ({acc['compute_s']:.1f} s in all): " + "; ".join(
            f"{name}: {p['seconds']:.1f} s ({p['runs']} run{'s' * (p['runs'] != 1)})"
            for name, p in sorted(acc["compute_per_program"].items())))
    if reference_s:
        lines.append(f"total / sum of per-image compute ({reference_s:.1f} s) = "
                     f"{acc['total_s'] / reference_s:.3f}")
    return lines


def load(path) -> dict:
    with open(path) as fh:
        return json.load(fh)
