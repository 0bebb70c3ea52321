"""The mutation zoo: defects injected into a port to prove the engine catches them."""
