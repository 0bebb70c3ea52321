"""Everything that compares the two frameworks."""
