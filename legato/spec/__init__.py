"""Speculative decoding: drafters (suffix, n-gram), the program context they draw on, and the
adaptive draft length. Pure Python, no torch: the engine and the benches import from here."""
