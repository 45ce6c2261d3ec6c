"""Keyframes: DPC-KNN selection (``dpc``, pure numpy) and grid images (``grid``, Pillow).

Import the submodules directly; this package imports nothing heavy.
"""
