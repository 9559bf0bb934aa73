"""lmtune: fine-tune language models from one typed YAML config.

The Python API is the same calls the command line makes (lmtune/api.py), loaded on first use so
that `import lmtune` stays cheap:

    import lmtune
    result = lmtune.train("configs/sentiment_lora.yaml", ["data.max_samples=500"])
    run = lmtune.open_run(result.out)
    print(run.status().state, lmtune.evaluate(run))
"""

import logging

from lmtune.version import __version__  # noqa: F401

# bitsandbytes (imported with transformers' Trainer and peft) tries to fetch an optional CPU kernel
# from a hub and warns when it cannot; its built-in kernels are used instead, so the warning only
# adds noise, to the command line and to the Python API alike.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# Every call of lmtune/api.py but `plan` and `export`, whose names are lmtune's subpackages (use lmtune.api.plan).
API = ("load_config", "train", "open_run", "runs", "evaluate", "generate", "generate_file", "chat", "merge",
       "preview_data", "plot", "serve_app", "describe_config", "StopRequest", "RunInterrupted")


def __getattr__(name: str):
    if name in API:
        from lmtune import api

        return getattr(api, name)
    raise AttributeError(f"module 'lmtune' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *API])
