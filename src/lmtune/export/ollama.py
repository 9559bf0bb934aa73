"""What goes beside a GGUF file: an Ollama Modelfile (the prompt format the model was trained with,
the system prompt, every stop token) and a model card with the commands that run it.

Ollama's TEMPLATE is a Go template, not the Jinja chat template the GGUF file carries, so it is
written only for formats lmtune can state exactly, recognised by rendering a conversation with the
model's own template: ChatML (SmolLM, Qwen ...) and lmtune's plain format for models without a chat
template. For any other template the Modelfile leaves TEMPLATE out and Ollama reads the chat template
from the GGUF file.
"""

from __future__ import annotations

from lmtune.version import __version__

CHATML_GO = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
PLAIN_GO = """{{- if .System }}{{ .System }}

{{ end }}### Instruction:
{{ .Prompt }}

### Response:
"""


def is_chatml(renderer) -> bool:
    if renderer.mode != "chat":
        return False
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    text = "".join(t for t, _ in renderer.segments(messages))
    return text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"


def default_system(renderer) -> str | None:
    """The system prompt a ChatML template inserts when a conversation has none (SmolLM2's does):
    Ollama would not, so the Modelfile states it."""
    if not is_chatml(renderer):
        return None
    text = renderer.prompt([{"role": "user", "content": "U"}])
    head = "<|im_start|>system\n"
    if text.startswith(head):
        return text[len(head): text.index("<|im_end|>")]
    return None


def modelfile(file_name: str, vocab, renderer, system: str | None, lora_name: str | None = None) -> str:
    lines = [f"# Made by lmtune {__version__}: `ollama create NAME -f Modelfile`, then `ollama run NAME`", f"FROM ./{file_name}"]
    if lora_name:
        lines.append(f"ADAPTER ./{lora_name}")
    if is_chatml(renderer):
        lines.append(f'TEMPLATE """{CHATML_GO}"""')
    elif renderer.mode == "plain":
        lines.append(f'TEMPLATE """{PLAIN_GO}"""')
    else:
        lines.append("# TEMPLATE: Ollama reads the chat template from the GGUF file")
    system = system or default_system(renderer)
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{text}"' for text in vocab.stop_texts()]
    return "\n".join(lines) + "\n"


def model_card(file_name: str, quant: str, cfg, metrics: dict, vocab, system: str | None, lora_name: str | None = None) -> str:
    from lmtune.export.export import metrics_table

    origin = (f"`{cfg.method.name}` fine-tuning of `{cfg.model.name}` for the `{cfg.task.name}` task"
              if cfg else "a model converted as it is")
    trained = f"\n## Metrics (validation split)\n\n{metrics_table(metrics)}\n" if cfg else ""
    system_line = f"\nThe model was trained with the system prompt {system!r}; the Modelfile sets it.\n" if system else ""
    lora = f" --lora {lora_name}" if lora_name else ""
    if lora_name:
        system_line += (f"\nThe base model is `{file_name}`, unchanged; the fine-tuning is the LoRA adapter `{lora_name}`, "
                        "which every command below loads with it.\n")
    return f"""# {file_name}

Made with lmtune {__version__}: {origin}, written as GGUF ({quant}) for llama.cpp, Ollama and LM Studio.
The file holds the tokenizer, the chat template and the stop tokens ({", ".join(f"`{t}`" for t in vocab.stop_texts())}).
{system_line}{trained}
## Run it

```bash
llama-cli -m {file_name}{lora} -cnv          # chat with llama.cpp, using the template inside the file
llama-server -m {file_name}{lora} --port 8080  # an OpenAI-compatible server
ollama create my-model -f Modelfile && ollama run my-model
```

```python
from llama_cpp import Llama
llm = Llama(model_path="{file_name}"{f', lora_path="{lora_name}"' if lora_name else ''})
print(llm.create_chat_completion(messages=[{{"role": "user", "content": "Hello"}}])["choices"][0]["message"]["content"])
```
"""
