"""Render a conversation as text segments, each marked as trained on (target) or not.

The mask comes from rendering the conversation turn by turn with the template itself, never from
searching for marker strings, so it is right for any chat template that renders incrementally
(each longer conversation's text starts with the shorter one's). Segments are tokenised one by one,
exactly as a prompt is tokenised at inference time, so training and generation see the same ids.
"""

from __future__ import annotations

import json

from lmtune.errors import ConfigError, DataError

Segment = tuple[str, bool]  # (text, is_target)

# The fallback for tokenizers without a chat template (GPT-2, base models): Alpaca-style headers.
PLAIN_SYSTEM = "{content}\n\n"
PLAIN_USER = "### Instruction:\n{content}\n\n### Response:\n"
PLAIN_TOOL = "### Tool result:\n{content}\n\n### Response:\n"


class Renderer:
    def __init__(self, tokenizer, mode: str = "auto"):
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if mode == "chat" and not has_chat:
            raise ConfigError("data.template: chat, but this tokenizer has no chat template; use auto or plain")
        if mode == "eos_separated" and not tokenizer.eos_token:
            raise ConfigError("data.template: eos_separated puts the EOS token between prompt and answer, and this "
                              "tokenizer has none; use plain")
        self.mode = mode if mode == "eos_separated" else "chat" if mode == "chat" or (mode == "auto" and has_chat) else "plain"
        self.tokenizer = tokenizer

    def render(self, ex, add_generation_prompt: bool = False) -> list[Segment]:
        """Segments of a Chat example: raw segments (completion format, EOS added to the answer) or
        rendered messages."""
        if ex["segments"]:
            eos = self.tokenizer.eos_token or ""
            return [(text + eos if is_target else text, is_target) for text, is_target in ex["segments"]]
        return self.segments(ex["messages"], add_generation_prompt)

    def segments(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> list[Segment]:
        """Segments whose concatenation is the rendered conversation; assistant turns are targets.

        With add_generation_prompt the conversation must end on a user turn, and the text ends
        where the assistant's answer would start (a prompt for generation or label scoring).
        """
        if self.mode == "plain":
            return self._plain(messages, add_generation_prompt)
        if self.mode == "eos_separated":
            return self._eos_separated(messages, add_generation_prompt)
        return self._chat(messages, add_generation_prompt)

    def prompt(self, messages: list[dict[str, str]]) -> str:
        return "".join(text for text, _ in self.segments(messages, add_generation_prompt=True))

    def _plain(self, messages, add_generation_prompt):
        eos = self.tokenizer.eos_token or ""
        out: list[Segment] = []
        for m in messages:
            if m["role"] == "assistant":
                calls = "".join("\n" + json.dumps(c) for c in m.get("tool_calls") or [])
                out.append((m["content"] + calls + eos, True))
            else:
                fmt = {"system": PLAIN_SYSTEM, "user": PLAIN_USER, "tool": PLAIN_TOOL}[m["role"]]
                out.append((fmt.format(content=m["content"]), False))
        return out

    def _eos_separated(self, messages, add_generation_prompt):
        """<prompt><EOS><answer><EOS>: the texts as they are, no headers; the EOS token ends each
        prompt and each answer (the seed article's format: the review's tokens, EOS, the label)."""
        eos = self.tokenizer.eos_token
        out: list[Segment] = []
        prompt: list[str] = []
        for m in messages:
            if m["role"] == "assistant":
                out += [("\n".join(prompt) + eos, False), (m["content"] + eos, True)]
                prompt = []
            else:
                prompt.append(m["content"])
        if prompt:
            out.append(("\n".join(prompt) + (eos if add_generation_prompt else ""), False))
        return out

    def _render(self, messages, add_generation_prompt: bool) -> str:
        from jinja2 import TemplateError

        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        except TemplateError as e:
            raise DataError(f"the chat template cannot render this conversation ({e}); set data.template: plain") from None

    def _chat(self, messages, add_generation_prompt):
        out: list[Segment] = []
        done = ""  # the text rendered so far
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = self._render(messages[:i], add_generation_prompt=True)
            full = self._render(messages[: i + 1], add_generation_prompt=False)
            self._check_prefix(done, prompt)
            self._check_prefix(prompt, full)
            out.append((prompt[len(done):], False))
            out.append((full[len(prompt):], True))
            done = full
        if messages and messages[-1]["role"] != "assistant":
            rest = self._render(messages, add_generation_prompt=add_generation_prompt)
            self._check_prefix(done, rest)
            out.append((rest[len(done):], False))
        return [s for s in out if s[0]]

    @staticmethod
    def _check_prefix(shorter: str, longer: str) -> None:
        if not longer.startswith(shorter):
            raise DataError(
                "this chat template does not render conversations incrementally (an earlier turn changes "
                "when a later one is added), so the loss mask cannot be built from it; set data.template: plain"
            )
