"""`lmtune chat`: an interactive terminal chat with history, a system prompt and streamed tokens."""

from __future__ import annotations

import sys
from typing import TextIO

from lmtune.generation import Engine, SamplingParams

HELP = "lmtune chat: type a message; /reset clears the conversation, /exit quits"


def chat(engine: Engine, params: SamplingParams, system: str | None = None, max_context: int = 2048,
         stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    print(HELP, file=stdout, flush=True)
    history: list[dict] = []
    while True:
        print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:  # end of input
            print(file=stdout)
            return
        text = line.strip()
        if text == "/exit":
            return
        if text == "/reset":
            history = []
            print("(conversation cleared)", file=stdout, flush=True)
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        prefix = [{"role": "system", "content": system}] if system else []
        ids = engine.prompt_ids(prefix + history)
        while len(ids) > max_context and len(history) > 2:  # forget the oldest exchange
            history = history[2:]
            ids = engine.prompt_ids(prefix + history)
        print("assistant> ", end="", file=stdout, flush=True)
        answer = ""
        for piece in engine.stream(ids, params):
            answer += piece
            print(piece, end="", file=stdout, flush=True)
        print(file=stdout, flush=True)
        history.append({"role": "assistant", "content": answer.strip()})
