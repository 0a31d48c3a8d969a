"""The label sets of the two heads, in head-output order.

They live in one tiny module (no torch, no onnxruntime) because the runtime, the trainer, the
evaluator and the tests must all agree on the order: index ``i`` of a head's logits *is*
``SENTIMENT_LABELS[i]`` / ``TOPIC_LABELS[i]`` for the models finsent trains. A model directory
still carries its own ``labels.json`` and the runtime trusts that file, not this module, so a
model trained on other classes loads fine.
"""

from __future__ import annotations

SENTIMENT_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")

#: The 20 classes of the Twitter Financial News Topic set (alphabetical, as the dataset lists them).
TOPIC_LABELS: tuple[str, ...] = (
    "Analyst Update",
    "Company | Product News",
    "Currencies",
    "Dividend",
    "Earnings",
    "Energy | Oil",
    "Fed | Central Banks",
    "Financials",
    "General News | Opinion",
    "Gold | Metals | Materials",
    "IPO",
    "Legal | Regulation",
    "M&A | Investments",
    "Macro",
    "Markets",
    "Personnel Change",
    "Politics",
    "Stock Commentary",
    "Stock Movement",
    "Treasuries | Corporate Debt",
)

TASKS: tuple[str, ...] = ("sentiment", "topic")
