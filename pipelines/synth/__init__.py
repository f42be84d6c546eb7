"""Synthetic card transactions: the model (``model``), the malformed mix (``malformed``) and producing
them to Kafka (``produce``).

Labelled traffic for fraud detection lives beside them and is imported where used (it needs
pyarrow): ``habits`` (legit cards with habits), ``fraud`` (the named scenarios), ``corpus``
(a labelled corpus in event-time order; ``from_frame`` for other corpora), ``labels`` (the
labels topic), ``labelled`` (``nova generate --fraud-rate``) and ``synccfd`` (``nova corpus``)."""

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
