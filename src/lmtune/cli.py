"""The `lmtune` command: parse arguments and call one function per command; no logic of its own."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import warnings

from lmtune.errors import LmtuneError


def cmd_train(args) -> None:
    from lmtune.config import load_config
    from lmtune.train.run import train

    overrides = list(args.overrides)
    if args.resume and "=" in args.resume and not os.path.exists(args.resume):
        overrides.append(args.resume)  # `--resume key=value`: the value was an override, not a path
        args.resume = "latest"
    if args.output_dir:
        overrides.append(f"output.dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    # Quoted in the message of an interrupted run: the same command, to which --resume is added.
    command = shlex.join(["lmtune", "train", args.config, "--output-dir", cfg.output.dir, *overrides[:len(args.overrides)]])
    train(cfg, resume=args.resume, command=command)


def cmd_plan(args) -> None:
    from lmtune.config import load_config
    from lmtune.plan.command import plan

    overrides = list(args.overrides)
    if args.config and "=" in args.config and not os.path.exists(args.config):
        overrides.insert(0, args.config)  # `lmtune plan --model m key=value`: no config file
        args.config = None
    for flag, key in (("model", "model.name"), ("method", "method.name"), ("batch_size", "train.batch_size"),
                      ("max_length", "data.max_length")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    plan(load_config(args.config, overrides), compare=args.compare, throughput=args.throughput)


def cmd_plot(args) -> None:
    from lmtune.outputs import refuse_existing
    from lmtune.plot import plot_runs

    output = args.output or (f"{args.run_dirs[0]}/loss.png" if len(args.run_dirs) == 1 else "runs.png")
    if len(args.run_dirs) > 1 or args.output:
        refuse_existing(output)  # a run's own loss.png is redrawn; any other picture is never written over
    print(f"lmtune: wrote {plot_runs(args.run_dirs, output)}")


def cmd_data(args) -> None:
    from lmtune.config import load_config
    from lmtune.data.preview import preview

    preview(load_config(args.config, list(args.overrides)), rows=args.rows)


def cmd_eval(args) -> None:
    from lmtune.eval.evaluate import evaluate_run
    from lmtune.outputs import refuse_existing

    refuse_existing(args.output, args.generations)
    report = evaluate_run(args.run_dir, args.data, args.generations, args.max_generations, args.max_new_tokens)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        from lmtune.outputs import write_text_atomic

        write_text_atomic(args.output, text + "\n")


def sampling_params(args):
    from lmtune.infer.engine import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed)


def cmd_generate(args) -> None:
    from lmtune.errors import ConfigError
    from lmtune.infer.generate import chat_messages, generate_file

    if (args.prompt is None) == (args.input is None):
        raise ConfigError("give a prompt, or --input prompts.jsonl with --output answers.jsonl")
    if args.input and not args.output:
        raise ConfigError("--input needs --output answers.jsonl")
    from lmtune.outputs import refuse_existing

    refuse_existing(args.output)
    from lmtune.infer.load import load_engine

    cfg, engine = load_engine(args.run_dir)
    system = args.system if args.system is not None else cfg.data.system_prompt
    params = sampling_params(args)
    if args.input:
        count = generate_file(engine, args.input, args.output, params, system, args.batch_size)
        print(f"lmtune: {count} answers written to {args.output}")
    else:
        print(engine.generate([engine.prompt_ids(chat_messages(args.prompt, system))], params)[0].text.strip())


def cmd_chat(args) -> None:
    from lmtune.infer.chat import chat
    from lmtune.infer.load import load_engine

    cfg, engine = load_engine(args.run_dir)
    system = args.system if args.system is not None else cfg.data.system_prompt
    chat(engine, sampling_params(args), system)


def cmd_serve(args) -> None:
    import uvicorn

    from lmtune.errors import ConfigError
    from lmtune.infer.load import load_engines
    from lmtune.infer.serve import build_app

    if not args.run_dirs and not args.base:
        raise ConfigError("give one or more run directories, or --base MODEL")
    engines = load_engines(args.run_dirs, args.base)
    print(f"lmtune: serving {', '.join(engines)} on http://{args.host}:{args.port}/v1"
          + (" (API key required)" if args.api_key else ""), flush=True)
    uvicorn.run(build_app(engines, args.api_key), host=args.host, port=args.port, log_level="warning")


def add_sampling_options(p) -> None:
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--system", help="system prompt (default: the run's data.system_prompt)")


def cmd_merge(args) -> None:
    from lmtune.export.merge import merge_run

    report = merge_run(args.run_dir, args.out_dir, args.dtype)
    print(f"lmtune: merged {report['method']} adapter written to {report['out']} ({report['dtype']}); "
          f"max |logit difference| to the adapter model: {report['max_abs_logit_diff']:.2e}")


def cmd_export(args) -> None:
    from lmtune.export.export import export_run

    out = export_run(args.run_dir, args.out_dir, args.dtype)
    print(f"lmtune: exported a self-contained model to {out} (weights, tokenizer, generation config, README.md)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmtune", description="Fine-tune language models from a YAML config.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train from CONFIG.yaml, with key.sub=value overrides")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as train.lr=1e-4 data.max_samples=500")
    p.add_argument("--output-dir", help="where to write the run (same as output.dir=...)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                   help="continue the run in the output directory from its newest complete checkpoint (or this one)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plan", help="memory and time a run will need, before it starts (reads no weights)")
    p.add_argument("config", nargs="?", help="YAML config file (or give --model and the options below)")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as train.batch_size=32")
    p.add_argument("--model", help="model name, directory or hub id (same as model.name=...)")
    p.add_argument("--method", help="same as method.name=...")
    p.add_argument("--batch-size", type=int, help="same as train.batch_size=...")
    p.add_argument("--max-length", type=int, help="same as data.max_length=...")
    p.add_argument("--compare", action="store_true", help="every method side by side")
    p.add_argument("--throughput", type=float, help="training GFLOP/s to assume instead of measuring this machine")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("plot", help="draw the loss and validation metrics of one or more runs on one chart")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--output", help="PNG file (default: RUN_DIR/loss.png for one run, runs.png for several)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("data", help="show counts, lengths and the first examples with their loss mask")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as data.max_length=256")
    p.add_argument("--rows", type=int, default=3, help="how many training rows to show")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("eval", help="evaluate a saved run on its validation split or --data FILE")
    p.add_argument("run_dir")
    p.add_argument("--data", help="a data file in the run's format (default: the run's validation file)")
    p.add_argument("--output", help="also write the JSON report to this file")
    p.add_argument("--generations", help="sft: write the generated answers beside the references (JSONL)")
    p.add_argument("--max-generations", type=int, default=50, help="sft: answer this many rows (0: none)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="answer a prompt, or a JSONL file of prompts, with a saved run")
    p.add_argument("run_dir")
    p.add_argument("prompt", nargs="?")
    p.add_argument("--input", help="JSONL of {\"prompt\": ...} or {\"messages\": [...]} rows")
    p.add_argument("--output", help="JSONL written with each input row and its \"output\"")
    p.add_argument("--batch-size", type=int, default=8)
    add_sampling_options(p)
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("chat", help="an interactive chat with a saved run (/reset, /exit)")
    p.add_argument("run_dir")
    add_sampling_options(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="an OpenAI-compatible API over runs (and/or a base model)")
    p.add_argument("run_dirs", nargs="*", help="run directories; each is a model id (its folder name)")
    p.add_argument("--base", help="also serve this base model (alias, directory or hub id)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("LMTUNE_API_KEY"), help="require 'Authorization: Bearer KEY' (or set LMTUNE_API_KEY)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("merge", help="fold a LoRA / DoRA / IA3 / QLoRA adapter into the base and write a plain model")
    p.add_argument("run_dir")
    p.add_argument("out_dir", help="a new (or empty) directory")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="dtype of the written weights")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("export", help="write a self-contained model directory with a model card")
    p.add_argument("run_dir")
    p.add_argument("out_dir", help="a new (or empty) directory")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="dtype of merged weights")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # parse_known_args: overrides may come after options (`train c.yaml --output-dir d train.lr=1e-4`).
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e or args.command not in ("train", "data", "plan")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    # Quieter third-party output: the user reads lmtune's lines, the progress bar and the table.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes tries to fetch an optional CPU kernel from a hub and warns when it cannot; its
    # built-in kernels are used instead, so the warning only adds noise.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # transformers 5 renames arguments across minor versions; its deprecation notices are not the user's to act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers(\.|$)")
    import transformers

    transformers.utils.logging.disable_progress_bar()  # the weight-loading bars; training keeps its own
    from lmtune.train.interrupt import TrainingInterrupted
    try:
        args.func(args)
    except TrainingInterrupted as e:
        print(f"lmtune: {e}", file=sys.stderr)
        return e.exit_code
    except LmtuneError as e:
        print(f"lmtune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmtune: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
