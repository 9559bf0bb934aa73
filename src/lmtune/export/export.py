"""`lmtune export`: a self-contained model directory — safetensors weights (adapters merged),
tokenizer, generation config, and a model card saying base model, method, data and metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lmtune.version import __version__
from lmtune.atomic import empty_dir, save_dir_atomic, write_text_atomic
from lmtune.errors import ConfigError
from lmtune.export.merge import merge_run
from lmtune.methods import METHODS
from lmtune.run_dir import RunDir


def export_run(run_dir: str | Path | RunDir, out_dir: str | Path, dtype: str = "fp32") -> Path:
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    out = Path(out_dir)
    cfg = run.config()
    method = METHODS.get(cfg.method.name)
    if not (method.mergeable or method.saves == "model"):
        raise ConfigError(f"{run.path}: {cfg.method.name} learns virtual tokens, which a plain model cannot hold; "
                          "serve or share the run directory itself")
    metrics = run.metrics()
    if method.mergeable:
        merge_run(run, out, dtype)
    else:
        saved = run.check_weights()
        empty_dir(out).rmdir()
        save_dir_atomic(out, lambda tmp: shutil.copytree(saved, tmp, dirs_exist_ok=True))
    write_text_atomic(out / "README.md", model_card(cfg, metrics))
    return out


def metrics_table(metrics: dict) -> str:
    """The validation metrics before and after training, as a Markdown table."""
    final, zero = metrics.get("final", {}), metrics.get("zero_shot", {})
    rows = "\n".join(f"| {k} | {zero.get(k, float('nan')):.4f} | {v:.4f} |" for k, v in final.items())
    return f"""| metric | before training | after training |
| --- | ---: | ---: |
{rows or "| (none recorded) | | |"}"""


def model_card(cfg, metrics: dict) -> str:
    train = metrics.get("train", {})
    data = cfg.data.train or ", ".join(f"{m.path} (weight {m.weight})" for m in cfg.data.mix or [])
    return f"""# Fine-tuned {cfg.model.name}

Made with lmtune {__version__}: `{cfg.method.name}` fine-tuning of `{cfg.model.name}` for the
`{cfg.task.name}` task.

- Base model: `{cfg.model.name}`
- Method: `{cfg.method.name}` ({json.dumps(cfg.method.model_dump(mode="json"))}); adapters are merged into these weights
- Training data: `{data}` (format `{cfg.data.format}`), validation: `{cfg.data.validation or cfg.data.val_size or "none"}`
- Training: {train.get("steps", "?")} steps, {train.get("samples", "?")} samples, {train.get("tokens", "?")} tokens,
  precision {train.get("precision", "?")}, learning rate {cfg.train.lr}

## Metrics (validation split)

{metrics_table(metrics)}

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
```
Prompts were rendered with the tokenizer's chat template{' and the system prompt ' + repr(cfg.data.system_prompt) if cfg.data.system_prompt else ''}
(template mode `{cfg.data.template}`).
"""
