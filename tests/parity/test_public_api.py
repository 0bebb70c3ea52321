"""`import parity` is the public face: exactly these names, options keyword-only, and
importing it starts neither framework (a fixture check must work without torch)."""

import inspect
import subprocess
import sys
from pathlib import Path

import parity

REPO = Path(__file__).resolve().parents[2]
PUBLIC = ["CATALOGUE", "Defect", "GradientParity", "Mutation", "MutationReport", "PreparedPort",
          "Report", "Site", "check_fixture", "compare", "convert_weights", "gradient_parity",
          "prepare_port", "run_zoo", "save_fixture"]
# the data a call is about, positional; everything after it keyword-only
POSITIONAL = {
    "compare": ["torch_model", "flax_model", "variables", "inputs"],
    "convert_weights": ["torch_model", "flax_model", "inputs"],
    "prepare_port": ["torch_model", "flax_model", "inputs"],
    "run_zoo": ["port"],
    "gradient_parity": ["torch_model", "flax_model", "variables", "inputs"],
    "save_fixture": ["path", "torch_model", "flax_model", "inputs"],
    "check_fixture": ["path", "flax_model"],
}


def test_the_package_exports_exactly_the_public_api():
    assert sorted(parity.__all__) == PUBLIC
    assert all(hasattr(parity, name) for name in PUBLIC)
    assert {n for n, v in vars(parity).items() if callable(v) and not n.startswith("_")} == \
        set(PUBLIC) - {"CATALOGUE"}


def test_every_option_of_the_public_functions_is_keyword_only():
    for name, positional in POSITIONAL.items():
        params = inspect.signature(getattr(parity, name)).parameters.values()
        assert [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD] == positional, name
        options = [p for p in params if p.name not in positional]
        assert options and all(p.kind == p.KEYWORD_ONLY for p in options), name


def test_importing_parity_starts_neither_framework_and_works_where_torch_cannot_be_imported():
    code = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            raise ImportError('blocked')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "import parity\n"
            "from parity import check_fixture, compare, run_zoo\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'jax', 'flax'}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]
