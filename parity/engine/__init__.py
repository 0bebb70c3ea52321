"""The comparison engine: capture, align, compare, tolerances, reports."""
