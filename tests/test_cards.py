"""Model cards: the shipped card.json files, `model_card`, `genmnist info` and the
generated docs page agree with each other and with the shipped weights."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from genmnist.cli.models import card_summary as _card_summary
from genmnist.errors import CheckpointError
from genmnist.models import (
    DATASETS,
    DDPM,
    Autoguided,
    FlowMatching,
    create_model,
    load,
    model_card,
    pretrained_dir,
)
from genmnist.registry import MODELS

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "src" / "genmnist" / "pretrained"
SHIPPED = sorted(
    (folder.parent.name, folder.name)
    for folder in PRETRAINED.glob("*/*")
    if (folder / "model.safetensors").is_file() and folder.parent.name in DATASETS
)


def _cards_module():
    spec = importlib.util.spec_from_file_location("cards", REPO / "recipes" / "cards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dataset, name", SHIPPED)
def test_every_shipped_model_has_a_measured_card(dataset, name):
    card = model_card(name, dataset)
    assert card is not None, f"{dataset}/{name} ships without card.json"
    assert (card["model"], card["dataset"]) == (name, dataset)
    model = load(name, dataset=dataset)
    assert card["weights"]["parameters"] == model.num_parameters()
    training = card["training"]
    assert training["steps"] > 0 and training["seconds"] > 0
    # a guide network, or a teacher's, travels with its training record (a self-guided
    # teacher guides itself toward its clusters)
    # (a guidance-distilled DDPM or a reflow student is one trained without label dropout:
    # its teacher's guidance is built in; its own run is the distillation record)
    # A fine-tuned one (null-label tuning gives a student its label dropout back) keeps
    # its distillation record beside the tuning's.
    tuned = "fine_tuning" in training
    distilled = isinstance(model, DDPM | FlowMatching) and (
        model.config.label_dropout == 0 or (tuned and "distillation" in training)
    )
    assert ("distillation" in training) == distilled
    own = training.get("fine_tuning") or (training["distillation"] if distilled else training)
    assert own["command"].startswith(f"genmnist train {name} ")
    guided = isinstance(model, Autoguided)
    teacher_guided = distilled and not model.conditional and not model.config.clusters
    assert ("guide" in training) == (guided or teacher_guided)
    metrics = card["evaluation"]["metrics"]
    assert metrics["model"] == name and metrics["dataset"] == dataset
    assert metrics["n"] == 10_000 and metrics["seed"] == 0
    assert card["evaluation"]["command"].startswith(f"genmnist eval {name} -n 10000")
    for key in ("fid", "acceptability", "fid_floor", "acceptability_floor"):
        assert isinstance(metrics[key], float), key
    if model.conditional:
        assert metrics["conditional_accuracy"] > 0.5


def test_the_docs_page_is_generated_from_the_cards():
    page = (REPO / "docs" / "pretrained.md").read_text()
    assert page == _cards_module().render_docs(), "run: python recipes/cards.py docs"
    for _, name in SHIPPED:
        assert f"genmnist sample {name}" in page


def test_model_card_reads_json_and_rejects_other_files(monkeypatch, tmp_path):
    import genmnist.models.loading as loading

    monkeypatch.setattr(loading, "pretrained_dir", lambda name, dataset="mnist": tmp_path)
    assert model_card("vae-mlp") is None  # no card.json
    card = {"format": "genmnist-card", "version": 1, "model": "vae-mlp", "dataset": "mnist"}
    (tmp_path / "card.json").write_text(json.dumps(card))
    assert model_card("vae-mlp") == card
    (tmp_path / "card.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError, match="card.json: not a genmnist model card"):
        model_card("vae-mlp")
    (tmp_path / "card.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="card.json"):
        model_card("vae-mlp")


def test_card_summary_shows_training_and_metrics_beside_the_floor():
    card = {
        "training": {"steps": 1200, "epochs": 2.0, "seconds": 600, "machine": "x86_64 CPU",
                     "command": "genmnist train vae-mlp --config r.json",
                     "guide": {"steps": 350, "seconds": 240, "command": "genmnist train g"},
                     "distillation": {"steps": 900, "seconds": 1200,
                                      "command": "genmnist train d"},
                     "fine_tuning": {"steps": 936, "seconds": 1440,
                                     "command": "genmnist train t"}},
        "evaluation": {
            "command": "genmnist eval vae-mlp -n 10000",
            "metrics": {"n": 10000, "fid": 12.345, "fid_floor": 0.2, "acceptability": 0.5,
                        "acceptability_floor": 0.98},
        },
    }  # fmt: skip
    text = _card_summary(card)
    assert "1,200 steps (2.0 epochs) in 10 min" in text
    assert "autoguidance guide: 350 steps, 4 min: genmnist train g" in text
    assert "distillation: 900 steps, 20 min: genmnist train d" in text
    assert "fine-tuning: 936 steps, 24 min: genmnist train t" in text
    assert "FID 12.35 (real data 0.20)" in text
    assert "acceptability 50.0% (real data 98.0%)" in text
    assert "genmnist eval vae-mlp -n 10000" in text
    assert _card_summary({}) == ""
    objective = {"training": {"recipe": {"task": {"name": "auxiliary-classifier", "weight": 0.5}}}}
    assert "training task: auxiliary-classifier (weight 0.5)" in _card_summary(objective)
    damaged = {"training": {"recipe": {"task": {"name": ["x"], "weight": {"a": 1}}}}}
    assert "training task: ? (weight ?)" in _card_summary(damaged)


def test_info_prints_the_card(capsys):
    from genmnist.cli import main

    name = next((n for d, n in SHIPPED if d == "mnist"), None)
    if name is None or model_card(name) is None:
        pytest.fail("no shipped MNIST card to show")
    with pytest.raises(SystemExit) as exit_info:
        main(["info", name])
    assert exit_info.value.code in (0, None)
    assert "measured (n=10,000)" in capsys.readouterr().out


def _family(model_class: type) -> type:
    """The most general model class above ``model_class`` (a variant such as `MeanFlow`
    belongs to the family of the model it extends, `FlowMatching`)."""
    from genmnist.models import GenerativeModel

    bases = [c for c in model_class.__mro__ if issubclass(c, GenerativeModel)]
    return bases[-2] if len(bases) > 1 else model_class


def test_every_builtin_family_ships_mnist_weights():
    """Each built-in model family ships MNIST weights for at least one of its presets (the
    docs list the presets that ship none), and every preset's defaults still build."""
    shipped: dict[type, list[str]] = {}
    for name in MODELS.list():
        # a composite (autoguidance) is made of other models' weights, and ships none
        if MODELS.entry(name).source.startswith("genmnist") and not MODELS.get(name).parts:
            model = create_model(name)
            names = shipped.setdefault(_family(type(model)), [])
            if pretrained_dir(name, "mnist") is not None:
                names.append(name)
    assert shipped and all(shipped.values()), shipped
