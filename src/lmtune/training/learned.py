"""Did a classifier learn its task? A run whose final accuracy is no better than always answering
the validation split's most common label has learned the label prior at most, and its summary table
reads like any other's. On the demo, LoRA+ with ratio 16 (B's learning rate 1.1e-2) threw the
gradient norm to 538 at step 75 and ended at 0.505 accuracy, loss ln 2, saved and "finished"
without a word. The run still finishes and saves; this says so where the person is looking."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Optional

# A step's gradient norm this many times the run's median is a spike (the collapse above: 538 against ~5).
SPIKE = 20


def not_learned(final: dict, classes: list[int], log_history: list[dict]) -> Optional[str]:
    """A warning when the final accuracy lies within two standard errors of the most common
    class's share of the validation rows, else None; it names the gradient-norm spike when there was one."""
    if "accuracy" not in final or not classes:
        return None
    rows = len(classes)
    majority = max(Counter(classes).values()) / rows
    if final["accuracy"] > majority + 2 * math.sqrt(majority * (1 - majority) / rows):
        return None
    message = (f"fine-tuned accuracy {final['accuracy']:.4f} is no better than always answering the most common label "
               f"({majority:.4f} of the {rows:,} validation rows): the run has not learned the task")
    norms = [(e["grad_norm"], e["step"]) for e in log_history if isinstance(e.get("grad_norm"), (int, float))]
    if norms:
        peak, step = max(norms)
        median = statistics.median(n for n, _ in norms)
        if math.isfinite(peak) and peak > SPIKE * median:
            return message + (f"; the gradient norm reached {peak:,.0f} at step {step} (median {median:.1f}): "
                              "lower train.lr (or method.lora_plus_ratio)")
    return message + "; train longer or with a higher train.lr, and check that the labels match the texts"
