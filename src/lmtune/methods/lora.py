"""LoRA (low-rank adapters on the linear layers) and DoRA (weight-decomposed LoRA). QLoRA, LoRA on
a 4-bit base, is in qlora.py and shares these options."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal, Optional, Union

from pydantic import Field

from lmtune.errors import ConfigError
from lmtune.methods import Method, PlanFacts, register_method
from lmtune.methods.peft_common import check_target_modules, lora_targets, task_type_of, wrap
from lmtune.model.blocks import named_transformer_blocks
from lmtune.sections import Section


class LoraMethod(Section):
    """LoRA, DoRA (weight-decomposed) and QLoRA (LoRA on a 4-bit NF4 base)."""

    name: Literal["lora", "dora", "qlora"] = "lora"
    r: int = Field(8, gt=0, description="rank of the adapter matrices")
    alpha: float = Field(16, gt=0, description="scaling: the update is alpha / r x B A")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: Union[str, list[str]] = Field("all-linear", description="'all-linear' or module names")
    last_layers: Optional[int] = Field(None, gt=0, description="adapt only the last N transformer blocks (all when "
                                       "unset): the backward pass stops below the lowest adapted block")
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha / sqrt(r)")
    lora_plus_ratio: Optional[float] = Field(None, gt=0, description="LoRA+: the B matrices learn this many times faster")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="qlora: 4-bit data type")
    double_quant: bool = Field(True, description="qlora: quantise the quantisation constants too")


def lora_config(options, use_dora: bool, task_type: str, target_modules=None, layers=(None, None)):
    from peft import LoraConfig

    layers_to_transform, layers_pattern = layers
    return LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=target_modules or options.target_modules,
        use_rslora=options.use_rslora,
        use_dora=use_dora,
        task_type=task_type,
        layers_to_transform=layers_to_transform,
        layers_pattern=layers_pattern,
    )


def apply_lora(model, options, tokenizer, added, use_dora: bool = False):
    check_target_modules(model, options.target_modules)
    # peft takes layers_to_transform with a list of module names only
    targets = lora_targets(model, options.target_modules, added.heads, names=bool(options.last_layers))
    layers = last_blocks(model, options.last_layers) if options.last_layers else (None, None)
    return wrap(model, lora_config(options, use_dora, task_type_of(model), targets, layers), added)


def last_blocks(model, count: int) -> tuple[list[int], str]:
    """peft's layers_to_transform and layers_pattern for the last `count` blocks. Nothing below
    them trains, so autograd records nothing there and the backward pass ends at the lowest one."""
    name, blocks = named_transformer_blocks(model, "method.last_layers", "; leave last_layers unset")
    if count > len(blocks):
        raise ConfigError(f"method.last_layers: {count} > the model's {len(blocks)} blocks")
    return list(range(len(blocks) - count, len(blocks))), name.rsplit(".", 1)[-1]


def apply_dora(model, options, tokenizer, added):
    return apply_lora(model, options, tokenizer, added, use_dora=True)


def check_lora(cfg) -> None:
    if cfg.method.lora_plus_ratio and cfg.train.optimizer != "adamw":
        raise ValueError("method.lora_plus_ratio builds its own AdamW; leave train.optimizer at adamw")


# Through methods/fused_lora.py LoRA keeps about what full fine-tuning keeps (no fp32 copy of each
# adapted layer's input, as peft's path kept: 15.4 units then); with dropout > 0, a one-byte mask
# per adapted input (5.2 units when each layer kept its dropped input and a bf16 mask). Every
# method's units fell by 1.5-2.1 with model/lean_block.py (docs/planner.md, refitted 2026-12-01).
LORA_PLAN = PlanFacts(activation_units=7.7, dropout_units=3.7, adapts_blocks=True, lighter="qlora")
# DoRA keeps peft's path: its fp32 copy of each input, and with dropout a dropped copy and a mask per layer.
DORA_PLAN = replace(LORA_PLAN, activation_units=13.9, dropout_units=5.2)

register_method(Method("lora", LoraMethod, apply_lora, freezes_base=True, mergeable=True, shareable=True,
                       check=check_lora, plan=LORA_PLAN))
register_method(Method("dora", LoraMethod, apply_dora, freezes_base=True, mergeable=True, shareable=True,
                       check=check_lora, plan=DORA_PLAN))
