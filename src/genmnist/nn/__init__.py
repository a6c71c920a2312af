"""Reusable building blocks: encoders, decoders/generators and shared layers."""

from genmnist.nn.decoders import (
    DECODERS,
    ConvDecoder,
    MLPDecoder,
    NormMLPDecoder,
    ResidualConvDecoder,
)
from genmnist.nn.discriminators import DISCRIMINATORS, ConvDiscriminator, MLPDiscriminator
from genmnist.nn.encoders import ENCODERS, ConvEncoder, MLPEncoder
from genmnist.nn.layers import ACTIVATIONS, NORMS, mlp
from genmnist.nn.modes import evaluating

__all__ = [
    "ACTIVATIONS",
    "DECODERS",
    "DISCRIMINATORS",
    "ENCODERS",
    "NORMS",
    "ConvDecoder",
    "ConvDiscriminator",
    "ConvEncoder",
    "MLPDecoder",
    "MLPDiscriminator",
    "MLPEncoder",
    "NormMLPDecoder",
    "ResidualConvDecoder",
    "evaluating",
    "mlp",
]
