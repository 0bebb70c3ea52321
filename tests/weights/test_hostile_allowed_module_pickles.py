"""Pickles that stay inside the allowed MODULES: their other callables, and the allowed
callables themselves with hostile arguments.

The pickle guard allows (module, name) pairs, not modules: `torch.set_default_dtype`,
`torch.load` or `collections.namedtuple` are refused by name, by the static gate on its
own (torch's weights-only unpickler would refuse most of them too, so only the static
gate's own refusal proves the allowlist), and nothing they would do is done. An allowed
callable fed hostile arguments (tensor metadata, hooks, sizes, strides, offsets, object
state) either loads exactly what torch.load itself returns for the file, or is refused
in one line.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch

from weights.errors import CheckpointError
from weights.files import load_pth
from weights.pickle_guard import UnsafePickleError, check_torch_file

KEY = "feat1.conv.bias"
VALUES = np.array([1.5, -2.0, 3.25, -4.0], np.float32)


# ---- hand-made pickles: a GLOBAL of any (module, name), called with simple arguments ---------
def _op_text(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _op_argument(value) -> bytes:
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"
    if isinstance(value, int):
        return b"J" + struct.pack("<i", value)  # BININT
    if isinstance(value, str):
        return _op_text(value)
    if isinstance(value, tuple) and value and value[0] == "global":
        return f"c{value[1]}\n{value[2]}\n".encode()
    raise TypeError(value)


def call_pickle(module: str, name: str, *args) -> bytes:
    """{KEY: module.name(*args)} as protocol-2 opcodes (no pickler checks the name)."""
    call = (f"c{module}\n{name}\n".encode() + b"(" + b"".join(map(_op_argument, args))
            + b"tR")
    return b"\x80\x02}" + _op_text("module." + KEY) + call + b"s."


def torch_zip(data_pkl: bytes, storages: dict[str, bytes] | None = None) -> bytes:
    """A zip with torch.save's layout around the given data.pkl and storage records."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        for key, blob in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", blob)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/.data/serialization_id", "0" * 40)
    return buffer.getvalue()


FLOAT64 = ("global", "torch", "float64")
OTHER_CALLABLES = {  # allowed modules, names outside the allowlist; each with what it would do
    "torch.set_default_dtype": ("torch", "set_default_dtype", FLOAT64),
    "torch.set_default_device": ("torch", "set_default_device", "meta"),
    "torch.set_num_threads": ("torch", "set_num_threads", 1),
    "torch.set_grad_enabled": ("torch", "set_grad_enabled", False),
    "torch.manual_seed": ("torch", "manual_seed", 7),
    "torch.load": ("torch", "load", "/etc/hostname"),
    "torch.save": ("torch", "save", 1, "/tmp/dln-hostile-torch-save"),
    "torch.from_numpy": ("torch", "from_numpy", 1),
    "torch._utils._rebuild_device_tensor_from_numpy": (
        "torch._utils", "_rebuild_device_tensor_from_numpy", 1, FLOAT64, "cpu", False),
    "torch._utils._rebuild_wrapper_subclass": ("torch._utils", "_rebuild_wrapper_subclass", 1),
    "torch._utils._rebuild_meta_tensor_no_storage": (
        "torch._utils", "_rebuild_meta_tensor_no_storage", FLOAT64, 1, 1, False),
    "collections.namedtuple": ("collections", "namedtuple", "X", "a b"),
    "collections.Counter": ("collections", "Counter", "abc"),
    "collections.deque": ("collections", "deque", "abc"),
    "collections.UserDict": ("collections", "UserDict"),
}


def _process_state() -> tuple:
    return (torch.get_default_dtype(), str(torch.get_default_device()), torch.get_num_threads(),
            torch.is_grad_enabled(), torch.random.get_rng_state().numpy().tobytes())


@pytest.mark.parametrize("what", sorted(OTHER_CALLABLES))
def test_the_static_gate_alone_refuses_other_callables_of_allowed_modules(what):
    module, name, *args = OTHER_CALLABLES[what]
    data = torch_zip(call_pickle(module, name, *args))
    with pytest.raises(UnsafePickleError) as info:
        check_torch_file(data)
    assert info.value.what == what


@pytest.mark.parametrize("what", ["torch.set_default_dtype", "torch.set_num_threads",
                                  "torch.set_grad_enabled", "torch.manual_seed",
                                  "torch.set_default_device", "collections.namedtuple"])
def test_the_loader_refuses_them_by_name_and_nothing_they_would_do_is_done(tmp_path, what):
    module, name, *args = OTHER_CALLABLES[what]
    path = tmp_path / "evil.pth"
    path.write_bytes(torch_zip(call_pickle(module, name, *args)))
    before = _process_state()
    with pytest.raises(CheckpointError, match=f"asks for {what.replace('.', chr(92) + '.')},"):
        load_pth(path, expect_dln=False)
    assert _process_state() == before


# ---- allowed callables, hostile arguments --------------------------------------------------
class _Call:
    """Pickles as fn(*args) (fn must be importable under its own name)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class _Storage:
    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def _tensor(size=(4,), stride=(1,), offset=0, metadata=None, hooks=None, key="0",
            numel=4, requires_grad=False):
    args = [_Storage(key, numel), offset, size, stride, requires_grad,
            _Call(OrderedDict) if hooks is None else hooks]
    if metadata is not None:
        args.append(metadata)
    return _Call(torch._utils._rebuild_tensor_v2, *args)


def _state(value) -> _Call:
    return _Call(OrderedDict, [("module." + KEY, value)])


HOSTILE_ARGUMENTS = {
    "the negative bit set in the tensor metadata": _state(_tensor(metadata={"neg": True})),
    "an unknown tensor metadata key": _state(_tensor(metadata={"neg": False, "evil": 1})),
    "backward hooks that are not hooks": _state(_tensor(hooks=_Call(OrderedDict,
                                                                    [(0, "not a hook")]))),
    "requires_grad set": _state(_tensor(requires_grad=True)),
    "a negative size": _state(_tensor(size=(-4,))),
    "a negative stride": _state(_tensor(stride=(-1,), offset=3)),
    "an offset past the storage": _state(_tensor(offset=2)),
    "a stride-0 view of one value repeated": _state(_tensor(size=(4,), stride=(0,), key="2",
                                                            numel=1)),
    "a view reversed through its shape": _state(_tensor(size=(2, 2), stride=(1, 2))),
    "OrderedDict called with a number": _Call(OrderedDict, 5),
    "a device where a tensor belongs": _state(_Call(torch.device, "cuda", 7)),
    "a Size where a tensor belongs": _state(_Call(torch.Size, (1 << 40,))),
    "a parameter whose state swaps in another tensor": _state(_Call(
        torch._utils._rebuild_parameter_with_state, _tensor(), False, _Call(OrderedDict),
        {"data": _tensor(key="1")})),
    "a parameter whose state sets an attribute": _state(_Call(
        torch._utils._rebuild_parameter_with_state, _tensor(), True, _Call(OrderedDict),
        {"note": "x"})),
    "a float64 view of a float32 storage": _state(_Call(
        torch._utils._rebuild_tensor_v3, _Storage("0", 4), 0, (2,), (1,), False,
        _Call(OrderedDict), torch.float64)),
}


def _hostile_file(case: str) -> bytes:
    buffer = io.BytesIO()
    _TorchLikePickler(buffer, protocol=2).dump(HOSTILE_ARGUMENTS[case])
    other = (VALUES[::-1] * 10).astype(np.float32)
    return torch_zip(buffer.getvalue(), {"0": VALUES.tobytes(), "1": other.tobytes(),
                                         "2": VALUES[:1].tobytes()})


def _what_torch_loads(data: bytes):
    """torch.load's own answer for the file: {name: float32 values}, or None if it refuses."""
    try:
        state = torch.load(io.BytesIO(data), weights_only=True)
        out = {}
        for name, value in state.items():
            if not isinstance(value, torch.Tensor):
                return None
            out[name.removeprefix("module.")] = value.detach().resolve_neg().to(
                torch.float32).numpy().copy()
        return out
    except Exception:  # noqa: BLE001 - any refusal of torch's
        return None


@pytest.mark.parametrize("case", sorted(HOSTILE_ARGUMENTS))
def test_allowed_callables_with_hostile_arguments_load_what_torch_loads_or_are_refused(
        tmp_path, case):
    data = _hostile_file(case)
    path = tmp_path / "hostile.pth"
    path.write_bytes(data)
    expected = _what_torch_loads(data)
    try:
        arrays, _ = load_pth(path, expect_dln=False)
    except CheckpointError as err:
        assert "\n" not in str(err) and str(path) in str(err), str(err)
        return
    assert expected is not None, f"{case}: loaded {arrays} where torch.load refuses the file"
    assert sorted(arrays) == sorted(expected)
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], expected[name], err_msg=f"{case}: {name}")


def test_a_negative_bit_in_the_metadata_is_the_value_torch_loads_not_its_opposite(tmp_path):
    """torch.save of a negative view writes metadata {'neg': True}: torch.load returns the
    negated values, and so must the loader (it once returned the stored bytes unnegated)."""
    buffer = io.BytesIO()
    torch.save(OrderedDict([("module." + KEY, torch._neg_view(torch.from_numpy(VALUES)))]),
               buffer)
    path = tmp_path / "neg.pth"
    path.write_bytes(buffer.getvalue())
    arrays, _ = load_pth(path, expect_dln=False)
    np.testing.assert_array_equal(arrays[KEY], -VALUES)
