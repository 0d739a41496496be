"""Tasks: one module per algorithmic task, each holding its data, loss and metrics.

  grokking  addition of two numbers, modulo p (Nanda et al.'s modular addition)
            or plain (a + b with a, b in 0..p-1), as `[a, b, =]` sequences.
"""

from toymech.tasks import grokking

__all__ = ["grokking"]
