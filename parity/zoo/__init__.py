"""The mutation zoo: defects injected into a port to prove the engine catches them.

catalogue.py: defects for any model, by layer kind (models add entries of the same kind:
DLN's are parity/presets/dln_defects.py); mutation.py: one mutant per defect and site,
a status each, the score.
"""
