"""The model lmtune loaded, handed to EleutherAI's lm-evaluation-harness as its HF model class.

The harness gets the very object lmtune trained or loaded (a PeftModel with the adapter applied and
not merged, or the full model), never a name to reload: a harness that loads the base by name
scores a fine-tune exactly like its base (lm-eval #511 #808, LitGPT #1357). Prompts are rendered
with the run's own template (its tokenizer's chat template, or lmtune's plain format), so the
benchmark sees the model the way it was trained to be asked.
"""

from __future__ import annotations

import logging

from lmtune import hardware
from lmtune.errors import ConfigError
from lmtune.loading import Loaded

LM_EVAL_MISSING = ("lmtune bench needs EleutherAI's lm-evaluation-harness: pip install 'lmtune[bench]' "
                   "(or pip install lm-eval==0.4.13)")


def require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError(LM_EVAL_MISSING) from None


class _ExpectedNotices(logging.Filter):
    """The harness warns that a model passed as an object skips its loading options: here that is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("`pretrained` model kwarg") or message.startswith("Passed an already-initialized"))


def continuation_logprobs(lm, loaded: Loaded, requests, disable_tqdm: bool, override_bs) -> list[tuple[float, bool]]:
    """The harness's loglikelihood loop (same order, batches, truncation and shared-context reuse:
    its Collator), with the LM head run only where a continuation token is scored: the harness's
    own loop computes and log-softmaxes logits over the whole vocabulary at every position, which
    made it 1.5x slower than `lmtune eval` on the same rows (bench/harness_vs_eval.py)."""
    import torch
    from lm_eval.models.utils import Collator
    from tqdm import tqdm

    from lmtune.data.collate import PadCollator
    from lmtune.data.tokenize import IGNORE
    from lmtune.model.precision import autocast, model_device
    from lmtune.tasks.base import target_logits

    reorder = Collator(requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])),
                       group_by="contexts", group_fn=lambda r: r[1] + r[2][:-1])
    batch_size = override_bs or (lm.batch_size if lm.batch_size != "auto" else 16)
    device, pad = model_device(loaded.model), PadCollator(loaded.tokenizer.pad_token_id)
    results = []
    bar = tqdm(total=len(requests), disable=disable_tqdm or lm.rank != 0, desc="Running loglikelihood requests")
    for chunk in reorder.get_batched(n=batch_size):
        rows = []  # the sequence, cut from the left to the model's length, with its continuation as the targets
        for _, ctx, cont in chunk:
            ids = (ctx + cont)[-lm.max_length:]
            rows.append({"input_ids": ids, "labels": [IGNORE] * (len(ids) - len(cont)) + cont})
        inputs = {k: v.to(device) for k, v in pad(rows).items()}
        with torch.no_grad(), autocast(device, loaded.precision):
            logits, _ = target_logits(loaded.model, inputs)
        logprobs = torch.log_softmax(logits, dim=-1).split([len(cont) for _, _, cont in chunk])
        for (request, ctx, cont), scores in zip(chunk, logprobs):
            for request, cont, scores in reorder.get_cache(req_str=request, cxt_toks=ctx, cont_toks=cont,
                                                           logits=scores.unsqueeze(0)):
                wanted = torch.tensor(cont, device=scores.device).unsqueeze(0)
                tail = scores[:, -wanted.shape[1]:]
                answer = (float(tail.gather(2, wanted.unsqueeze(-1)).sum()), bool((tail.argmax(-1) == wanted).all()))
                results.append(answer)
                if request is not None:
                    lm.cache_hook.add_partial("loglikelihood", request, answer)
                bar.update(1)
    bar.close()
    return reorder.get_original(results)


def harness_model(loaded: Loaded, batch_size: int, max_length: int | None = None):
    """An lm_eval HFLM over `loaded.model`, its tokenizer and template, in the run's precision."""
    require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    class LmtuneLM(HFLM):
        # Why a subclass: the chat template the harness applies is the run's renderer, not
        # tokenizer.apply_chat_template, so a run trained on lmtune's plain format is asked in it.
        def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
            if add_generation_prompt and chat_history and chat_history[-1]["role"] == "user":
                return loaded.task.renderer.prompt(chat_history)
            return super().apply_chat_template(chat_history, add_generation_prompt)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
            return continuation_logprobs(self, loaded, requests, disable_tqdm, override_bs)

    logger = logging.getLogger("lm_eval.models.huggingface")  # a logger's filters see only its own records
    if not any(isinstance(f, _ExpectedNotices) for f in logger.filters):
        logger.addFilter(_ExpectedNotices())
    precision = loaded.precision
    return LmtuneLM(
        pretrained=loaded.model,
        tokenizer=loaded.tokenizer,
        backend="causal",
        batch_size=batch_size,
        max_length=max_length,
        # lmtune evaluates under the autocast it trained with (bf16 products on a CPU: 4.5x fp32's rate).
        mixed_precision_dtype=None if precision == "fp32" else hardware.DTYPES[precision],
    )
