"""Distributed DP under simulated secure aggregation: the clients' encoder, the server's decoder.

Clients clip, rotate (randomized Hadamard), scale, round conditionally to integers, add a
discrete Gaussian or Skellam noise share and reduce mod m = 2**bits; the server only sees the
modular sum and decodes it (Kairouz, Liu, Steinke 2021; Agarwal, Kairouz, Liu 2021).
"""

from mechanisms.ddp.codec import (
    ChunkEncoding,
    CodecSpec,
    add_mod,
    centred,
    decode,
    encode_chunk,
    wrapped_coordinates,
)
from mechanisms.ddp.rotation import padded_dim, rotate, rotate_scaled, rotation_signs, unrotate
from mechanisms.ddp.rounding import conditional_round, inflated_norm_bound, round_rows
from mechanisms.ddp.samplers import discrete_gaussian, skellam

__all__ = [
    "ChunkEncoding",
    "CodecSpec",
    "add_mod",
    "centred",
    "conditional_round",
    "decode",
    "discrete_gaussian",
    "encode_chunk",
    "inflated_norm_bound",
    "padded_dim",
    "rotate",
    "rotate_scaled",
    "rotation_signs",
    "round_rows",
    "skellam",
    "unrotate",
    "wrapped_coordinates",
]
