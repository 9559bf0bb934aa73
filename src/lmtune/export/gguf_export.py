"""`lmtune export RUN_DIR OUT --format gguf`: one GGUF file that llama.cpp, Ollama and LM Studio
load, with an Ollama Modelfile and a model card beside it.

Pure Python, nothing downloaded or built: the gguf package's writer and quantizers, lmtune's own
mapping of the weights (gguf_tensors.py) and of the tokenizer (gguf_vocab.py). Adapter runs are
merged first (lmtune merge, in fp32, checked against the adapter model); prompt methods are refused.
Tensors are read one at a time from the safetensors files and written straight into the file, so
memory holds one tensor, not the model. The folder is written under a temporary name and renamed:
a killed export leaves no half file under the final name.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from lmtune.atomic import empty_dir, save_dir_atomic
from lmtune.errors import ConfigError
from lmtune.export.gguf_tensors import QUANTS, Shape, convert, ggml_type, gguf_name, shape_of
from lmtune.export.gguf_lora import lora_settings, write_lora_gguf
from lmtune.export.gguf_vocab import Vocab, vocab_of
from lmtune.export.k_quants import K_QUANTS, check_quantizer, k_quantize
from lmtune.export.ollama import model_card, modelfile
from lmtune.methods import METHODS
from lmtune.run_dir import RunDir


def export_gguf(source: str | Path | RunDir, out_dir: str | Path, quant: str = "q8_0", adapter: bool = False) -> dict:
    """Write OUT/<name>.<quant>.gguf, OUT/Modelfile and OUT/README.md; returns what was written.
    `adapter`: a LoRA run's base at `quant` and its adapter apart, as OUT/<name>.lora.gguf."""
    if quant not in QUANTS and quant not in K_QUANTS:
        raise ConfigError(f"--quant {quant}: choose one of {', '.join([*QUANTS, *K_QUANTS])}")
    if quant in K_QUANTS:
        check_quantizer(quant, Path(out_dir))
    written = quant if quant in QUANTS else "f16"  # what lmtune writes; llama.cpp makes a K-quant of it
    out = empty_dir(out_dir)
    with tempfile.TemporaryDirectory(prefix=".lmtune-gguf-", dir=out.parent) as scratch:
        model_dir, cfg, metrics, lora_dir = model_source(source, Path(scratch), adapter)
        from transformers import AutoConfig, AutoTokenizer

        from lmtune.data.templates import Renderer

        config = AutoConfig.from_pretrained(model_dir)
        shape = shape_of(config)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        renderer = Renderer(tokenizer, cfg.data.template if cfg else "auto")
        vocab = vocab_of(tokenizer, shape.vocab, renderer)
        planned = planned_tensors(weight_files(model_dir), shape, written)
        name = Path(str(cfg.model.name if cfg else source)).name.removesuffix(".gguf") or "model"
        file_name = f"{name}.{quant}.gguf"
        lora_name = f"{name}.lora.gguf" if lora_dir else None
        check_space(out, planned)
        system = cfg.data.system_prompt if cfg else None

        def save(tmp: Path) -> None:
            if written == quant:
                write_gguf(tmp / file_name, planned, shape, vocab, quant, name)
            else:
                write_gguf(Path(scratch) / "f16.gguf", planned, shape, vocab, written, name)
                k_quantize(Path(scratch) / "f16.gguf", tmp / file_name, quant)
            if lora_dir:
                write_lora_gguf(tmp / lora_name, lora_dir, shape)
            (tmp / "Modelfile").write_text(modelfile(file_name, vocab, renderer, system, lora_name), encoding="utf-8")
            (tmp / "README.md").write_text(model_card(file_name, quant, cfg, metrics, vocab, system, lora_name),
                                           encoding="utf-8")

        out.rmdir()  # prepared empty above; the finished folder is moved into its place whole
        save_dir_atomic(out, save)
    return {"out": str(out), "file": str(out / file_name), "quant": quant, "bytes": (out / file_name).stat().st_size,
            "stop": vocab.stop_texts(), "pre_tokenizer": vocab.pre, "adapter": str(out / lora_name) if lora_name else None}


def model_source(source, scratch: Path, adapter: bool = False):
    """(a plain model directory, the run's config or None, the run's metrics or {}, the LoRA adapter
    directory to write apart or None)."""
    from lmtune.model.load import resolve_model_path
    from lmtune.sections import ModelConfig

    is_run = isinstance(source, RunDir) or (Path(source) / RunDir.CONFIG).is_file()
    if not is_run:
        if adapter:
            raise ConfigError(f"--adapter keeps a LoRA run's adapter apart from its base; {source} is not a run directory")
        return Path(resolve_model_path(ModelConfig(name=str(source)))), None, {}, None
    run = source if isinstance(source, RunDir) else RunDir.open(source)
    cfg = run.config()
    method = METHODS.get(cfg.method.name)
    if adapter:
        if not method.mergeable:
            raise ConfigError(f"{run.path}: --adapter is for LoRA runs; a {cfg.method.name} run has no adapter to keep apart")
        weights = run.check_weights()
        lora_settings(weights)  # refused here, before anything is written, when it cannot be a GGUF LoRA
        return Path(resolve_model_path(cfg.model)), cfg, run.metrics(), weights
    if method.saves == "model":
        return run.check_weights(), cfg, run.metrics(), None
    if not method.mergeable:
        raise ConfigError(f"{run.path}: {cfg.method.name} learns virtual tokens, which a GGUF model cannot hold; "
                          "serve the run directory with lmtune serve, or train with LoRA to export it")
    from lmtune.export.merge import merge_run

    merged = scratch / "merged"
    merge_run(run, merged, "fp32")
    return merged, cfg, run.metrics(), None


def weight_files(model_dir: Path) -> list[Path]:
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{model_dir}: no .safetensors weights to export (a .bin checkpoint: load and save it with "
                          "safetensors first)")
    return files


def byte_size(shape: tuple[int, ...], kind) -> int:
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[kind]
    return int(np.prod(shape)) // block * size


def planned_tensors(files: list[Path], shape: Shape, quant: str) -> list[tuple[str, str, tuple, object, Path]]:
    """(transformers name, GGUF name, shape, GGML type, file) of every tensor the GGUF file holds,
    from the safetensors headers alone."""
    from safetensors import safe_open

    planned = []
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                dims = tuple(f.get_slice(name).get_shape())
                target = gguf_name(name, shape)
                if target is not None:
                    planned.append((name, target, dims, ggml_type(target, dims, quant), path))
    return planned


def check_space(out: Path, planned: list) -> None:
    """Refuse up front when the file cannot fit, rather than fail half-way."""
    need = sum(byte_size(dims, kind) for _, _, dims, kind, _ in planned)
    free = shutil.disk_usage(out).free
    if free < need * 1.05 + 64 * 2**20:
        raise ConfigError(f"{out}: the GGUF file needs about {need / 2**30:.2f} GiB and {free / 2**30:.2f} GiB is free; "
                          "free some space or choose another location")


def write_gguf(path: Path, planned: list, shape: Shape, vocab: Vocab, quant: str, name: str) -> None:
    """Header, metadata and tensor table first (sizes known from the shapes), then each tensor read,
    converted and written in turn: memory holds one tensor at a time."""
    import gguf
    from safetensors import safe_open
    from tqdm import tqdm

    writer = gguf.GGUFWriter(str(path), shape.arch)
    write_metadata(writer, shape, vocab, quant, name)
    for _, target, dims, kind, _ in planned:
        writer.add_tensor_info(target, dims, np.dtype(np.float32), byte_size(dims, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    handles = {}
    try:
        for source, _, _, kind, file in tqdm(planned, desc="writing GGUF", unit="tensor"):
            if file not in handles:
                handles[file] = safe_open(str(file), framework="pt")
            array = convert(source, handles[file].get_tensor(source).float().numpy(), shape)
            writer.write_tensor_data(quantize(array, kind))
    finally:
        writer.close()


def quantize(array: np.ndarray, kind) -> np.ndarray:
    """A tensor's bytes in its GGML type (gguf.quants handles F32 and F16 as casts)."""
    import gguf

    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), kind)


def write_metadata(writer, shape: Shape, vocab: Vocab, quant: str, name: str) -> None:
    import gguf

    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.intermediate)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_vocab_size(shape.vocab)
    writer.add_file_type(gguf.LlamaFileType[QUANTS[quant][2]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    for value, add in ((vocab.bos, writer.add_bos_token_id), (vocab.eos, writer.add_eos_token_id),
                       (vocab.unk, writer.add_unk_token_id), (vocab.pad, writer.add_pad_token_id)):
        if value is not None:
            add(value)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    others = [i for i in vocab.stop_ids if i != vocab.eos]
    if others:  # the template's own end of turn, when it is not EOS: llama.cpp stops there too
        writer.add_eot_token_id(others[0])
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
