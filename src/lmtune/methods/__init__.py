"""Fine-tuning methods behind a registry: name -> Method. Each module holds one method's options,
its `apply` and its facts, and registers it; adding a method is a new module and its line below."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

from lmtune.registry import Registry


@dataclass(frozen=True)
class AddedModules:
    """Modules a task put on the model, which train whatever the method: a new head (`score` on
    decoders, `classifier` on encoders) and layers of the task's own (token_cls: `crf`)."""

    heads: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlanFacts:
    """What the planner needs to know about a method (constants fitted in docs/planner.md)."""

    # Activation bytes kept for backward per token and block, in units of (4 x hidden + intermediate).
    activation_units: float = 6.6
    dropout_units: float = 0.0  # added when the method's dropout option is > 0 (one mask per adapted input)
    weights: Literal["trained", "frozen", "4bit"] = "frozen"  # trained: fp32 master copies of every weight
    trains_base: bool = False  # every base weight (and the LM head) gets a gradient
    adapts_blocks: bool = False  # its trained parameters sit inside each block (timed on one block)
    lighter: Optional[str] = None  # the method to suggest when this one does not fit
    meta_stand_in: Optional[str] = None  # a method with the same trainable parameters that builds on the meta device


@dataclass(frozen=True)
class Method:
    name: str
    options: type  # the pydantic class of the method section (sections.Section)
    apply: Callable  # (model, options, tokenizer, AddedModules) -> the model ready to train
    freezes_base: bool  # the base weights are frozen, so they may be held in a 16-bit dtype
    saves: Literal["adapter", "model"] = "adapter"  # what a run writes: a PEFT adapter, or a whole plain model
    mergeable: bool = False  # `lmtune merge` can fold it into the base weights
    shareable: bool = False  # several runs' adapters can live on one base and be switched per request
    virtual_tokens: Literal["none", "sequence", "cache"] = "none"  # prompt methods: before each row, or as a key/value cache
    quantization: Optional[Callable] = None  # (options, compute dtype) -> a transformers quantization config
    check: Optional[Callable] = None  # (config) -> None; raises ValueError for settings it cannot run with
    plan: PlanFacts = field(default_factory=PlanFacts)


METHODS: Registry[Method] = Registry("method")


def register_method(method: Method) -> Method:
    return METHODS.register(method.name)(method)


def trainable_summary(model) -> tuple[int, int]:
    """(trainable parameters, all parameters). 4-bit weights count by their real element count."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(_numel(p) for p in model.parameters())
    return trainable, total


def _numel(p) -> int:
    # bitsandbytes packs two 4-bit values per uint8 element; its quant_state knows the real shape.
    state = getattr(p, "quant_state", None)
    return state.shape.numel() if state is not None else p.numel()


def virtual_tokens_in_sequence(model) -> int:
    """How many virtual tokens peft puts before each row (prompt tuning, P-tuning); prefix methods
    pass theirs as a key/value cache instead, so the sequence itself is not longer."""
    config = getattr(model, "active_peft_config", None)
    if config is None or not getattr(config, "is_prompt_learning", False):
        return 0
    return 0 if config.peft_type.value == "PREFIX_TUNING" else config.num_virtual_tokens


# Importing the modules registers the methods, in the order `lmtune plan --compare` lists them.
from lmtune.methods import full, freeze, lora, qlora, ia3, prompt_tuning, p_tuning, prefix_tuning, p_tuning_v2  # noqa: E402,F401
