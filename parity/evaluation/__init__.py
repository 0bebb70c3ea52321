"""Evaluation against reference libraries: metrics (Table 1) and Table 2."""
