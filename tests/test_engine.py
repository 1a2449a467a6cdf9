"""Real early exit: skipped layers are not run, batches compact, batched == one-by-one."""

import numpy as np
import pytest

from conftest import make_texts
from epee_annotate import BEEM, EPEE, BudgetedExit, EntropyExit, PatienceExit
from epee_annotate.engine import length_buckets
from epee_annotate.policies import simulate


def count_layer_rows(model):
    """Hooks that record the batch size every transformer layer call sees."""
    calls = []
    target = model.backbone.model.encoder.albert_layer_groups if model.config.model_type == "albert" \
        else model.backbone.layers
    handles = [layer.register_forward_hook(lambda m, i, o: calls.append(o.size(0))) for layer in target]
    return calls, handles


def test_batch_size_one_runs_only_the_layers_it_uses(model_factory):
    model = model_factory("bert")
    calls, handles = count_layer_rows(model)
    try:
        model.predict(["aspirin increases warfarin"], policy=BudgetedExit(2))
        assert len(calls) == 2
        calls.clear()
        texts = make_texts(20)
        for text in texts:
            calls.clear()
            (prediction,) = model.predict([text], policy=EPEE(entropy=0.6, patience=2))
            assert len(calls) == prediction.exit_layer
    finally:
        for handle in handles:
            handle.remove()


def test_batches_compact_exited_rows(model_factory):
    model = model_factory("bert")
    texts = make_texts(64, seed=1)
    calls, handles = count_layer_rows(model)
    try:
        predictions = model.predict(texts, policy=EPEE(entropy=0.6, patience=2), batch_size=64)
    finally:
        for handle in handles:
            handle.remove()
    layers_used = sum(p.exit_layer for p in predictions)
    assert len({p.exit_layer for p in predictions}) > 1  # the test needs mixed exits
    assert sum(calls) == layers_used  # every row is computed exactly up to its own exit layer
    assert sum(calls) < len(texts) * model.num_layers


@pytest.mark.parametrize("model_type", ["bert", "roberta", "albert", "distilbert", "gpt2"])
def test_batched_decisions_equal_single(model_factory, model_type):
    model = model_factory(model_type)
    texts = make_texts(300 if model_type == "bert" else 80, seed=2)
    policy = EPEE(entropy=0.5, patience=2)
    batched = model.predict(texts, policy=policy, batch_size=16)
    single = [model.predict([t], policy=policy, batch_size=1)[0] for t in texts]
    assert [(p.label, p.exit_layer) for p in batched] == [(p.label, p.exit_layer) for p in single]
    np.testing.assert_allclose([p.confidence for p in batched], [p.confidence for p in single], atol=1e-4)
    assert len({p.exit_layer for p in batched}) > 1


def test_image_batched_equals_single(model_factory):
    model = model_factory("vit", task="image")
    rng = np.random.default_rng(0)
    images = [rng.random((int(rng.integers(8, 40)), 24)).astype(np.float32) for _ in range(40)]
    images += [(rng.random((16, 16, 3)) * 255).astype(np.uint8) for _ in range(10)]
    policy = EntropyExit(0.6)
    batched = model.predict(images, policy=policy, batch_size=8)
    single = [model.predict([im], policy=policy)[0] for im in images]
    assert [(p.label, p.exit_layer) for p in batched] == [(p.label, p.exit_layer) for p in single]
    assert len({p.exit_layer for p in batched}) > 1


def test_results_come_back_in_input_order(model_factory):
    model = model_factory("bert")
    texts = make_texts(50, seed=3)
    forward = model.predict(texts, policy=PatienceExit(2), batch_size=7)
    backward = model.predict(texts[::-1], policy=PatienceExit(2), batch_size=7)[::-1]
    np.testing.assert_allclose([p.probs for p in forward], [p.probs for p in backward], atol=1e-5)


def test_prediction_fields(model_factory):
    model = model_factory("bert")
    (p,) = model.predict(["fish oil daily"], policy=BudgetedExit(3))
    assert p.exit_layer == 3 and p.num_layers == 4
    assert p.label == model.labels[p.label_id]
    assert p.confidence == pytest.approx(max(p.probs))
    assert sum(p.probs) == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= p.entropy <= 1.0
    assert isinstance(p.probs[0], float) and p.error is None and p.truncated is False


def test_full_depth_by_default_equals_all_exits(model_factory):
    model = model_factory("gpt2")
    texts = make_texts(12, seed=4)
    predictions = model.predict(texts)
    assert all(p.exit_layer == model.num_layers for p in predictions)
    all_probs = model.exit_probs(texts, batch_size=5)
    assert all_probs.shape == (12, model.num_layers, 3)
    np.testing.assert_allclose(all_probs[:, -1].numpy(), [p.probs for p in predictions], atol=1e-5)


def test_length_buckets_cover_every_index_once():
    lengths = [5, 1, 9, 3, 3, 7, 2]
    groups = list(length_buckets(lengths, 3))
    assert sorted(i for g in groups for i in g) == list(range(7))
    assert [lengths[i] for i in groups[0]] == [9, 7, 5]


def test_token_budget_batches_stay_within_it():
    lengths = [5, 1, 9, 3, 3, 7, 2, 30, 1, 1, 1, 1]
    groups = list(length_buckets(lengths, batch_size=5, max_tokens=12))
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        padded = len(group) * max(lengths[i] for i in group)
        assert padded <= 12 or len(group) == 1  # a row over the budget travels alone
        assert len(group) <= 5  # batch_size still caps the rows
    assert [lengths[i] for i in groups[0]] == [30]
    assert [len(g) for g in groups][-1] >= 3  # short rows travel together
    with pytest.raises(ValueError, match="max_tokens"):
        list(length_buckets(lengths, 5, max_tokens=0))


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_token_budget_decisions_equal_batch_size_one(model_factory, tmp_path, runtime):
    from epee_annotate import MultiExitModel

    if runtime == "onnx":
        pytest.importorskip("onnxruntime")
        model_factory("bert").save_pretrained(tmp_path / "m")
        model = MultiExitModel.from_pretrained(tmp_path / "m").use_runtime("onnx")
    else:
        model = model_factory("bert")
    texts = make_texts(40, seed=8)
    policy = EPEE(entropy=0.5, patience=2)
    rows = model.encode(texts)
    groups = model.batches(rows, batch_size=64, max_tokens=120)
    assert len({len(g) for g in groups}) > 1  # the budget, not a count, sized them
    assert all(len(g) * max(rows[i].length for i in g) <= 120 or len(g) == 1 for g in groups)
    budgeted = model.predict(texts, policy, batch_size=64, max_tokens=120)
    single = [model.predict([t], policy, batch_size=1)[0] for t in texts]
    assert [(p.label, p.exit_layer) for p in budgeted] == [(p.label, p.exit_layer) for p in single]
    assert len({p.exit_layer for p in budgeted}) > 1
    with pytest.raises(ValueError, match="token budget applies to text"):
        model_factory("vit", task="image").batches([], 8, max_tokens=100)


def test_beem_engine_matches_replay(model_factory):
    model = model_factory("bert")
    texts = make_texts(80, seed=5)
    probs = model.exit_probs(texts)
    # The tiny random model is unsure (max prob ~0.4): a threshold in the middle of its scores.
    policy = BEEM(threshold=0.45)
    replayed = simulate(policy, probs).tolist()
    assert 1 < np.mean(replayed) < model.num_layers  # mixed exits, so compaction is exercised
    predictions = model.predict(texts, policy=policy, batch_size=16)
    assert [p.exit_layer for p in predictions] == replayed
