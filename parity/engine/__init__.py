"""The comparison engine: capture, align, compare, tolerances, reports.

Start with parity/engine/api.py (`compare`, `convert_weights`): any torch model against
its Flax port, module by module. hooks.py captures both sides, block_compare.py aligns
and judges rows by the one rule of tolerance.py, report.py / check_report.py write
what people read. capture.py, harness.py and fixture.py are DLN's configuration.
"""
