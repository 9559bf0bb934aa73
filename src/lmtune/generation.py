"""Text generation with a model as it was trained: prompts rendered exactly as in training, batched
with left padding, greedy or sampled, streamed, cut at stop strings. One lock serialises the model,
so concurrent callers (the server) never interleave inside it. `lmtune generate`, `chat`, `serve`
and `eval` use it, and so does GRPO while it trains (it samples the answers it learns from)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

from lmtune.data.templates import Renderer
from lmtune.data.tokenize import bos_prefix
from lmtune.model.precision import autocast, model_device
from lmtune.sampling import SamplingParams


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    ids: list[int] = field(default_factory=list)  # the generated tokens, the EOS that ended them included


class Engine:
    def __init__(self, model, tokenizer, renderer: Renderer, precision: str = "fp32",
                 adapter: Optional[str] = None, lock: Optional[threading.Lock] = None,
                 answer_tokens: Optional[int] = None):
        self.model = model
        self.tokenizer = tokenizer
        self.renderer = renderer
        self.precision = precision
        self.adapter = adapter  # a named peft adapter on a base shared with other engines
        self.lock = lock or threading.Lock()  # shared by the engines of one model object
        self.answer_tokens = answer_tokens  # where the task fixes its answers' length (label_tokens: 1 token)

    def _select(self) -> None:
        """Under the lock: make this engine's adapter the active one of the shared model."""
        if self.adapter is not None:
            self.model.set_adapter(self.adapter)

    def prompt_ids(self, messages: list[dict] | None = None, text: str | None = None) -> list[int]:
        """Token ids of a chat prompt (rendered with the run's template, generation prompt added)
        or of raw text (completions)."""
        rendered = text if messages is None else self.renderer.prompt(messages)
        return bos_prefix(self.tokenizer, self.renderer) + self.tokenizer(rendered, add_special_tokens=False)["input_ids"]

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        """Batched generation with left padding; greedy results equal one-by-one generation."""
        device = model_device(self.model)
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        with self.lock, torch.inference_mode(), autocast(device, self.precision):
            self._select()
            if params.seed is not None:
                torch.manual_seed(params.seed)
            out = self.model.generate(
                input_ids=input_ids, attention_mask=mask, pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id,
                **self._kwargs(params, width),
            )
        return [self._completion(prompt, row[width:].tolist(), params) for prompt, row in zip(prompts, out)]

    def answer_all(self, conversations: list[list[dict]], params: SamplingParams, batch_size: int = 8) -> list[str]:
        """Answers to many chat prompts, in batches of similar length (less padding), returned in
        the order given."""
        prompts = [self.prompt_ids(messages) for messages in conversations]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        answers: list[str] = [""] * len(prompts)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for i, done in zip(chunk, self.generate([prompts[i] for i in chunk], params)):
                answers[i] = done.text.strip()
        return answers

    def stream(self, prompt: list[int], params: SamplingParams, cancel: Optional[threading.Event] = None) -> Iterator[str]:
        """Text pieces as they are generated. The model runs in a thread that holds the lock while it
        generates; setting `cancel` (a client that went away), or leaving this iterator, stops the
        generation at the next token and frees the model for the next request."""
        from transformers import StoppingCriteria, TextIteratorStreamer

        cancel = cancel or threading.Event()

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        device = model_device(self.model)
        ids = torch.tensor([prompt], device=device)
        failure: list[BaseException] = []

        def run():
            try:
                with self.lock, torch.inference_mode(), autocast(device, self.precision):
                    self._select()
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    if not cancel.is_set():
                        self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                                            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                                            stopping_criteria=[Cancelled()], **self._kwargs(params, len(prompt)))
            except BaseException as e:  # surfaced in the caller's thread below
                failure.append(e)
            finally:
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            emitted = ""
            for piece in streamer:
                emitted += piece
                cut = _first_stop(emitted, params.stop)
                if cut is not None:  # the stop string itself is never sent
                    remaining = emitted[:cut][len(emitted) - len(piece):]
                    if remaining:
                        yield remaining
                    break
                yield piece
        finally:
            cancel.set()  # done, a stop string, or a reader that stopped reading: generation ends
        worker.join()
        if failure:
            raise failure[0]

    def context_limit(self) -> Optional[int]:
        """The model's positions (GPT-2 has 1,024; past them its position embedding fails), if it says."""
        config = getattr(self.model, "config", None)
        return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def _kwargs(self, params: SamplingParams, prompt_length: int) -> dict:
        """generate() arguments, with max_new_tokens capped so that prompt + answer stay within
        the model's positions, and at the task's answer length."""
        kwargs = {**self._stop_kwargs(params), **params.generate_kwargs()}
        limit = self.context_limit()
        if limit:
            kwargs["max_new_tokens"] = max(1, min(kwargs["max_new_tokens"], limit - prompt_length))
        if self.answer_tokens:
            kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], self.answer_tokens)
        return kwargs

    def _stop_kwargs(self, params: SamplingParams) -> dict:
        return {"stop_strings": params.stop, "tokenizer": self.tokenizer} if params.stop else {}

    def _completion(self, prompt: list[int], new: list[int], params: SamplingParams) -> Completion:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        ended = eos in new
        if ended:
            new = new[: new.index(eos)]
        while new and new[-1] == pad and pad != eos:
            new = new[:-1]
        generated = new + [eos] if ended else new  # what the model produced, its EOS included (GRPO trains on it)
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        cut = _first_stop(text, params.stop)
        if cut is not None:
            text, ended = text[:cut], True
        whole = ended or (self.answer_tokens is not None and len(new) >= self.answer_tokens)  # a label word is a whole answer
        return Completion(text, len(prompt), len(new), "stop" if whole else "length", generated)


def _first_stop(text: str, stops: list[str]) -> Optional[int]:
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None
