"""MomentModel: configured classifiers, warm-up, learning, progressive evaluation, determinism."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import msgspec
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import linear_model, metrics, preprocessing

from app.durations import decode_hook
from app.learning._linear import fold
from app.learning.auc import BinnedROCAUC
from app.learning.config import MODEL_KINDS, LearningConfig, ModelConfig
from app.learning.model import MomentModel, build_classifier

Example = tuple[dict[str, float], bool]
# Small forests keep the tests quick; the default is River's 10 trees.
CONFIGS = {
    "logistic_regression": ModelConfig(),
    "hoeffding_tree": ModelConfig(kind="hoeffding_tree", params={"grace_period": 50}),
    "adaptive_random_forest": ModelConfig(
        kind="adaptive_random_forest", params={"n_models": 3, "grace_period": 50}
    ),
}


def separable(n: int, seed: int = 7) -> list[Example]:
    """A toy problem: the outcome follows when views + 2 * cart > 6; noise features besides."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        views, cart = float(rng.randint(0, 8)), float(rng.randint(0, 3))
        x = {"views": views, "cart": cart, "noise": rng.random(), "price": rng.uniform(10, 1000)}
        examples.append((x, views + 2 * cart > 6))
    return examples


def trained(config: ModelConfig, examples: list[Example]) -> MomentModel:
    model = MomentModel(config)
    for x, y in examples:
        model.learn_one(x, y)
    return model


def test_the_default_is_a_scaled_logistic_regression() -> None:
    assert list(MomentModel().classifier.steps) == ["StandardScaler", "LogisticRegression"]
    assert type(build_classifier(CONFIGS["hoeffding_tree"])).__name__ == "HoeffdingTreeClassifier"
    forest = build_classifier(CONFIGS["adaptive_random_forest"])
    assert type(forest).__name__ == "ARFClassifier"
    assert forest.seed == 42
    scaled_tree = build_classifier(ModelConfig(kind="hoeffding_tree", scale=True))
    assert list(scaled_tree.steps) == ["StandardScaler", "HoeffdingTreeClassifier"]


def test_parameters_reach_the_classifier() -> None:
    lr = build_classifier(ModelConfig(params={"lr": 0.1, "l2": 0.01}))["LogisticRegression"]
    assert lr.l2 == 0.01
    assert lr.optimizer.lr.learning_rate == 0.1
    tree = build_classifier(ModelConfig(kind="hoeffding_tree", params={"max_depth": 4}))
    assert tree.max_depth == 4


def test_an_unknown_model_kind_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="unknown model kind 'svm'"):
        ModelConfig(kind="svm")
    with pytest.raises(msgspec.ValidationError, match=r"unknown model kind 'svm'.* - at `\$.model`"):
        msgspec.convert({"model": {"kind": "svm"}}, LearningConfig, dec_hook=decode_hook)
    # Even past the configuration's own check (a struct changed after decoding).
    config = ModelConfig()
    config.kind = "svm"
    with pytest.raises(ValueError, match="unknown model kind 'svm'"):
        MomentModel(config)


def test_an_unknown_or_invalid_parameter_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="unknown parameter 'depth' for hoeffding_tree"):
        build_classifier(ModelConfig(kind="hoeffding_tree", params={"depth": 3}))
    with pytest.raises(ValueError, match="unknown parameter 'seed'"):  # the configuration's seed is used
        build_classifier(ModelConfig(kind="adaptive_random_forest", params={"seed": 3}))
    with pytest.raises(ValueError, match=r"invalid parameters .* for adaptive_random_forest"):
        build_classifier(ModelConfig(kind="adaptive_random_forest", params={"n_models": "three"}))


def test_warm_up() -> None:
    model = MomentModel()
    examples = separable(60)
    for i, (x, y) in enumerate(examples[:49]):
        assert not model.ready(50)
        model.learn_one(x, y)
        assert model.examples_seen == i + 1
    assert not model.ready(50)
    model.learn_one(*examples[49])
    assert model.ready(50)
    assert not model.ready(51)


def test_warm_up_needs_both_outcomes() -> None:
    model = MomentModel()
    for x, _ in separable(100):
        model.learn_one(x, False)
    assert not model.ready(50)
    assert model.auc is None  # undefined with one class
    model.learn_one({"views": 8.0}, True)
    assert model.ready(50)
    assert model.auc is not None


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_a_model_learns_a_separable_problem(kind: str) -> None:
    examples = separable(1500)
    early = trained(CONFIGS[kind], examples[:100])
    model = trained(CONFIGS[kind], examples)
    assert model.examples_seen == 1500
    assert model.auc is not None
    assert model.auc > 0.85
    assert early.log_loss is not None
    assert model.log_loss is not None
    assert model.log_loss < early.log_loss  # the progressive loss falls as the model learns
    assert model.predict_proba_one({"views": 8.0, "cart": 3.0, "noise": 0.5, "price": 500.0})[True] > 0.8
    assert model.predict_proba_one({"views": 0.0, "cart": 0.0, "noise": 0.5, "price": 500.0})[True] < 0.2


def test_probabilities_before_learning() -> None:
    # River's contract: a probability per class.
    assert MomentModel().predict_proba_one({"views": 3.0}) == {False: 0.5, True: 0.5}
    # A tree that knows nothing says nothing for the outcome.
    assert MomentModel(CONFIGS["hoeffding_tree"]).predict_proba_one({"views": 3.0})[True] == 0.0
    model = MomentModel()
    assert model.log_loss is None
    assert model.auc is None
    assert model.drift_alarms == 0


def test_evaluation_comes_before_training() -> None:
    """The first example is scored by the untrained model: a 0.5 guess costs log(2)."""
    model = MomentModel()
    model.learn_one({"views": 3.0}, True)
    assert model.log_loss == pytest.approx(0.693147, abs=1e-6)


def test_drift_is_detected_when_the_concept_flips() -> None:
    model = MomentModel(ModelConfig(params={"lr": 0.1}))
    examples = separable(3000)
    for x, y in examples[:1000]:  # learning: the error falls, which may itself be a change
        model.learn_one(x, y)
    learnt = model.drift_alarms
    for x, y in examples[1000:2000]:  # learnt: the error stays low
        model.learn_one(x, y)
    assert model.drift_alarms == learnt
    alarms = []
    for x, y in examples[2000:]:  # the outcome now follows the opposite customers
        model.learn_one(x, not y)
        alarms.append(model.drift_detected)
    assert model.drift_alarms - learnt == sum(alarms) >= 1


def in_batches(config: ModelConfig, examples: list[Example], size: int) -> MomentModel:
    model = MomentModel(config)
    for start in range(0, len(examples), size):
        batch = examples[start : start + size]
        model.learn_many(pd.DataFrame([x for x, _ in batch]), pd.Series([y for _, y in batch]))
    return model


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_a_batch_of_one_is_learnt_as_learn_one_learns_it(kind: str) -> None:
    examples = separable(300)
    one, many = trained(CONFIGS[kind], examples), in_batches(CONFIGS[kind], examples, 1)
    probabilities, auc, log_loss, alarms = outputs(one)
    assert outputs(many) == (pytest.approx(probabilities, abs=1e-9), auc, pytest.approx(log_loss), alarms)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_a_model_learns_a_separable_problem_in_batches(kind: str) -> None:
    # The regression steps once per example even in a batch: as good as learning one by one.
    examples = separable(1500)
    model = in_batches(CONFIGS[kind], examples, 128)
    assert model.examples_seen == 1500
    assert model.auc is not None
    assert model.auc > 0.85
    assert model.predict_proba_one({"views": 8.0, "cart": 3.0, "noise": 0.5, "price": 500.0})[True] > 0.8
    assert model.predict_proba_one({"views": 0.0, "cart": 0.0, "noise": 0.5, "price": 500.0})[True] < 0.2


def test_batch_probabilities_are_those_of_each_row() -> None:
    model = trained(ModelConfig(), separable(300))
    rows = [x for x, _ in separable(20, seed=99)]
    proba = model.predict_proba_many(pd.DataFrame(rows))
    assert list(proba.columns) == [False, True]
    assert proba[True].tolist() == pytest.approx([model.predict_proba_one(x)[True] for x in rows], abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.floats(-1e3, 1e3), st.floats(0, 5), st.sampled_from([0.0, 1.0]), st.booleans()),
        min_size=1,
        max_size=60,
    ),
    scaled=st.booleans(),
)
def test_the_folded_form_scores_as_river_does(
    rows: list[tuple[float, float, float, bool]], scaled: bool
) -> None:
    river_model = linear_model.LogisticRegression()
    if scaled:
        river_model = preprocessing.StandardScaler() | river_model
    for a, b, c, y in rows:
        river_model.learn_one({"a": a, "b": b, "c": c}, y)
    form = fold(river_model)
    assert form is not None
    for a, b, c, _ in rows:
        x = {"a": a, "b": b, "c": c, "unseen": 7.0}
        assert form.proba_one(x) == pytest.approx(river_model.predict_proba_one(x)[True], abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 999), st.booleans()), min_size=1, max_size=80))
def test_the_binned_auc_counts_every_pair(scored: list[tuple[int, bool]]) -> None:
    """Scores one slice apart or more: the AUC is the exact share of pairs ranked right."""
    auc = BinnedROCAUC(bins=1000)
    for slot, y in scored:
        auc.update(y, (slot + 0.5) / 1000)
    positives = [slot for slot, y in scored if y]
    negatives = [slot for slot, y in scored if not y]
    if not positives or not negatives:
        assert auc.get() == 0.5
        return
    ranked = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    assert auc.get() == pytest.approx(ranked / (len(positives) * len(negatives)))


def test_snapshots_carry_no_cache() -> None:
    model = trained(ModelConfig(), separable(300))
    fresh = pickle.dumps(model)
    model.predict_proba_one({"views": 1.0})  # folds the model for scoring
    assert pickle.dumps(model) == fresh


def outputs(model: MomentModel) -> tuple[list[float], float | None, float | None, int]:
    """What a model says: its probabilities on fixed probes, and its progressive metrics."""
    probe = [x for x, _ in separable(20, seed=99)]
    return [model.predict_proba_one(x)[True] for x in probe], model.auc, model.log_loss, model.drift_alarms


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_the_same_stream_gives_the_same_model(kind: str) -> None:
    examples = separable(400)
    first, second = trained(CONFIGS[kind], examples), trained(CONFIGS[kind], examples)
    assert outputs(first) == outputs(second)


def test_the_same_stream_gives_the_same_bytes() -> None:
    """For the default model, byte for byte. (River's trees also hold unseeded random
    generators that only ever serve to sample, never to learn or predict.)"""
    examples = separable(400)
    first, second = trained(ModelConfig(), examples), trained(ModelConfig(), examples)
    assert pickle.dumps(first) == pickle.dumps(second)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_a_model_survives_pickling(kind: str) -> None:
    examples = separable(300)
    model = trained(CONFIGS[kind], examples[:200])
    copy = pickle.loads(pickle.dumps(model))
    assert outputs(copy) == outputs(model)
    for x, y in examples[200:]:
        model.learn_one(x, y)
        copy.learn_one(x, y)
    assert outputs(copy) == outputs(model)
    assert copy.examples_seen == 300


_PROGRAM = """
import random
from app.learning.config import ModelConfig
from app.learning.model import MomentModel
rng = random.Random(5)
keys = [f"feature_{i}" for i in range(12)]
xs = [{k: rng.random() for k in keys} for _ in range(300)]
for config in (
    ModelConfig(),
    ModelConfig(kind="hoeffding_tree", params={"grace_period": 50}),
    ModelConfig(kind="adaptive_random_forest", params={"n_models": 3, "grace_period": 50}),
):
    model = MomentModel(config)
    for x in xs:
        model.learn_one(x, x["feature_1"] + x["feature_2"] > 1)
    print([model.predict_proba_one(x)[True] for x in xs[:20]], model.auc)
from app.learning.config import SegmentsConfig
from app.learning.segments import Segmenter
segmenter = Segmenter(SegmentsConfig(radius=1.0), keys=keys)
print([segmenter.learn_predict_one(x) for x in xs], segmenter.centres)
"""


def test_models_do_not_depend_on_string_hashing() -> None:
    """Replays in different processes (different hash seeds) learn the same models and segments."""
    root = Path(__file__).resolve().parent.parent
    outputs = {
        subprocess.run(
            [sys.executable, "-c", _PROGRAM],
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1


def test_a_snapshot_from_before_the_folded_form_still_loads() -> None:
    """Models pickled before the folded form (and with River's ROCAUC) load and go on learning."""
    examples = separable(300)
    model = trained(ModelConfig(), examples[:200])
    state = model.__dict__.copy()
    del state["_form"], state["_folded"]
    state["_auc"] = metrics.ROCAUC(n_thresholds=50)
    loaded = MomentModel.__new__(MomentModel)
    loaded.__setstate__(state)  # what unpickling a snapshot written then does
    for x, y in examples[200:]:
        model.learn_one(x, y)
        loaded.learn_one(x, y)
    assert [loaded.predict_proba_one(x)[True] for x, _ in examples[:20]] == [
        model.predict_proba_one(x)[True] for x, _ in examples[:20]
    ]
    assert loaded.auc is not None
