"""Models as configurations of the engine: DLN's (dln.py, its zoo entries in
dln_defects.py, its fixture dln_dim16.safetensors as package data)."""
