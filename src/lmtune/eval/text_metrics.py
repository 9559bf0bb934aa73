"""Reference-based metrics for generations: exact match and ROUGE-L (F1 of the longest common
subsequence of lower-cased whitespace tokens, as in Lin 2004, without stemming)."""

from __future__ import annotations


def normalise(text: str) -> list[str]:
    return text.lower().split()


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise(prediction) == normalise(reference))


def rouge_l(prediction: str, reference: str) -> float:
    p, r = normalise(prediction), normalise(reference)
    if not p or not r:
        return float(p == r)
    previous = [0] * (len(r) + 1)
    for token in p:  # longest common subsequence, one row at a time
        current = [0]
        for j, other in enumerate(r, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)
