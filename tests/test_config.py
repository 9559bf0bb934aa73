from pathlib import Path

import pytest

from lmtune.config import Config, config_to_yaml, load_config, validate_config
from lmtune.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults():
    cfg = load_config(None)
    assert cfg.model.name == "smollm2-135m-instruct"
    assert cfg.method.name == "lora" and cfg.method.r == 8 and cfg.method.target_modules == "all-linear"
    assert cfg.train.batch_size == 8 and cfg.train.max_steps == -1
    assert cfg.output.overwrite is False


def test_dotted_overrides_are_parsed_as_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.001\n")
    cfg = load_config(path, ["train.lr=1e-4", "train.max_steps=7", "method.target_modules=[q_proj, v_proj]",
                             "data.validation=null", "output.overwrite=true"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.max_steps == 7
    assert cfg.method.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.validation is None and cfg.output.overwrite is True


def test_unknown_key_suggests_the_right_one(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  trian: x.jsonl\n")
    with pytest.raises(ConfigError, match=r"unknown key 'data.trian'; did you mean 'train'\?"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown key 'trian'; did you mean 'train'\?"):
        load_config(None, ["trian.lr=1"])


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match=r"train.batch_size"):
        validate_config({"train": {"batch_size": 0}})
    with pytest.raises(ConfigError, match=r"method.dropout"):
        validate_config({"method": {"dropout": "lots"}})
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="is not a section"):
        load_config(None, ["train.lr=1", "train.lr.x=2"])


def test_impossible_combinations_are_rejected():
    with pytest.raises(ConfigError, match="needs data.format: classification"):
        validate_config({"task": {"name": "label_tokens"}, "data": {"format": "instruction"}})
    with pytest.raises(ConfigError, match="needs data.labels"):
        validate_config({"task": {"name": "label_tokens"}, "data": {"format": "classification"}})
    with pytest.raises(ConfigError, match="one word per entry"):
        validate_config({"task": {"name": "label_tokens", "label_words": ["a"]},
                         "data": {"format": "classification", "labels": ["x", "y"]}})


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=3e-4", "data.labels=[a, b]"])
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    sources = [cfg.data.train] if cfg.data.train else [m.path for m in cfg.data.mix]
    assert all((ROOT / s).is_file() for s in sources)
    if cfg.data.validation:
        assert (ROOT / cfg.data.validation).is_file()


def test_switching_the_method_on_the_command_line_drops_the_old_options(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  name: lora\n  r: 4\n  alpha: 8\n")
    cfg = load_config(path, ["method.name=ia3"])
    assert cfg.method.name == "ia3"
    cfg = load_config(path, ["method.name=dora", "method.alpha=2"])
    assert cfg.method.name == "dora" and cfg.method.r == 8 and cfg.method.alpha == 2
    assert load_config(path, ["method.name=lora"]).method.r == 4  # same method: the file's options stay
