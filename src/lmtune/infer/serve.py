"""`lmtune serve`: an OpenAI-compatible HTTP API (FastAPI + uvicorn) over one or more runs.

/v1/models, /v1/chat/completions and /v1/completions, plain or streamed (server-sent events),
with usage counts and stop sequences; /v1/embeddings over embedding runs (floats or base64).
Requests are served concurrently; each model's engine holds a lock, so generations never
interleave inside a model. Errors come in OpenAI's JSON shape.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, Callable, Literal, Optional, Union

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from lmtune.generation import Engine, SamplingParams


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]  # OpenAI's roles; developer is a system turn
    content: Union[str, list[dict[str, Any]], None] = None

    def template_role(self) -> str:
        return "system" if self.role == "developer" else self.role

    def text(self) -> str:
        if isinstance(self.content, list):  # [{"type": "text", "text": ...}, ...]
            return "".join(part.get("text", "") for part in self.content if isinstance(part, dict))
        return self.content or ""


class Sampling(BaseModel):
    """The sampling fields of an OpenAI request, with OpenAI's documented defaults (temperature 1,
    top_p 1), which its clients rely on; `lmtune generate` and `chat` default to greedy instead
    (SamplingParams). Both end in one SamplingParams."""

    model_config = ConfigDict(extra="ignore")
    model: Optional[str] = None  # OpenAI requires it; a server of one model takes its absence as that one
    max_tokens: Optional[int] = Field(None, gt=0)
    max_completion_tokens: Optional[int] = Field(None, gt=0)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    seed: Optional[int] = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")

    def params(self) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(max_new_tokens=self.max_completion_tokens or self.max_tokens or 256,
                              temperature=self.temperature, top_p=self.top_p, seed=self.seed, stop=stop)


class ChatRequest(Sampling):
    messages: list[Message] = Field(..., min_length=1)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI's `user` and future fields are accepted
    model: Optional[str] = None
    input: Union[str, list[str]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, gt=0)


class CompletionRequest(Sampling):
    prompt: Union[str, list[str]]


def error(status: int, message: str, kind: str = "invalid_request_error", code: Optional[str] = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": None, "code": code}})


class ApiError(Exception):
    """An OpenAI-shaped error raised inside a route (the key check is a dependency, not middleware)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code


def install_error_handlers(app) -> None:
    """Errors in OpenAI's JSON shape, never FastAPI's default bodies or a 500 for a client's mistake."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return error(exc.status, exc.message, exc.kind, exc.code)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid body"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(400, f"{where}: {first.get('msg')}" if where else str(first.get("msg")))

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def server_error(request, exc: Exception):  # a bug of ours: still OpenAI's shape, with what went wrong
        return error(500, f"{type(exc).__name__}: {exc}", "server_error")


def openai_router(engines: dict[str, Engine], api_key: Optional[str] = None):
    """/v1/models, /v1/chat/completions and /v1/completions over these engines, as an APIRouter that
    `lmtune serve` and the web UI mount (with install_error_handlers on their app)."""
    from fastapi import APIRouter, Depends
    from fastapi.concurrency import run_in_threadpool

    def check_key(request: Request) -> None:
        if api_key and request.headers.get("authorization", "") != f"Bearer {api_key}":
            raise ApiError(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")

    router = APIRouter(dependencies=[Depends(check_key)])
    created = int(time.time())

    @router.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": m, "object": "model", "created": created, "owned_by": "lmtune"} for m in engines]}

    def unknown_model(name: str):
        return error(404, f"The model {name!r} does not exist; GET /v1/models lists them.", code="model_not_found")

    def generator(body):
        """The generation engine of the request's model, or the error response to send."""
        if (failed := name_the_model(body, engines)) is not None:
            return None, failed
        name = body.model
        engine = engines.get(name)
        if engine is None:
            return None, unknown_model(name)
        if not isinstance(engine, Engine):
            return None, error(400, f"The model {name!r} makes embeddings; use POST /v1/embeddings.")
        return engine, None

    @router.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
        if (failed := name_the_model(body, engines)) is not None:
            return failed
        embedder = engines.get(body.model)
        if embedder is None:
            return unknown_model(body.model)
        if isinstance(embedder, Engine):
            return error(400, f"The model {body.model!r} generates text; embeddings come from a run trained with task embedding.")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or any(not isinstance(t, str) for t in texts):
            return error(400, "input: give a string or a non-empty list of strings")
        if body.dimensions is not None and body.dimensions != embedder.dim:
            return error(400, f"dimensions: this model's embeddings have {embedder.dim}")
        vectors, tokens = await run_in_threadpool(embedder.embed, texts)
        return {"object": "list", "model": body.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "data": [{"object": "embedding", "index": i, "embedding": encode_vector(v, body.encoding_format)}
                         for i, v in enumerate(vectors)]}

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        engine, failed = generator(body)
        if failed is not None:
            return failed
        messages = [{"role": m.template_role(), "content": m.text()} for m in body.messages]
        try:
            prompt = engine.prompt_ids(messages)
        except Exception as e:  # a template that cannot render these roles
            return error(400, f"messages: {e}")
        check_length(engine, [prompt])
        params = body.params()
        ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            def chunk(delta, finish=None):
                return _sse({"id": ident, "object": "chat.completion.chunk", "created": int(time.time()), "model": body.model,
                             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            return sse_response(engine, prompt, params, lambda piece: chunk({"content": piece}),
                                first=(chunk({"role": "assistant", "content": ""}),), last=(chunk({}, "stop"),))
        done = (await run_in_threadpool(engine.generate, [prompt], params))[0]
        return {
            "id": ident, "object": "chat.completion", "created": int(time.time()), "model": body.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text}, "finish_reason": done.finish_reason}],
            "usage": _usage(done.prompt_tokens, done.completion_tokens),
        }

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest):
        engine, failed = generator(body)
        if failed is not None:
            return failed
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not texts:
            return error(400, "prompt: give a string or a non-empty list of strings")
        prompts = [engine.prompt_ids(text=t) for t in texts]
        check_length(engine, prompts)
        params = body.params()
        ident = f"cmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            if len(prompts) != 1:
                return error(400, "stream: one prompt at a time")

            def chunk(text, finish=None):
                return _sse({"id": ident, "object": "text_completion", "created": int(time.time()), "model": body.model,
                             "choices": [{"index": 0, "text": text, "finish_reason": finish}]})
            return sse_response(engine, prompts[0], params, chunk, last=(chunk("", "stop"),))
        done = await run_in_threadpool(engine.generate, prompts, params)
        return {
            "id": ident, "object": "text_completion", "created": int(time.time()), "model": body.model,
            "choices": [{"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None} for i, c in enumerate(done)],
            "usage": _usage(sum(c.prompt_tokens for c in done), sum(c.completion_tokens for c in done)),
        }

    return router


def check_length(engine: Engine, prompts: list[list[int]]) -> None:
    """A prompt the model cannot read at all is the client's mistake (400), not a crash (500)."""
    limit = engine.context_limit()
    longest = max(len(p) for p in prompts)
    if limit and longest >= limit:
        raise ApiError(400, f"This model's maximum context length is {limit} tokens; the prompt has {longest}. "
                            "Shorten the messages.", code="context_length_exceeded")


def sse_response(engine: Engine, prompt: list[int], params: SamplingParams, event: Callable[[str], str],
                 first: tuple[str, ...] = (), last: tuple[str, ...] = ()):
    """Server-sent events: `first`, one `event(piece)` per piece of text as the model makes it, `last`,
    [DONE]. The pieces are pulled in a worker thread; a client that goes away stops the generation
    at the next token and frees the model for the next request."""
    from fastapi.responses import StreamingResponse
    from starlette.concurrency import iterate_in_threadpool

    cancel = threading.Event()
    pieces = engine.stream(prompt, params, cancel)

    async def stream():
        try:
            for item in first:
                yield item
            async for piece in iterate_in_threadpool(pieces):
                if piece:
                    yield event(piece)
            for item in last:
                yield item
            yield "data: [DONE]\n\n"
        finally:
            cancel.set()

    return StreamingResponse(stream(), media_type="text/event-stream")


def name_the_model(body, engines: dict) -> Optional[Any]:
    """Fills in a request's missing `model` when one model is served (as vLLM and llama.cpp's server
    do, for curl users); with several, the request must say which. Returns the error to send, or None."""
    if body.model is None:
        if len(engines) != 1:
            return error(400, f"model: say which of {', '.join(engines)} (GET /v1/models lists them)")
        body.model = next(iter(engines))
    return None


def build_app(engines: dict[str, Engine], api_key: Optional[str] = None):
    """The `lmtune serve` application: the OpenAI-compatible router and its error shapes."""
    from fastapi import FastAPI

    app = FastAPI(title="lmtune")
    install_error_handlers(app)
    app.include_router(openai_router(engines, api_key))
    app.state.models = list(engines)
    return app




def encode_vector(vector, encoding: str):
    """OpenAI's shapes: a list of floats, or base64 of little-endian float32 (what the openai client
    asks for by default, and decodes)."""
    if encoding == "base64":
        import base64

        return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
