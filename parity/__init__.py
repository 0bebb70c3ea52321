"""Everything that compares two frameworks.

Rooms by job: `engine/` (capture, align, compare, tolerances, reports), `zoo/`
(injected defects), `grads/` (gradient and training parity), `evaluation/`
(metrics against libraries, Table 1 and 2), `bench/` (timing).
"""
