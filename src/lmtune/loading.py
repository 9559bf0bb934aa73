"""The two ways lmtune loads a model: to train it (`load_for_training`) and to use what a run
trained, or a plain base model (`load_for_inference`). Training, evaluation, export, serving,
distillation's teacher and the planner all come through here, so precision, quantization, the
task's model class and its extra layers are decided in one place."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from lmtune import hardware
from lmtune.config import Config, ModelConfig, validate_config
from lmtune.data.templates import Renderer
from lmtune.errors import ConfigError
from lmtune.methods import METHODS
from lmtune.methods.peft_common import fused_lora
from lmtune.model.load import CAUSAL_LM, load_model, load_model_and_tokenizer, load_tokenizer, resolve_model_path
from lmtune.model.chunked_attention import use_chunked_attention
from lmtune.model.packed_attention import use_packed_attention
from lmtune.model.precision import resolve_precision, weights_dtype
from lmtune.run_dir import RunDir, tensor_names
from lmtune.tasks import TASKS


@dataclass
class Loaded:
    cfg: Config
    model: object
    tokenizer: object
    task: object
    precision: str
    run: Optional[RunDir] = None  # None for a plain base model


def quantization(cfg: Config, precision: str):
    """The quantization config of the base (QLoRA), with the run's precision as compute dtype."""
    method = METHODS.get(cfg.method.name)
    if not method.quantization:
        return None
    config = method.quantization(cfg.method, hardware.DTYPES[precision])
    task = TASKS.get(cfg.task.name)
    if task.spec(cfg) != CAUSAL_LM:
        # A new head must stay a plain layer to train; transformers only knows to skip a causal LM's output layer.
        config.llm_int8_skip_modules = [*task.head_modules, "lm_head"]
    return config


def make_task(cfg: Config, tokenizer):
    return TASKS.get(cfg.task.name)(cfg, tokenizer, Renderer(tokenizer, cfg.data.template))


def load_for_training(cfg: Config, precision: Optional[str] = None) -> Loaded:
    """The base model in the task's class, dtype and quantization, before the method is applied."""
    precision = precision or resolve_precision(cfg.train.precision)
    method = METHODS.get(cfg.method.name)
    dtype = weights_dtype(cfg.model.dtype, precision, method.freezes_base)
    model, tokenizer = load_model_and_tokenizer(cfg.model, dtype, quantization_config=quantization(cfg, precision),
                                                spec=TASKS.get(cfg.task.name).spec(cfg))
    use_run_attention(model, cfg)
    return Loaded(cfg, model, tokenizer, make_task(cfg, tokenizer), precision)


def use_run_attention(model, cfg: Config) -> None:
    """The attention a run trains and validates with."""
    if cfg.model.attn_implementation is None:
        # on a CPU, attention as 16-bit products a few heads at a time; packs example by example
        use_chunked_attention(model)
    elif cfg.data.packing:
        use_packed_attention(model)  # each example of a pack attends alone, not as one long row


def attach_reference(loaded: "Loaded", base=None) -> None:
    """The reference model of a task that compares with one (DPO), when the method trains the base
    itself (full, freeze): a frozen copy of the starting weights, held in the 16-bit compute dtype.
    Adapter methods need none: their reference is the same model with the adapter switched off.
    `base`: the starting model, when the trained one is what was loaded (evaluating a finished run)."""
    task, cfg = loaded.task, loaded.cfg
    if not task.needs_reference(cfg) or METHODS.get(cfg.method.name).saves != "model":
        return
    if base is None:
        base = copy.deepcopy(loaded.model)
    dtype = hardware.DTYPES[loaded.precision] if loaded.precision != "fp32" else torch.float32
    task.reference = base.to(dtype=dtype).eval().requires_grad_(False)


def load_for_inference(run_or_model: str | Path | RunDir, quantized: bool = True, dtype: Optional[torch.dtype] = None) -> Loaded:
    """A finished run (its adapter on its base, or its model) or a base model (alias, directory,
    GGUF file, hub id), in eval mode on the device. quantized=False loads a QLoRA run's base
    unquantised, and dtype overrides the weights' dtype (both for merging)."""
    if isinstance(run_or_model, RunDir) or (Path(run_or_model) / RunDir.CONFIG).is_file():
        return _load_run(run_or_model if isinstance(run_or_model, RunDir) else RunDir(run_or_model), quantized, dtype)
    cfg = validate_config({"model": {"name": str(run_or_model)}}, "<base model>")
    precision = resolve_precision("auto")
    model, tokenizer = load_model_and_tokenizer(cfg.model, dtype or hardware.DTYPES[precision])
    use_run_attention(model, cfg)  # as a run's zero-shot evaluation sees the base
    model.to(hardware.device()).eval()
    return Loaded(cfg, model, tokenizer, make_task(cfg, tokenizer), precision)


def _load_run(run: RunDir, quantized: bool, dtype: Optional[torch.dtype]) -> Loaded:
    cfg = run.config()
    precision = resolve_precision(cfg.train.precision)
    saved = run.check_weights()
    tokenizer = load_tokenizer(str(saved), cfg.model)
    task = make_task(cfg, tokenizer)
    spec = type(task).spec(cfg)
    if saved.name == "model":
        model = task.prepare(load_model(str(saved), cfg.model, dtype or weights_dtype(cfg.model.dtype, precision, False), spec=spec,
                                        strict=True))
        load_task_layers(model, saved, task.extra_layers)
        if task.needs_reference(cfg):  # compared with the model it started from, not with itself
            base = load_model(resolve_model_path(cfg.model), cfg.model, hardware.DTYPES[precision], spec=spec)
            use_run_attention(base, cfg)  # training's reference is a copy of the base as it loaded, attention included
            attach_reference(Loaded(cfg, model, tokenizer, task, precision), base.to(hardware.device()))
    else:
        from peft import PeftModel

        dtype = dtype or weights_dtype(cfg.model.dtype, precision, METHODS.get(cfg.method.name).freezes_base)
        quant = quantization(cfg, precision) if quantized else None
        base = task.prepare(load_model(resolve_model_path(cfg.model), cfg.model, dtype, quant, spec))
        try:
            model = PeftModel.from_pretrained(base, str(saved))  # restores the task's layers saved with the adapter
        except RuntimeError as e:  # shapes that do not fit: another model, rank or task wrote these weights
            raise ConfigError(f"{saved}: the adapter's weights do not fit this run's model ({str(e).splitlines()[-1].strip()[:160]}); "
                              "re-run the training, or resume it from a checkpoint") from None
        check_adapter_names(model, saved)
        fused_lora(model)
    # The forward the run trained and validated with: peft's LoRA forward and sdpa round differently
    # in bf16, and `lmtune eval` of the demo's run scored 6 rows of 1,066 off the run's final accuracy.
    use_run_attention(model, cfg)
    model.to(hardware.device()).eval()
    return Loaded(cfg, model, tokenizer, task, precision, run)


def check_adapter_names(model, saved: Path) -> None:
    """Every weight the adapter needs is in its file: peft only warns about missing ones and leaves
    them at their initial values, and a run would silently answer like the base model."""
    from peft import get_peft_model_state_dict

    expected = set(get_peft_model_state_dict(model))
    found = set().union(*(tensor_names(f) for f in saved.glob("*.safetensors")))
    missing = sorted(expected - found)
    if missing:
        raise ConfigError(f"{saved}: the adapter's weights lack {len(missing)} of the {len(expected)} tensors this run's "
                          f"method needs (such as {missing[0]}); the file was not written by this run. Re-run the "
                          "training, or resume it from a checkpoint")


def load_task_layers(model, saved: Path, names: tuple[str, ...]) -> None:
    """Layers a task adds on top of a transformers model (token_cls: crf): save_pretrained writes
    them beside the model's weights, from_pretrained does not know them."""
    from safetensors.torch import load_file

    names = [n for n in names if hasattr(model, n)]
    if not names:
        return
    state = {}
    for file in sorted(saved.glob("*.safetensors")):
        state.update({k: v for k, v in load_file(file).items() if k.split(".", 1)[0] in names})
    missing = model.load_state_dict(state, strict=False).missing_keys
    lost = [k for k in missing if k.split(".", 1)[0] in names]
    if lost:
        raise ConfigError(f"{saved}: the saved model lacks {', '.join(lost[:3])}; was it trained with the same task settings?")


def load_tokenizer_of(cfg: Config):
    """The run's tokenizer alone (no weights): for `lmtune data` and the planner."""
    return load_tokenizer(resolve_model_path(cfg.model), cfg.model)


def teacher_path(d) -> str:
    """Where distillation's teacher loads from (`d`: the distill section): an lmtune run's saved
    weights, or a model; a path that does not exist is an error before anything loads."""
    run = RunDir(d.teacher)
    if run.is_run():
        return str(run.weights_dir() or d.teacher)
    return resolve_model_path(ModelConfig(name=d.teacher), key="distill.teacher")


def load_teacher(cfg: Config, task, student_tokenizer, precision: str):
    """Distillation's teacher in eval mode on the device: an lmtune run directory, or a model name
    loaded in the task's model class. Its tokenizer is compared with the student's first."""
    d = cfg.distill
    dtype = hardware.DTYPES[d.teacher_dtype if d.teacher_dtype != "auto" else precision]
    run = RunDir(d.teacher)
    model_cfg = ModelConfig(name=d.teacher)
    path = teacher_path(d)
    if load_tokenizer(path, model_cfg, key="distill.teacher").get_vocab() != student_tokenizer.get_vocab():
        raise ConfigError(f"distill.teacher: {d.teacher} has another tokenizer than the student ({cfg.model.name}); "
                          "distillation compares their outputs token by token, so both must use the same one")
    if run.is_run():
        teacher = load_for_inference(run, dtype=dtype).model
    else:
        teacher = load_model(path, model_cfg, dtype, spec=type(task).spec(cfg)).to(hardware.device())
    teacher.eval().requires_grad_(False)
    return teacher
