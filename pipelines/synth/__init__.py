"""Synthetic card transactions: the model (``model``), the malformed mix (``malformed``) and producing
them to Kafka (``produce``)."""

from pipelines.synth.malformed import MALFORMED_KINDS
from pipelines.synth.model import (
    CHANNELS,
    FIELDS,
    STATUSES,
    TransactionChunk,
    TransactionGenerator,
    card_population,
    iter_transactions,
    zipf_weights,
)
from pipelines.synth.produce import GenerateReport, MessageStream, generate, open_message_stream

__all__ = [
    "CHANNELS",
    "FIELDS",
    "MALFORMED_KINDS",
    "STATUSES",
    "GenerateReport",
    "MessageStream",
    "TransactionChunk",
    "TransactionGenerator",
    "card_population",
    "generate",
    "iter_transactions",
    "open_message_stream",
    "zipf_weights",
]
