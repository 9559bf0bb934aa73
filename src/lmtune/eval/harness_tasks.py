"""Benchmark tasks that read local files: the hub is unreachable here and for many users behind a
firewall. Each is an lm-evaluation-harness task config whose data is a JSON-lines file (the
harness's `json` dataset path with `data_files`); where the harness has the task, its own YAML is
included and only the data source changes, so prompts, few-shot sampling and metrics are the
harness's. The configs are written once per data directory into lmtune's cache and handed to the
harness's TaskManager as an include path.

    mmlu             the harness's `mmlu` (57 subjects, letters A-D, few-shot from dev), size-weighted
    mmlu_cloze       MMLU as SmolLM2's authors score it (lighteval's cloze prompt: the answer text
                     itself is scored, acc_norm by length), 0-shot
    gsm8k            the harness's `gsm8k` (generation, exact match after its two answer filters)
    rotten_tomatoes  sentiment through label words, with the demo config's prompt
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import yaml

from lmtune.errors import ConfigError

DATA_FILES = {  # task -> the files it reads, relative to the data directory
    "mmlu": ("mmlu/test.jsonl", "mmlu/validation.jsonl", "mmlu/dev.jsonl"),
    "mmlu_cloze": ("mmlu/test.jsonl", "mmlu/validation.jsonl", "mmlu/dev.jsonl"),
    "gsm8k": ("gsm8k/test.jsonl", "gsm8k/train.jsonl"),
    "rotten_tomatoes": ("rotten_tomatoes/test.jsonl", "rotten_tomatoes/train.jsonl"),
}
LOCAL_TASKS = tuple(DATA_FILES)

# The demo's prompt (configs/sentiment_lora.yaml): the system prompt, the review as the user turn, a label word as the answer.
SENTIMENT_PROMPT = "Is this movie review positive or negative?"
SENTIMENT_WORDS = ["negative", "positive"]


def default_data_dir() -> Path:
    """examples/data under the working directory, else the one beside an editable install's source."""
    here = Path("examples/data")
    if here.is_dir():
        return here.resolve()
    return Path(__file__).resolve().parents[3] / "examples" / "data"


def task_dir(tasks: list[str], data_dir: str | Path | None = None) -> Path:
    """The directory of task configs for the local tasks among `tasks`, written if needed."""
    data = Path(data_dir).resolve() if data_dir else default_data_dir()
    for name in tasks:
        for rel in DATA_FILES.get(name, ()):
            if not (data / rel).is_file():
                raise ConfigError(f"bench task {name} reads {data / rel}, which does not exist; run from the lmtune "
                                  "repository (its examples/data) or pass --data-dir DIR")
    import lm_eval

    harness = Path(lm_eval.__file__).parent / "tasks"
    stamp = json.dumps([str(data), lm_eval.__version__, *[(rel, (data / rel).stat().st_mtime_ns)
                                                          for rels in DATA_FILES.values() for rel in rels
                                                          if (data / rel).is_file()]])
    root = Path(os.environ.get("LMTUNE_CACHE", Path.home() / ".cache" / "lmtune"))
    out = root / "harness_tasks" / hashlib.sha256(stamp.encode()).hexdigest()[:16]
    if not (out / "done").is_file():
        out.mkdir(parents=True, exist_ok=True)
        _write_configs(out, data, harness)
        (out / "done").write_text(stamp)
    return out


def _write_configs(out: Path, data: Path, harness: Path) -> None:
    mmlu = data / "mmlu"
    if (mmlu / "test.jsonl").is_file():
        subjects = _split_by_subject(mmlu, out / "mmlu_data")
        _mmlu(out, subjects, harness)
        _mmlu_cloze(out, subjects)
    if (data / "gsm8k" / "test.jsonl").is_file():
        _dump(out / "gsm8k.yaml", {
            "include": str(harness / "gsm8k" / "gsm8k.yaml"),
            **_local(train=data / "gsm8k" / "train.jsonl", test=data / "gsm8k" / "test.jsonl"),
            "tag": [],
        })
    if (data / "rotten_tomatoes" / "test.jsonl").is_file():
        _dump(out / "rotten_tomatoes.yaml", {
            "task": "rotten_tomatoes",
            **_local(train=data / "rotten_tomatoes" / "train.jsonl", test=data / "rotten_tomatoes" / "test.jsonl"),
            "output_type": "multiple_choice", "training_split": "train", "fewshot_split": "train", "test_split": "test",
            "description": SENTIMENT_PROMPT,
            "doc_to_text": "{{text}}", "doc_to_choice": SENTIMENT_WORDS, "doc_to_target": "label",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0},
        })


def _local(**files: Path) -> dict:
    """The keys that point a harness task at JSON-lines files instead of a hub dataset."""
    return {"dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(path) for split, path in files.items()}}}


def _split_by_subject(mmlu: Path, out: Path) -> list[str]:
    """One file per subject and split: the harness's MMLU takes each subject's few-shot examples
    from that subject's dev questions (the first k), which a single file cannot express."""
    out.mkdir(parents=True, exist_ok=True)
    subjects: dict[str, dict[str, list[str]]] = {}
    for split in ("test", "validation", "dev"):
        for line in (mmlu / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                subjects.setdefault(json.loads(line)["subject"], {}).setdefault(split, []).append(line)
    for subject, splits in subjects.items():
        for split, lines in splits.items():
            (out / f"{subject}_{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return sorted(subjects)


def _subject_files(out: Path, subject: str) -> dict:
    return _local(**{split: out / "mmlu_data" / f"{subject}_{split}.jsonl" for split in ("test", "validation", "dev")})


def _mmlu(out: Path, subjects: list[str], harness: Path) -> None:
    names = []
    for subject in subjects:
        template = harness / "mmlu" / "default" / f"mmlu_{subject}.yaml"
        if not template.is_file():
            raise ConfigError(f"{out}: the harness has no MMLU subject {subject!r}; is the data the authors' release?")
        names.append(f"mmlu_{subject}")
        _dump(out / "mmlu" / f"mmlu_{subject}.yaml", {"include": str(template), **_subject_files(out, subject), "tag": []})
    _dump(out / "mmlu" / "_mmlu.yaml", {
        "group": "mmlu", "task": names,
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}], "metadata": {"version": 2},
    })


def _mmlu_cloze(out: Path, subjects: list[str]) -> None:
    """lighteval's `mmlu_cloze_prompt` as SmolLM2's model card uses it: 'The following are
    questions about <subject>.\\nQuestion: <q>\\nAnswer:' then ' <choice text>' for each choice."""
    names = []
    for subject in subjects:
        topic = subject.replace("_", " ")
        names.append(f"mmlu_cloze_{subject}")
        _dump(out / "mmlu_cloze" / f"mmlu_cloze_{subject}.yaml", {
            "task": f"mmlu_cloze_{subject}", "task_alias": subject, **_subject_files(out, subject),
            "test_split": "test", "fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"},
            "output_type": "multiple_choice",
            "description": f"The following are questions about {topic}.\n",
            "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_choice": "{{choices}}", "doc_to_target": "answer",
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
            "metadata": {"version": 1.0},
        })
    _dump(out / "mmlu_cloze" / "_mmlu_cloze.yaml", {
        "group": "mmlu_cloze", "task": names,
        "aggregate_metric_list": [{"metric": m, "weight_by_size": True} for m in ("acc", "acc_norm")],
        "metadata": {"version": 1},
    })


def _dump(path: Path, cfg: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
