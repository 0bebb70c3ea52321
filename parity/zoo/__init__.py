"""The mutation zoo: defects injected into a port to prove the engine catches them.

catalogue.py: defects for any model, by layer kind; port.py: what the zoo knows of a
port; mutation.py: one mutant per defect and site, a status each, the score.
defects.py: DLN's own entries (its structure: brightness channel, concat order, ...).
"""
