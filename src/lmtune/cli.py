"""The `lmtune` command: parse arguments and call one function per command; no logic of its own."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import warnings

from lmtune.atomic import refuse_existing, write_text_atomic
from lmtune.errors import ConfigError, LmtuneError
from lmtune.export.gguf_tensors import QUANTS as GGUF_QUANTS
from lmtune.export.k_quants import K_QUANTS
from lmtune.sampling import SamplingParams as SamplingDefaults


class _Api:
    """lmtune.api, imported on first use: `lmtune --help`, `lmtune runs` and `lmtune config` need
    neither transformers nor peft, whose import takes seconds."""

    def __getattr__(self, name: str):
        import transformers

        from lmtune import api as module

        transformers.utils.logging.disable_progress_bar()  # the weight-loading bars; training keeps its own
        return getattr(module, name)


api = _Api()


def split_config(args) -> list[str]:
    """The overrides, with a first argument that is `key=value` rather than a file moved to them:
    `lmtune train model.name=m data.train=f.jsonl` needs no config file."""
    overrides = list(args.overrides)
    if args.config and "=" in args.config and not os.path.exists(args.config):
        overrides.insert(0, args.config)
        args.config = None
    return overrides


def light_config(path, overrides):
    """The config, read before lmtune.api loads transformers, peft and the Trainer (~6 s): a typo
    in a key is reported in a second or two."""
    from lmtune.config import load_config

    return load_config(path, overrides)


def checked_runs(*paths) -> None:
    """Run directories and their weights, checked before lmtune.api loads the training stack: a
    mistyped path or an unfinished run is reported in a second or two."""
    from lmtune.run_dir import RunDir

    for path in paths:
        RunDir.open(path).check_weights()


def cmd_train(args) -> None:
    from lmtune.data.dataset import read_data

    overrides = split_config(args)
    given = len(overrides)
    if args.resume and "=" in args.resume and not os.path.exists(args.resume):
        overrides.append(args.resume)  # `--resume key=value`: the value was an override, not a path
        args.resume = "latest"
    if args.output_dir:
        overrides.append(f"output.dir={args.output_dir}")
    cfg = light_config(args.config, overrides)
    splits = read_data(cfg)  # every row checked, before the training stack loads
    stop = api.StopRequest()
    try:
        with stop_on_signals(stop):
            api.train(cfg, resume=args.resume, stop=stop, splits=splits)
    except api.RunInterrupted as e:
        # The same command, to which --resume is added.
        command = shlex.join(["lmtune", "train", *([args.config] if args.config else []), "--output-dir", cfg.output.dir,
                              *overrides[:given]])
        raise Interrupted(f"{e}. Resume with: {command} --resume", 128 + signal.Signals[e.reason].value) from None
    finally:
        end_process_group()


def end_process_group() -> None:
    """Under torchrun, close the process group before the interpreter exits: left to exit, gloo's
    threads were destroyed while still running and one process in two aborted ("terminate called
    without an active exception") after a run that had finished."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code  # what a shell reports for a process ended by that signal


@contextlib.contextmanager
def stop_on_signals(stop):
    """Ctrl-C / SIGTERM during the training steps ask the run to stop at the step end, with a
    checkpoint; a second signal, or one while loading or saving, stops at once."""
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def restore() -> None:
        for s in SIGNALS:
            signal.signal(s, signal.SIG_DFL if s == signal.SIGTERM else signal.default_int_handler)

    def handle(signum, frame) -> None:
        restore()
        if not stop.armed:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        stop.request(signal.Signals(signum).name)

    for s in SIGNALS:
        signal.signal(s, handle)
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def cmd_plan(args) -> None:
    overrides = split_config(args)  # `lmtune plan --model m key=value`: no config file
    for flag, key in (("model", "model.name"), ("method", "method.name"), ("batch_size", "train.batch_size"),
                      ("max_length", "data.max_length")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    cfg = light_config(args.config, overrides)  # before `api.` loads the training stack
    api.plan(cfg, compare=args.compare, throughput=args.throughput)


def cmd_plot(args) -> None:
    output = args.output or (f"{args.run_dirs[0]}/loss.png" if len(args.run_dirs) == 1 else "runs.png")
    if len(args.run_dirs) > 1 or args.output:
        refuse_existing(output)  # a run's own loss.png is redrawn; any other picture is never written over
    print(f"lmtune: wrote {api.plot(args.run_dirs, output)}")


def cmd_data(args) -> None:
    overrides = split_config(args)
    cfg = light_config(args.config, overrides)  # before `api.` loads the training stack
    api.preview_data(cfg, rows=args.rows)


def cmd_config(args) -> None:
    from lmtune.config_help import describe

    print(describe(args.section), end="")


def cmd_runs(args) -> None:
    from lmtune.report import print_runs
    from lmtune.run_dir import run_summaries

    print_runs(run_summaries(args.directory))


def cmd_eval(args) -> None:
    refuse_existing(args.output, args.generations)
    checked_runs(args.run_dir)
    report = api.evaluate(args.run_dir, args.data, args.generations, args.max_generations, args.max_new_tokens,
                          args.skip_bad_rows)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        write_text_atomic(args.output, text + "\n")


def cmd_bench(args) -> None:
    from lmtune.report import print_bench

    refuse_existing(args.output)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    report = api.bench(args.models, tasks, args.limit, args.batch_size, args.chat_template, args.num_fewshot,
                       not args.no_base, args.data_dir, args.include_path)
    print_bench(report)
    if args.output:
        write_text_atomic(args.output, json.dumps(report, indent=2) + "\n")
        print(f"lmtune: wrote {args.output}")


def cmd_embed(args) -> None:
    refuse_existing(args.output)
    checked_runs(args.run_dir)
    rows, dim = api.embed_file(args.run_dir, args.input, args.output, args.batch_size)
    print(f"lmtune: {rows} embeddings of {dim} dimensions written to {args.output}")


def sampling(args) -> dict:
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
            "top_k": args.top_k, "repetition_penalty": args.repetition_penalty, "seed": args.seed}


def cmd_generate(args) -> None:
    if (args.prompt is None) == (args.input is None):
        raise ConfigError("give a prompt, or --input prompts.jsonl with --output answers.jsonl")
    if args.input and not args.output:
        raise ConfigError("--input needs --output answers.jsonl")
    refuse_existing(args.output)
    checked_runs(args.run_dir)
    if args.input:
        count = api.generate_file(args.run_dir, args.input, args.output, args.system, args.batch_size, **sampling(args))
        print(f"lmtune: {count} answers written to {args.output}")
    else:
        print(api.generate(args.run_dir, args.prompt, args.system, **sampling(args)))


def cmd_chat(args) -> None:
    checked_runs(args.run_dir)
    api.chat(args.run_dir, args.system, **sampling(args))


def cmd_serve(args) -> None:
    import uvicorn

    if not args.run_dirs and not args.base:
        raise ConfigError("give one or more run directories, or --base MODEL")
    checked_runs(*args.run_dirs)
    app = api.serve_app(args.run_dirs, args.base, args.api_key)
    print(f"lmtune: serving {', '.join(app.state.models)} on http://{args.host}:{args.port}/v1"
          + (" (API key required)" if args.api_key else ""), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def cmd_ui(args) -> None:
    import uvicorn

    app = api.ui_app(args.runs_dir, args.configs_dir, args.token, args.max_running)
    where = f"http://{args.host}:{args.port}/" + (f"?token={args.token}" if args.token else "")
    print(f"lmtune: the web UI for {args.runs_dir} is on {where}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def add_sampling_options(p) -> None:
    defaults = SamplingDefaults()
    p.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    p.add_argument("--temperature", type=float, default=defaults.temperature, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=defaults.top_p)
    p.add_argument("--top-k", type=int, default=defaults.top_k)
    p.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--system", help="system prompt (default: the run's data.system_prompt)")


def cmd_merge(args) -> None:
    checked_runs(args.run_dir)
    report = api.merge(args.run_dir, args.out_dir, args.dtype)
    print(f"lmtune: merged {report['method']} adapter written to {report['out']} ({report['dtype']}); "
          f"max |logit difference| to the adapter model: {report['max_abs_logit_diff']:.2e}")


def cmd_export(args) -> None:
    if args.format == "gguf":
        report = api.export_gguf(args.run_dir, args.out_dir, args.quant, args.adapter)
        print(f"lmtune: wrote {report['file']} ({report['quant']}, {report['bytes'] / 2**20:,.1f} MiB; pre-tokenizer "
              f"{report['pre_tokenizer']}; stops at {', '.join(report['stop'])}), "
              f"{'the LoRA adapter ' + report['adapter'] + ', ' if report['adapter'] else ''}a Modelfile and README.md")
        return
    out = api.export(args.run_dir, args.out_dir, args.dtype)
    print(f"lmtune: exported a self-contained model to {out} (weights, tokenizer, generation config, README.md)")


def with_config_keys(parser: argparse.ArgumentParser) -> None:
    """`lmtune train --help` ends with every config key; generated when asked for, since the keys
    come from the method and task classes, which import torch."""
    plain = parser.format_help

    def format_help() -> str:
        return (plain() + "\nconfig keys (override any with key.sub=value; `lmtune config SECTION` shows one section):\n\n"
                + api.describe_config())

    parser.format_help = format_help


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmtune", description="Fine-tune language models from a YAML config.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train from CONFIG.yaml, with key.sub=value overrides",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    with_config_keys(p)
    p.add_argument("config", nargs="?", help="YAML config file (or give every setting as key=value)")
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

    p = sub.add_parser("config", help="every config key with its type, default and meaning")
    p.add_argument("section", nargs="?", help="one section: model, method, data, task, train, distill, output")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("runs", help="the runs under a directory: state, task, method, model, metrics")
    p.add_argument("directory", nargs="?", default="runs")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("plot", help="draw the loss and validation metrics of one or more runs on one chart")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--output", help="PNG file (default: RUN_DIR/loss.png for one run, runs.png for several)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("data", help="show counts, lengths and the first examples with their loss mask")
    p.add_argument("config", nargs="?", help="YAML config file (or give every setting as key=value)")
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
    p.add_argument("--skip-bad-rows", action="store_true", help="skip rows that fail the checks and count them, instead of stopping")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="standard benchmarks (lm-evaluation-harness) on runs and base models, "
                       "base vs tuned in one table")
    p.add_argument("models", nargs="+", help="run directories and/or base models (alias, directory, .gguf, hub id)")
    p.add_argument("--tasks", required=True, help="comma-separated: mmlu, mmlu_cloze, gsm8k, rotten_tomatoes (offline), "
                   "or any harness task name where the hub is reachable")
    p.add_argument("--limit", type=int, help="at most this many questions per task (per subject for MMLU): a quick look")
    p.add_argument("--batch-size", type=int, help="default: the run's train.eval_batch_size (16 for a base model)")
    p.add_argument("--num-fewshot", type=int, help="default: the task's own")
    p.add_argument("--chat-template", choices=["auto", "on", "off"], default="auto",
                   help="auto: a run in the template it trained with, a base model in its chat template if it has one")
    p.add_argument("--no-base", action="store_true", help="do not add the runs' base models")
    p.add_argument("--data-dir", help="where the offline tasks' files are (default: examples/data)")
    p.add_argument("--include-path", action="append", default=[], help="a directory of harness task YAMLs of your own")
    p.add_argument("--output", help="also write the JSON report to this file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("embed", help="sentence embeddings of a JSONL of texts with an embedding run, into a .npy file")
    p.add_argument("run_dir", help="an embedding run (task.name=embedding), or a model (mean pooling)")
    p.add_argument("--input", required=True, help='JSONL of {"text": ...} rows, or a .txt file of one text a line')
    p.add_argument("--output", required=True, help=".npy file: one row per input text, in input order")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_embed)

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

    p = sub.add_parser("ui", help="a web page to prepare, queue, watch, stop, resume, compare, chat with and export runs")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--configs-dir", default="configs", help="the configs a new run can start from")
    p.add_argument("--token", default=os.environ.get("LMTUNE_UI_TOKEN"), help="require this token on every request")
    p.add_argument("--max-running", type=int, default=1, help="runs training at once; the others wait in a queue (default 1: a CPU machine)")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("merge", help="fold a LoRA / DoRA / IA3 / QLoRA adapter into the base and write a plain model")
    p.add_argument("run_dir")
    p.add_argument("out_dir", help="a new (or empty) directory")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="dtype of the written weights")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("export", help="write a self-contained model directory (safetensors, or GGUF for llama.cpp / "
                       "Ollama) with a model card")
    p.add_argument("run_dir", help="a run directory (gguf: or a model directory, alias or .gguf file)")
    p.add_argument("out_dir", help="a new (or empty) directory")
    p.add_argument("--format", choices=["safetensors", "gguf"], default="safetensors")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="safetensors: dtype of merged weights")
    p.add_argument("--quant", choices=[*GGUF_QUANTS, *K_QUANTS], default="q8_0",
                   help="gguf: the weights' type (norms stay f32; 4/5-bit files keep the embedding at q8_0; "
                        "k-quants through llama.cpp's quantizer)")
    p.add_argument("--adapter", action="store_true",
                   help="gguf, LoRA runs: write the base at --quant and the adapter apart (llama.cpp --lora, Ollama ADAPTER) "
                        "instead of merging; keeps the fine-tuning at 4 bits")
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
    # transformers 5 renames arguments across minor versions; its deprecation notices are not the user's to act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers(\.|$)")
    try:
        args.func(args)
    except Interrupted as e:
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
