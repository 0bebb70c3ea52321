"""Verdicts that fail safe, through `dln check` on networks the project has never seen
(small conv + pooling + dense classifiers written here): the final output is always
what is compared, whatever the port calls inside its root `__call__`; a NaN or an
infinity anywhere (either side, final or intermediate output, a gradient), a shape
mismatch alone, zero-size outputs, a final output that is not compared (an extra
tensor, a tuple for one tensor, integers), a parameter with no gradient on one side,
each makes the verdict FAIL (exit 1), while the correct port passes (exit 0). A port
that drops a block holding weights cannot take the torch weights: refused (exit 2) by
the strict key check, naming the tensors left over."""

from __future__ import annotations

import json
import textwrap

import pytest

from dln.cli import main

TORCH_NET = '''
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).mean(dim=(2, 3)))


class NanNet(Net):
    def forward(self, x):
        return super().forward(x) * float("nan")


class LogNet(Net):
    """log of a negative number: NaN on both sides."""
    def forward(self, x):
        return torch.log(super().forward(x) - 10.0)


def make():
    torch.manual_seed(0)
    return Net()


def make_nan():
    torch.manual_seed(0)
    return NanNet()


def make_log():
    torch.manual_seed(0)
    return LogNet()


class Stage(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(6, 6, 3, padding=1)

    def forward(self, x):
        return torch.tanh(self.conv(x))


class Staged(torch.nn.Module):
    """`probe` runs but its output is not used: a NaN there reaches no later output."""
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.stage = Stage()
        self.probe = Stage()
        self.act = torch.nn.Tanh()
        self.fc = torch.nn.Linear(6, 4)

    def head(self, h):
        return self.fc(self.act(h).mean(dim=(2, 3)))

    def forward(self, x):
        h = self.stage(self.stem(x))
        self.probe(h)
        return self.head(h)


class StagedPair(Staged):
    def forward(self, x):
        y = super().forward(x)
        return y, y


class StagedEmpty(Staged):
    def forward(self, x):
        return super().forward(x)[:, :0]


class StagedArgmax(Staged):
    def forward(self, x):
        return super().forward(x).argmax(dim=1)


class StagedNanGrad(Staged):
    """The same outputs; d/d fc.weight[0, 0] is NaN (0 * sqrt'(0) * 0)."""
    def head(self, h):
        w = self.fc.weight
        return super().head(h) + 0.0 * torch.sqrt(w[0, 0] - w[0, 0])


class StagedDetached(Staged):
    """The same outputs; fc.weight gets no gradient."""
    def head(self, h):
        pooled = self.act(h).mean(dim=(2, 3))
        return torch.nn.functional.linear(pooled, self.fc.weight.detach(), self.fc.bias)


def _seeded(cls):
    torch.manual_seed(0)
    return cls()


def make_staged():
    return _seeded(Staged)


def make_staged_pair():
    return _seeded(StagedPair)


def make_staged_empty():
    return _seeded(StagedEmpty)


def make_staged_argmax():
    return _seeded(StagedArgmax)


def make_staged_nan_grad():
    return _seeded(StagedNanGrad)


def make_staged_detached():
    return _seeded(StagedDetached)
'''

FLAX_PORT = '''
import flax.linen as nn
import jax
import jax.numpy as jnp


class Port(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)), name="conv")(x)
        return nn.Dense(4, name="fc")(jnp.tanh(x).mean(axis=(1, 2)))


class Doubled(Port):
    def __call__(self, x):
        return super().__call__(x) * 2


class Nan(Port):
    def __call__(self, x):
        return super().__call__(x).at[0, 1].set(jnp.nan)


class Inf(Port):
    def __call__(self, x):
        return super().__call__(x).at[1, 0].set(jnp.inf)


class Reshaped(Port):
    def __call__(self, x):
        return super().__call__(x)[:, :, None]


class Log(Port):
    def __call__(self, x):
        return jnp.log(super().__call__(x) - 10.0)


def make():
    return Port()


def make_doubled():
    return Doubled()


def make_nan():
    return Nan()


def make_inf():
    return Inf()


def make_reshaped():
    return Reshaped()


def make_log():
    return Log()


PAD = ((1, 1), (1, 1))


class Stage(nn.Module):
    @nn.compact
    def __call__(self, x):
        return jnp.tanh(nn.Conv(6, (3, 3), padding=PAD, name="conv")(x))


class NanStage(Stage):
    def __call__(self, x):
        return super().__call__(x).at[0, 1, 2, 3].set(jnp.nan)


class InfStage(Stage):
    def __call__(self, x):
        return super().__call__(x).at[1, 0, 0, 5].set(jnp.inf)


class Fc(nn.Module):
    """Dense(4) by hand; `grad` changes only its gradient: 'nan' (0 * sqrt'(0) * 0),
    'inf' (sqrt'(0) * 1), 'none' (the kernel behind stop_gradient)."""
    grad: str = ""

    @nn.compact
    def __call__(self, x):
        k = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], 4))
        b = self.param("bias", nn.initializers.zeros, (4,))
        y = x @ (jax.lax.stop_gradient(k) if self.grad == "none" else k) + b
        if self.grad == "nan":
            y = y + 0.0 * jnp.sqrt(k[0, 0] - k[0, 0])
        if self.grad == "inf":
            y = y + jnp.sqrt(k[0, 0] - jax.lax.stop_gradient(k[0, 0]))
        return y


class Staged(nn.Module):
    probe: str = "Stage"
    drop_probe: bool = False
    grad: str = ""

    def head(self, h):
        return Fc(self.grad, name="fc")(jnp.tanh(h).mean(axis=(1, 2)))

    @nn.compact
    def __call__(self, x):
        h = Stage(name="stage")(nn.Conv(6, (3, 3), padding=PAD, name="stem")(x))
        if not self.drop_probe:
            globals()[self.probe](name="probe")(h)
        return self.head(h)


class StagedNoTanh(Staged):
    """Drops torch's weightless `act` block."""
    def head(self, h):
        return Fc(name="fc")(h.mean(axis=(1, 2)))


class StagedExtra(Staged):
    @nn.compact
    def __call__(self, x):
        y = super().__call__(x)
        return y, jnp.zeros(3)


class StagedPair(Staged):
    @nn.compact
    def __call__(self, x):
        y = super().__call__(x)
        return y, y


class StagedEmpty(Staged):
    @nn.compact
    def __call__(self, x):
        return super().__call__(x)[:, :0]


class StagedArgmax(Staged):
    @nn.compact
    def __call__(self, x):
        return super().__call__(x).argmax(axis=1)


def make_staged():
    return Staged()


def make_staged_nan_probe():
    return Staged(probe="NanStage")


def make_staged_inf_probe():
    return Staged(probe="InfStage")


def make_staged_no_probe():
    return Staged(drop_probe=True)


def make_staged_no_tanh():
    return StagedNoTanh()


def make_staged_extra():
    return StagedExtra()


def make_staged_pair():
    return StagedPair()


def make_staged_empty():
    return StagedEmpty()


def make_staged_argmax():
    return StagedArgmax()


def make_staged_nan_grad():
    return Staged(grad="nan")


def make_staged_inf_grad():
    return Staged(grad="inf")


def make_staged_detached():
    return Staged(grad="none")
'''


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unseen_net")
    (folder / "unseen_torch.py").write_text(textwrap.dedent(TORCH_NET))
    (folder / "unseen_flax.py").write_text(textwrap.dedent(FLAX_PORT))
    return folder


def _check(folder, torch_factory: str, flax_factory: str, capsys, *extra: str
           ) -> tuple[int, str]:
    code = main(["check", "--torch", f"{folder / 'unseen_torch.py'}:{torch_factory}",
                 "--flax", f"{folder / 'unseen_flax.py'}:{flax_factory}",
                 "--input-shape", "2,3,8,8", *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_correct_port_of_an_unseen_network_passes(model_files, capsys):
    code, out = _check(model_files, "make", "make", capsys)
    assert code == 0, out


@pytest.mark.parametrize("port", ["make_doubled", "make_nan", "make_inf", "make_reshaped"])
def test_a_subclass_that_changes_the_final_output_in_its_call_fails(model_files, capsys,
                                                                      port):
    """The root's outermost call is the prediction: its inner super().__call__ is not."""
    code, out = _check(model_files, "make", port, capsys)
    assert code == 1, out


def test_a_nan_on_the_torch_side_alone_fails(model_files, capsys):
    code, out = _check(model_files, "make_nan", "make", capsys)
    assert code == 1, out


def test_nan_on_both_sides_at_the_same_place_fails(model_files, capsys):
    code, out = _check(model_files, "make_log", "make_log", capsys)
    assert code == 1, out


def _rows(folder, torch_factory, flax_factory, capsys, *extra) -> tuple[int, dict, str]:
    """Exit code, report.json and printed text of one `dln check --report`."""
    report = folder / f"report_{torch_factory}_{flax_factory}"
    code, out = _check(folder, torch_factory, flax_factory, capsys, "--report", str(report),
                       *extra)
    return code, json.loads((report / "report.json").read_text()), out


def _not_passing(report: dict) -> list[tuple[str, str]]:
    return [(r["name"], r["status"]) for r in report["rows"] if r["status"] != "pass"]


def test_the_correct_staged_port_passes_with_every_block_compared(model_files, capsys):
    code, report, out = _rows(model_files, "make_staged", "make_staged", capsys)
    assert code == 0 and report["passed"], out
    assert _not_passing(report) == [("act", "only in torch")], out


@pytest.mark.parametrize("port", ["make_staged_nan_probe", "make_staged_inf_probe"])
def test_a_nan_or_inf_in_an_intermediate_output_alone_fails(model_files, capsys, port):
    """The probe's output reaches no later output, and the NaN/inf is written by a
    subclass of the block after super().__call__: the block's outermost call is what is
    compared, so the probe fails while the final output agrees."""
    code, report, out = _rows(model_files, "make_staged", port, capsys)
    assert code == 1 and report["first_divergence"] == "probe", out
    failing = [(r["name"], r["status"], r["max_abs"]) for r in report["rows"] if
               r["status"] not in ("pass", "only in torch")]
    assert failing == [("probe", "fail", None)], failing  # max_abs infinite: null in JSON


@pytest.mark.parametrize("torch_factory,port,failing", [
    ("make_staged", "make_staged_extra", {("prediction", "missing in JAX"),
                                          ("prediction[0]", "output only in flax"),
                                          ("prediction[1]", "output only in flax")}),
    ("make_staged", "make_staged_pair", {("prediction", "missing in JAX"),
                                         ("prediction[0]", "output only in flax"),
                                         ("prediction[1]", "output only in flax")}),
    ("make_staged_pair", "make_staged", {("prediction[0]", "missing in JAX"),
                                         ("prediction[1]", "missing in JAX"),
                                         ("prediction", "output only in flax")}),
    ("make_staged_empty", "make_staged_empty",
     {("prediction", "empty (zero-size, nothing to compare)")}),
    ("make_staged_argmax", "make_staged_argmax", {("prediction", "final output not compared")}),
], ids=["extra-tensor", "tuple-for-one", "one-for-tuple", "zero-size", "integer-output"])
def test_a_final_output_that_is_not_compared_fails(model_files, capsys, torch_factory, port,
                                                   failing):
    """Every block agrees; what fails is that the final output is not (fully) compared."""
    code, report, out = _rows(model_files, torch_factory, port, capsys)
    assert code == 1 and not report["passed"], out
    assert set(_not_passing(report)) - {("act", "only in torch")} == failing, out


def test_a_port_that_drops_a_block_fails(model_files, capsys):
    """The weightless tanh block dropped: its torch row stays one-sided, the output fails."""
    code, report, out = _rows(model_files, "make_staged", "make_staged_no_tanh", capsys)
    assert code == 1 and ("prediction", "fail") in _not_passing(report), out


def test_a_port_that_drops_a_block_with_weights_fails_naming_its_tensors(model_files, capsys):
    """The conversion cannot place the block's tensors: a FAIL verdict (exit 1), one line."""
    code, out = _check(model_files, "make_staged", "make_staged_no_probe", capsys)
    assert code == 1 and "FAIL" in out and "unexpected" in out and "probe/conv/kernel" in out, \
        out


def test_nothing_compared_at_all_fails(model_files, capsys, tmp_path):
    """No output of either side holds a float array: a FAIL verdict (exit 1), never a pass."""
    (tmp_path / "ints_torch.py").write_text(textwrap.dedent('''
        import torch
        class Ints(torch.nn.Module):
            def forward(self, x):
                return x.argmax(dim=1)
        def make():
            return Ints()
        '''))
    (tmp_path / "ints_flax.py").write_text(textwrap.dedent('''
        import flax.linen as nn
        class Ints(nn.Module):
            def __call__(self, x):
                return x.argmax(axis=-1)
        def make():
            return Ints()
        '''))
    code = main(["check", "--torch", f"{tmp_path / 'ints_torch.py'}:make", "--flax",
                 f"{tmp_path / 'ints_flax.py'}:make", "--input-shape", "2,3,4,4"])
    err = capsys.readouterr().err
    assert code == 1 and "FAIL: nothing was compared" in err, err


def test_gradients_of_the_correct_port_pass(model_files, capsys):
    code, report, out = _rows(model_files, "make_staged", "make_staged", capsys, "--gradients")
    assert code == 0 and report["gradients"]["passed"], out


@pytest.mark.parametrize("torch_factory,port", [
    ("make_staged", "make_staged_nan_grad"), ("make_staged_nan_grad", "make_staged"),
    ("make_staged", "make_staged_inf_grad"),
    ("make_staged", "make_staged_detached"), ("make_staged_detached", "make_staged")],
    ids=["nan-in-jax", "nan-in-torch", "inf-in-jax", "no-gradient-in-jax",
         "no-gradient-in-torch"])
def test_one_bad_gradient_tensor_fails_while_every_output_agrees(model_files, capsys,
                                                                 torch_factory, port):
    code, report, out = _rows(model_files, torch_factory, port, capsys, "--gradients")
    assert code == 1 and not report["gradients"]["passed"], out
    assert {status for _, status in _not_passing(report)} <= {"only in torch", "only in flax"}, \
        out  # the forward agrees
    bad = [r["torch_name"] for r in report["gradients"]["rows"]
           if r["rel_to_scale"] is None or r["rel_to_scale"] > report["gradients"]["tolerance"]]
    assert bad == ["fc.weight"], report["gradients"]["rows"]
