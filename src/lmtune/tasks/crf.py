"""A CRF over BIO tags: pytorch-crf's CRF, with the transitions BIO forbids (O -> I-x, B-x -> I-y,
a sequence starting with I-x) masked out in training and in decoding, so Viterbi only ever returns
valid tag sequences."""

from __future__ import annotations

import contextlib

import torch
from torchcrf import CRF

FORBIDDEN = -1e4


def bio_allowed(tags: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(allowed[i, j]: tag j may follow tag i; may_start[j]: a sequence may start with tag j)."""
    n = len(tags)
    allowed = torch.ones(n, n, dtype=torch.bool)
    may_start = torch.ones(n, dtype=torch.bool)
    for j, tag in enumerate(tags):
        if not tag.startswith("I-"):
            continue
        entity = tag[2:]
        may_start[j] = False
        for i, before in enumerate(tags):
            allowed[i, j] = before in (f"B-{entity}", f"I-{entity}")
    return allowed, may_start


class BioCRF(CRF):
    def __init__(self, tags: list[str]):
        super().__init__(len(tags), batch_first=True)
        allowed, may_start = bio_allowed(tags)
        self.register_buffer("transition_bias", torch.where(allowed, 0.0, FORBIDDEN), persistent=False)
        self.register_buffer("start_bias", torch.where(may_start, 0.0, FORBIDDEN), persistent=False)

    @contextlib.contextmanager
    def _constrained(self):
        """pytorch-crf reads self.transitions / self.start_transitions; for the duration of a call
        they are the trained parameters plus the BIO mask (gradients still reach the parameters)."""
        params = {name: self._parameters.pop(name) for name in ("transitions", "start_transitions")}
        self.__dict__["transitions"] = params["transitions"] + self.transition_bias
        self.__dict__["start_transitions"] = params["start_transitions"] + self.start_bias
        try:
            yield
        finally:
            for name, p in params.items():
                del self.__dict__[name]
                self._parameters[name] = p

    def forward(self, emissions, tags, mask=None, reduction="sum"):
        with self._constrained():
            return super().forward(emissions, tags, mask, reduction)

    def decode(self, emissions, mask=None):
        with self._constrained():
            return super().decode(emissions, mask)
