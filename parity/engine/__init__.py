"""The comparison engine: capture, align, compare, tolerances, reports.

Start with api.py (`compare`, `convert_weights`): any torch model against its Flax
port, module by module. torch_side.py captures the torch model; frontend.py is the
interface to the Flax side (linen.py implements it for Linen, nnx.py for NNX); rows.py
aligns the outputs and judges each row by the one rule of tolerance.py; prepared.py keeps a port
ready for reruns (the zoo, presets); report.py writes what people read; fixture.py
stores a torch run for checks without torch; memory.py refuses runs that would not
fit; check.py is `dln check`; tiled_vs_whole.py holds DLN's tiled inference to the
whole-image forward.
"""
