"""The chunked cross-entropy gives F.cross_entropy's values and gradients, whatever the chunking."""

import pytest
import torch
import torch.nn.functional as F

from lmtune.tasks import token_cross_entropy as module
from lmtune.tasks.token_cross_entropy import token_cross_entropy


@pytest.fixture(params=[8 << 20, 4 * 50 * 3], ids=["one_chunk", "chunks_of_3_rows"])
def chunk_bytes(request, monkeypatch):
    monkeypatch.setattr(module, "CHUNK_BYTES", request.param)


def test_matches_cross_entropy_on_fp32_logits(chunk_bytes):
    torch.manual_seed(0)
    logits = torch.randn(10, 50, dtype=torch.float32) * 3
    before = logits.clone()
    targets = torch.randint(0, 50, (10,))
    mine = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    weights = torch.rand(10)  # a different gradient for each row
    (token_cross_entropy(mine, targets) * weights).sum().backward()
    (F.cross_entropy(theirs, targets, reduction="none") * weights).sum().backward()
    torch.testing.assert_close(token_cross_entropy(logits, targets),
                               F.cross_entropy(logits, targets, reduction="none"))
    torch.testing.assert_close(mine.grad, theirs.grad)
    assert torch.equal(logits, before)  # the backward pass upcasts copies, never the logits themselves


def test_bf16_logits_give_the_upcast_loss_and_a_bf16_gradient(chunk_bytes):
    torch.manual_seed(1)
    logits = (torch.randn(7, 50) * 4).to(torch.bfloat16)
    targets = torch.randint(0, 50, (7,))
    mine = logits.clone().requires_grad_()
    upcast = logits.clone().requires_grad_()
    loss = token_cross_entropy(mine, targets).sum()
    reference = F.cross_entropy(upcast.float(), targets, reduction="sum")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference)
    loss.backward()
    reference.backward()
    assert mine.grad.dtype == torch.bfloat16
    torch.testing.assert_close(mine.grad, upcast.grad, atol=0, rtol=0.0079)  # one bf16 rounding


def test_gradcheck_in_float64():
    torch.manual_seed(2)
    logits = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 8, 3, 3])
    assert torch.autograd.gradcheck(lambda x: token_cross_entropy(x, targets), (logits,))


def test_no_rows():
    logits = torch.zeros(0, 50, requires_grad=True)
    loss = token_cross_entropy(logits, torch.zeros(0, dtype=torch.long)).sum()
    loss.backward()
    assert loss.item() == 0 and logits.grad.shape == (0, 50)
