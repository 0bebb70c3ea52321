"""Mutation testing of the toolkit itself: does its own suite turn red when its code is wrong?

Each mutant of the catalogue below is one small defect of the project's own code (a
converter layout or sign, the rename rule, the pass rules and their NaN handling, the
pickle allowlist, the atomic writer, tiling's halo and mask, the SSIM window, a loss term,
Adam's constants, ...), written as an exact source snippet and its replacement. For each
mutant this script
1. copies the project's files (`git ls-files`: tracked and new, not ignored) once into a
   throwaway folder, so the working tree is never touched,
2. applies the mutant there (the snippet must occur EXACTLY once in its file, else the
   catalogue is stale and the run stops before testing anything),
3. runs the tests the mutant names (`pytest -x`, under a timeout) inside the copy, and
4. restores the file.
A mutant is *killed* when its tests fail, *survives* when they pass. The run prints one
line per mutant and `N of N killed`, names every survivor, and exits 0 only when every
mutant was killed (1 otherwise, 2 for a stale catalogue).

    make mutants                       # = python tools/mutants.py
    python tools/mutants.py --check    # only verify that every snippet still applies
    python tools/mutants.py --list
    python tools/mutants.py --only atomic-link-replaced tv-dropped-in-the-jax-step

Not part of the wheel and not run by `make test` (48 mutants: ~16 minutes on 2 cores);
tests/project/test_mutant_catalogue.py checks, without running a test, that every
snippet still applies.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TIMEOUT = 900  # seconds per mutant; training parity alone takes ~1.5 min when busy


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str                 # file, relative to the repository root
    snippet: str              # exact source text; must occur exactly once
    replacement: str
    tests: tuple[str, ...]    # pytest paths or node ids that must kill it
    what: str                 # the defect in words
    issue_item: int = 0       # 1..7: which of the audit's seven survivors this is (0: none)


M = Mutant
CATALOGUE: tuple[Mutant, ...] = (
    # ---- the audit's seven survivors, as they fall outside the comparison engine
    M("pickle-allowlist-module-names", "weights/pickle_guard.py",
      "        if (module, attr) not in ALLOWED_GLOBALS:",
      "        if module not in {m for m, _ in ALLOWED_GLOBALS}:",
      ("tests/weights/test_hostile_allowed_module_pickles.py",),
      "the pickle allowlist loosened to module names (torch.set_default_dtype passes)", 3),
    M("tv-dropped-in-the-jax-step", "port/trainer.py",
      "        return dln_loss(pred, high, recipe.tv_weight)",
      "        return dln_loss(pred, high, 0.0)",
      ("tests/parity/test_train_parity.py",),
      "the Linen trainer's loss without its TV term", 4),
    M("prelu-slopes-made-positive", "weights/rules.py",
      "        return value.reshape(()) if value.size == 1 else value",
      "        return np.abs(value).reshape(()) if value.size == 1 else np.abs(value)",
      ("tests/weights/test_prelu_slopes.py", "tests/parity/test_prelu_slopes_parity.py"),
      "PReLU slopes made positive when a checkpoint is converted", 5),
    M("atomic-link-replaced", "core/atomic_files.py",
      "        os.link(tmp, dst)  # atomic, and fails if dst exists",
      "        os.replace(tmp, dst)  # atomic, and fails if dst exists",
      ("tests/core/test_atomic_race.py", "tests/dln/test_enhance_race.py"),
      "the atomic writer replaces a file that appeared meanwhile", 6),
    # ---- the comparison engine's pass rule: the audit's items 1, 2 and 7, and fail-safe
    # verdicts (a NaN, an empty comparison, a shape alone, a final output not compared)
    M("missing-row-not-failing", "parity/engine/rows.py",
      "FAILING = (FAIL, SHAPE, MISSING, OUTPUT_ONLY_FLAX, EMPTY, MISSING_TORCH, NOT_COMPARED)",
      "FAILING = (FAIL, SHAPE, OUTPUT_ONLY_FLAX, EMPTY, MISSING_TORCH, NOT_COMPARED)",
      ("tests/parity/test_fail_safe_pass_rule.py",),
      "a block missing on the JAX side no longer fails the report", 1),
    M("error-with-nanmax", "parity/engine/tolerance.py",
      '    max_abs = float(np.max(diff)) if np.all(np.isfinite(diff)) else float("inf")',
      "    max_abs = float(np.nanmax(diff))",
      ("tests/parity/test_fail_safe_pass_rule.py",),
      "the error taken with a NaN-ignoring maximum (a NaN in the prediction passes)", 2),
    M("plot-without-first-divergence-mark", "parity/engine/report.py",
      "        if first is not None:\n            ax.scatter([first]",
      "        if False:\n            ax.scatter([first]",
      ("tests/parity/test_plot_marks.py",),
      "the per-layer plot without its first-divergence ring and line", 7),
    M("empty-comparison-passes", "parity/engine/rows.py",
      "        return not self.failures and any(row.passed for row in self.rows)",
      "        return not self.failures",
      ("tests/parity/test_fail_safe_pass_rule.py",),
      "the empty-comparison guard removed: a report with nothing compared passes"),
    M("nothing-compared-not-refused", "parity/engine/api.py",
      "    if not report.compared:", "    if False:",
      ("tests/parity/test_engine_api.py",),
      "a comparison in which no output had a counterpart is returned, not refused"),
    M("zero-size-outputs-pass", "parity/engine/tolerance.py",
      '        return Comparison(float("nan"), float("nan"), float("nan"), False, True, '
      'empty=True)',
      "        return Comparison(0.0, 0.0, 0.0, True, True)",
      ("tests/parity/test_fail_safe_pass_rule.py",),
      "zero-size outputs (nothing measured) pass"),
    M("shape-mismatch-row-passes", "parity/engine/rows.py",
      "        return Row(name, shape, tuple(np.shape(actual)), None, None, None, SHAPE, "
      "flax_name,",
      "        return Row(name, shape, tuple(np.shape(actual)), None, None, None, PASS, "
      "flax_name,",
      ("tests/parity/test_fail_safe_pass_rule.py",),
      "a shape mismatch alone (values otherwise equal) passes"),
    M("missing-in-torch-not-flagged", "parity/engine/rows.py",
      "             for name in declared if name and name not in seen]",
      "             for name in () if name and name not in seen]",
      ("tests/parity/test_fail_safe_pass_rule.py",),
      "a chosen torch module with no output leaves no row"),
    M("declared-modules-not-passed-on", "parity/engine/api.py",
      "frontend.path_candidates, reference.kinds if chosen else ())",
      "frontend.path_candidates, ())",
      ("tests/parity/test_fail_safe_dln_parity.py::"
       "test_a_declared_block_that_never_runs_in_the_reference_fails",),
      "compare() does not tell the rows which torch modules were chosen"),
    M("final-output-not-compared-passes", "parity/engine/rows.py",
      '    if "" not in seen and "" not in flax_modules:', "    if False:",
      ("tests/parity/test_fail_safe_pass_rule.py",),
      "a final output with no floating-point array on either side passes unseen"),
    # ---- the Linen frontend: which call of a module is its output, and call numbering
    M("nested-call-compared-not-the-outermost", "parity/engine/linen.py",
      ' and (path, "__call__") not in running', "",
      ("tests/parity/test_fail_safe_verdicts.py::"
       "test_a_nan_or_inf_in_an_intermediate_output_alone_fails",),
      "a block subclass's inner super().__call__ is compared, its real output is `#2`"),
    M("root-inner-call-is-captured", "parity/engine/linen.py",
      '            return method_name == "__call__" and bool(module.path) and \\\n'
      '                (wanted is None or path in wanted) and (path, "__call__") not in running',
      '            return method_name == "__call__" and \\\n'
      '                (wanted is None or path in wanted or not path)',
      ("tests/parity/test_engine_api.py::test_the_outermost_call_of_the_root_is_the_prediction",),
      "the root recorded like any module, every call: its inner super().__call__ first"),
    M("call-suffix-off-by-one", "parity/engine/linen.py",
      "            for call, output in enumerate(value, 1):",
      "            for call, output in enumerate(value):",
      ("tests/parity/test_fail_safe_verdicts.py::"
       "test_the_correct_staged_port_passes_with_every_block_compared",),
      "the Flax side's calls numbered from 0: every first call is `#0`, pairs with nothing"),
    # ---- gradient parity's verdict
    M("gradient-nan-ignored", "parity/grads/model_gradients.py",
      "    return all((r.rel_l2 if rule == RELATIVE_L2 else r.rel_to_scale) <= tol for r in rows)",
      "    return not any((r.rel_l2 if rule == RELATIVE_L2 else r.rel_to_scale) > tol "
      "for r in rows)",
      ("tests/parity/test_fail_safe_gradients_training.py",),
      "a NaN gradient error passes its limit"),
    M("gradient-loss-nan-ignored", "parity/grads/model_gradients.py",
      "        finite = math.isfinite(self.loss_torch) and math.isfinite(self.loss_jax)",
      "        finite = True",
      ("tests/parity/test_fail_safe_gradients_training.py",),
      "a NaN or infinite loss passes when the gradients agree"),
    M("gradient-worst-skips-nan", "parity/grads/model_gradients.py",
      "    return max(rows, key=lambda r: math.inf if math.isnan(_error(r, rule)) else "
      "_error(r, rule))",
      "    return max(rows, key=lambda r: _error(r, rule))",
      ("tests/parity/test_fail_safe_gradients_training.py",),
      "the worst gradient tensor found with max() alone (a NaN not first is passed over)"),
    M("gradient-uncovered-parameters-unjudged", "parity/grads/model_gradients.py",
      "    uncovered = tuple((n, tuple(p.shape)) for n, p in names.items() if n not in covered)",
      "    uncovered = ()",
      ("tests/parity/test_fail_safe_gradients_training.py::"
       "test_a_torch_parameter_the_conversion_plan_leaves_out_fails_as_a_row",),
      "a torch parameter the conversion plan leaves out gets no gradient row"),
    # ---- weights: converter layouts, rename, strict checks, safe loading
    M("conv-kernel-in-out-swapped", "weights/rules.py",
      "    if kind == \"conv\":            # (O, I/g, *k) -> (*k, I/g, O)\n"
      "        return np.ascontiguousarray(value.transpose(*_spatial(value.ndim), 1, 0))",
      "    if kind == \"conv\":            # (O, I/g, *k) -> (*k, I/g, O)\n"
      "        return np.ascontiguousarray(value.transpose(*_spatial(value.ndim), 0, 1))",
      ("tests/weights/test_convert.py",),
      "conv kernels converted with their input and output axes swapped"),
    M("dense-kernel-reshaped", "weights/rules.py",
      "    if kind == \"dense\":\n        return np.ascontiguousarray(value.T)\n"
      "    if kind == \"prelu\":\n        return value.reshape(()) if",
      "    if kind == \"dense\":\n        return value.reshape(value.shape[::-1])\n"
      "    if kind == \"prelu\":\n        return value.reshape(()) if",
      ("tests/weights/test_convert.py",),
      "dense kernels reshaped instead of transposed"),
    M("rename-drops-sequential-index", "weights/trees.py",
      "    return _SEQUENTIAL_INDEX.sub(r\"_\\1\", torch_module).replace(\".\", \"/\")",
      "    return torch_module.replace(\".\", \"/\")",
      ("tests/weights/test_rules.py",),
      "the rename rule keeps `fc.0` as `fc/0` instead of `fc_0`"),
    M("strict-check-ignores-missing", "weights/trees.py",
      "    missing = sorted(set(expected) - set(got))",
      "    missing = []",
      ("tests/weights/test_convert.py",),
      "the strict key check lets missing tensors through"),
    M("strict-check-ignores-unexpected", "weights/trees.py",
      "    unexpected = sorted(set(got) - set(expected))",
      "    unexpected = []",
      ("tests/weights/test_rules.py",),
      "the strict key check's `unexpected` list ignored (torch tensors left unconverted)"),
    M("rename-sequential-candidate-dropped", "weights/trees.py",
      "    return [first] if sequential == first else [first, sequential]",
      "    return [first]",
      ("tests/weights/test_rename_candidates.py",),
      "the rename rule no longer offers a Flax nn.Sequential's `a/layers_0` for `a.0`"),
    M("non-finite-tensors-accepted", "weights/tensor_checks.py",
      "        if not finite.all():",
      "        if False:",
      ("tests/weights/test_hostile_broken_checkpoints.py",),
      "a checkpoint holding NaN or Inf is accepted"),
    M("negative-bit-ignored", "weights/torch_reader.py",
      "        return -view if tensor.is_neg() else view",
      "        return view",
      ("tests/weights/test_hostile_allowed_module_pickles.py",),
      "the loader ignores a tensor's pickled negative bit (every value's opposite)"),
    # ---- core: atomic units, outputs vs inputs, tiling geometry, evaluation, recipe
    M("atomic-unit-not-rolled-back", "core/atomic_files.py",
      "                if previous is not None:\n                    os.replace(previous, dst)",
      "                if False:\n                    os.replace(previous, dst)",
      ("tests/core/test_atomic_units_and_state_files.py",),
      "a unit whose second file fails leaves the first one replaced"),
    M("hard-link-not-seen-as-the-input", "core/run_outputs.py",
      "    return ia is not None and ia == _inode(b)",
      "    return False",
      ("tests/core/test_run_outputs_and_text.py",),
      "an output that is a hard link to an input is not recognised"),
    M("tiling-halo-one-short", "weights/stages.py",
      '        return f + max(l1 + r[f"{lbp}.local_weight2_1"], residual + l2)',
      '        return f + max(l1 + r[f"{lbp}.local_weight2_1"], residual + l2) - 1',
      ("tests/models/test_tiled_exact.py",),
      "the LBP stage's halo one pixel short"),
    M("tiling-mask-dropped", "port/tiled.py",
      "        return out * mask", "        return out",
      ("tests/models/test_tiled_exact.py",),
      "conv outputs outside the image not masked to zero (JAX tiles and buckets)"),
    M("theta-on-bgr", "core/evaluation.py",
      "    u = a @ RGB_TO_XYZ.T\n    v = b @ RGB_TO_XYZ.T",
      "    u = a[..., ::-1] @ RGB_TO_XYZ.T\n    v = b[..., ::-1] @ RGB_TO_XYZ.T",
      ("tests/core/test_metrics.py",),
      "theta fed BGR to the RGB -> XYZ matrix (the report's defect 7)"),
    M("decay-float-test-rounded", "core/recipe.py",
      "            if 1 <= candidate <= total_epochs and candidate % period == 0:",
      "            if 1 <= candidate <= total_epochs and abs(candidate - k * period) < 1:",
      ("tests/core/test_recipe.py",),
      "the authors' float decay test made approximate (it fires at 500 epochs)"),
    M("schedule-decays-an-epoch-early", "dln/training_loop.py",
      "            if epoch < self.epoch(step):", "            if epoch <= self.epoch(step):",
      ("tests/dln/test_train_schedule.py",),
      "the rate divided during the decay epoch instead of after it"),
    # ---- port: losses, Adam, the step
    M("ssim-window-sigma", "port/losses.py", "SSIM_SIGMA = 1.5", "SSIM_SIGMA = 1.0",
      ("tests/parity/test_losses_parity.py",),
      "the SSIM window's Gaussian sigma 1.0 instead of 1.5"),
    M("tv-counts-swapped", "port/losses.py",
      "    count_h = channels * (height - 1) * width\n    count_w = channels * height * (width - 1)",
      "    count_h = channels * height * (width - 1)\n    count_w = channels * (height - 1) * width",
      ("tests/parity/test_losses_parity.py",),
      "TV's two counts swapped (the report's defect 5)"),
    M("adam-eps-inside-the-root", "port/trainer.py",
      "    return optax.scale_by_adam(b1=beta1, b2=beta2, eps=eps)",
      "    return optax.scale_by_adam(b1=beta1, b2=beta2, eps=0.0, eps_root=eps)",
      ("tests/parity/test_train_parity.py",),
      "Adam's eps under the square root (both Flax trainers)"),
    M("adam-betas-swapped", "port/trainer.py",
      "            return adam(recipe.beta1, recipe.beta2, recipe.eps)",
      "            return adam(recipe.beta2, recipe.beta1, recipe.eps)",
      ("tests/parity/test_train_parity.py",),
      "Adam's betas swapped in the Linen trainer"),
    M("step-ignores-the-rate-it-is-given", "port/trainer.py",
      "        params = jax.tree_util.tree_map(lambda p, u: p - lr * u, params, updates)",
      "        params = jax.tree_util.tree_map(lambda p, u: p - 1e-5 * u, params, updates)",
      ("tests/parity/test_train_parity.py",),
      "the Linen step's rate fixed at trace time (the decay never reaches it)"),
    # ---- training parity's pass rule
    M("training-verdict-nan-passes", "parity/grads/training_result.py",
      "    return bool(value <= limit)  # False for NaN",
      "    return not bool(value > limit)",
      ("tests/parity/test_training_verdicts.py",),
      "a NaN figure passes its limit"),
    M("training-worst-skips-nan", "parity/grads/training_result.py",
      "    name = max(table, key=lambda k: math.inf if math.isnan(table[k]) else table[k])",
      "    name = max(table, key=table.get)",
      ("tests/parity/test_training_verdicts.py",),
      "the worst of a table found with max() alone (a NaN not first is passed over)"),
    M("training-completeness-unchecked", "parity/grads/training_result.py",
      "        failing = [] if self.finite and self.complete() else [FINITE]",
      "        failing = [] if self.finite else [FINITE]",
      ("tests/parity/test_training_verdicts.py",),
      "a run with steps or tensors left uncompared passes"),
    M("training-nan-weights-unseen", "parity/grads/training_parity.py",
      "        finite = finite and all(bool(np.all(np.isfinite(a))) for a in arrays)",
      "        finite = finite",
      ("tests/parity/test_training_verdicts.py",),
      "a NaN or Inf in a final weight or moment is not flagged"),
    M("training-moments-unjudged", "parity/grads/training_result.py",
      "            out.append((MOMENTS, f\"Adam moments of {name}\", value, TRAIN_MOMENTS_RTOL))",
      "            pass",
      ("tests/parity/test_train_parity.py",),
      "Adam's moments not judged (a scaled gradient passes)"),
    M("training-first-loss-limit-loose", "parity/engine/tolerance.py",
      "TRAIN_FIRST_LOSS_RTOL = 5e-6", "TRAIN_FIRST_LOSS_RTOL = 5e-5",
      ("tests/parity/test_train_parity.py",),
      "step 1's loss limit 10x looser (the TV term's absence hides under it)"),
    M("training-defect-not-injected", "parity/grads/training_zoo.py",
      "        return [rates[min(i + self.schedule_shift, n - 1)] * self.lr_scale for i in "
      "range(n)]",
      "        return list(rates)",
      ("tests/parity/test_train_parity.py",),
      "the zoo's rate defects never reach the JAX side (the zoo would test nothing)"),
    # ---- the NNX frontend (parity/engine/nnx.py)
    M("nnx-super-call-logged-twice", "parity/engine/nnx.py",
      "        if run is None or key not in run.paths or key in run.running:",
      "        if run is None or key not in run.paths:",
      ("tests/parity/test_nnx_frontend.py",),
      "a subclass's __call__ calling super().__call__ logged as two calls of one module"),
    M("nnx-patches-left-in-place", "parity/engine/nnx.py",
      "            setattr(cls, \"__call__\", original)\n",
      "            pass\n",
      ("tests/parity/test_nnx_frontend.py",),
      "the patched __call__ of NNX classes not restored after a run"),
    M("nnx-inherited-call-not-captured", "parity/engine/nnx.py",
      "        for cls in type(module).__mro__:",
      "        for cls in (type(module),):",
      ("tests/parity/test_nnx_frontend.py",),
      "only each class's own __call__ patched: a subclass inheriting it is not captured"),
)


# ---- applying ---------------------------------------------------------------------------
class StaleCatalogue(Exception):
    """A mutant whose snippet no longer occurs exactly once in its file."""


def stale_mutants(root: Path = ROOT, catalogue=CATALOGUE) -> list[str]:
    """One line per mutant that cannot be applied to the files under root, or whose tests
    do not exist; [] when the whole catalogue applies."""
    problems, names = [], set()
    for mutant in catalogue:
        if mutant.name in names:
            problems.append(f"{mutant.name}: named twice")
        names.add(mutant.name)
        path = root / mutant.path
        if not path.is_file():
            problems.append(f"{mutant.name}: {mutant.path} does not exist")
            continue
        count = path.read_text().count(mutant.snippet)
        if count != 1:
            problems.append(f"{mutant.name}: its snippet occurs {count} times in {mutant.path}")
        if mutant.snippet == mutant.replacement:
            problems.append(f"{mutant.name}: its replacement changes nothing")
        for test in mutant.tests:
            if not (root / test.split("::")[0]).is_file():
                problems.append(f"{mutant.name}: test file {test} does not exist")
    return problems


def project_files(root: Path = ROOT) -> list[str]:
    """Tracked and new files (not ignored) of the working tree, relative paths."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=root, check=True, capture_output=True).stdout
    return [name for name in out.decode().split("\0") if name and (root / name).is_file()]


def copy_project(destination: Path, root: Path = ROOT) -> Path:
    for name in project_files(root):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    return destination


@dataclasses.dataclass
class Outcome:
    mutant: Mutant
    status: str      # killed | survived | timeout | error
    seconds: float
    detail: str = ""

    @property
    def killed(self) -> bool:
        return self.status in ("killed", "timeout")


def _first_failure(output: str) -> str:
    match = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    return match.group(1) if match else ""


def run_mutant(copy: Path, mutant: Mutant, timeout: float, python: str) -> Outcome:
    path = copy / mutant.path
    original = path.read_text()
    if original.count(mutant.snippet) != 1:
        raise StaleCatalogue(mutant.name)
    path.write_text(original.replace(mutant.snippet, mutant.replacement))
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1",
           "DLN_NO_PROGRESS": "1"}
    start = time.monotonic()
    proc = subprocess.Popen([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                             "-o", "addopts=-ra", *mutant.tests], cwd=copy, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return Outcome(mutant, "timeout", time.monotonic() - start, f"over {timeout:g} s")
    finally:
        path.write_text(original)
    seconds = time.monotonic() - start
    if proc.returncode == 1:
        return Outcome(mutant, "killed", seconds, _first_failure(output))
    if proc.returncode == 0:
        return Outcome(mutant, "survived", seconds, "all its tests passed")
    tail = " | ".join(output.strip().splitlines()[-3:])
    return Outcome(mutant, "error", seconds, f"pytest exit {proc.returncode}: {tail[:300]}")


def check_copy_is_imported(copy: Path, python: str) -> None:
    """The copy's packages, not the working tree's (an editable install), must be imported."""
    out = subprocess.run([python, "-c", "import core, weights; print(core.__file__)"], cwd=copy,
                         env={**os.environ, "PYTHONPATH": str(copy)}, capture_output=True,
                         text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"the copy's tests would import {out}, not the copy: stopping")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that every mutant "
                        "still applies (exactly one occurrence of its snippet)")
    parser.add_argument("--list", action="store_true", help="list the catalogue")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds per mutant (default {DEFAULT_TIMEOUT})")
    args = parser.parse_args(argv)
    catalogue = [m for m in CATALOGUE if not args.only or m.name in args.only]
    if args.only and len(catalogue) != len(set(args.only)):
        known = {m.name for m in CATALOGUE}
        print("unknown mutant(s): " + ", ".join(sorted(set(args.only) - known)))
        return 2
    if args.list:
        for m in catalogue:
            seven = f" [audit item {m.issue_item}]" if m.issue_item else ""
            print(f"{m.name:<36} {m.path}: {m.what}{seven}")
        return 0
    problems = stale_mutants(ROOT, catalogue)
    if problems:
        print("stale mutant catalogue (fix tools/mutants.py):\n  " + "\n  ".join(problems))
        return 2
    if args.check:
        print(f"{len(catalogue)} mutants, every snippet applies exactly once")
        return 0
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="dln-mutants-") as tmp:
        copy = copy_project(Path(tmp) / "project")
        check_copy_is_imported(copy, sys.executable)
        print(f"{len(catalogue)} mutants on a copy in {copy}", flush=True)
        for i, mutant in enumerate(catalogue, 1):
            outcome = run_mutant(copy, mutant, args.timeout, sys.executable)
            outcomes.append(outcome)
            print(f"[{i:>2}/{len(catalogue)}] {outcome.status:<8} {outcome.seconds:6.1f} s  "
                  f"{mutant.name}  ({outcome.detail})", flush=True)
    killed = sum(o.killed for o in outcomes)
    print(f"{killed} of {len(outcomes)} killed")
    survivors = [o for o in outcomes if not o.killed]
    if survivors:
        print("not killed: " + ", ".join(f"{o.mutant.name} ({o.status})" for o in survivors))
    return 0 if not survivors else 1


if __name__ == "__main__":
    sys.exit(main())
