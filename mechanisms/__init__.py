"""Privacy: per-client clipping, noise mechanisms, their sensitivity, and the accountant.

Conventions, used everywhere in fedray:
    - Adjacency is user-level: one client's whole data replaced by zero (dp-accounting's
      `NeighboringRelation.REPLACE_SPECIAL`).
    - A participation bound (k, b) means at most k participations, any two at least b rounds
      apart (|i - j| >= b).
    - Released values are x_t + (C^-1 z)_t with z ~ N(0, sigma^2 clip^2) per coordinate, and
      rho = sens(C; k, b)^2 / (2 sigma^2). C is the noise's factorisation (the word "strategy"
      is kept for the server's update rule, `strategies/`).
    - A mechanism is a frozen value, `prepare`d once per run (its factorisation optimised for
      (n, k, b)); its noise stream's state is a `NoiseState` that the server holds.
"""

from mechanisms.base import Mechanism, NoiseState
from mechanisms.noiseless import NoNoise

__all__ = ["Mechanism", "NoNoise", "NoiseState"]
