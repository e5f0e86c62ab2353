"""gcflow: consistency models trained from scratch, with generator-augmented flows.

The library owns the maths (noise grids, preconditioning, pair construction, distances,
EMA, samplers, exact toy denoisers and metrics); the bundled trainer only composes them.
"""

__version__ = "0.1.0"
