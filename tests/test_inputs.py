"""Bad input gets a per-item error or a flag; the rest of the batch is answered."""

import numpy as np
import pytest

from epee_annotate.inputs import InputError, array_to_unit


def test_bad_text_items_get_per_item_errors(model_factory):
    model = model_factory("bert")
    inputs = ["fish oil daily", "", "   \n\t", 42, None, ["list"], "aspirin and warfarin"]
    predictions = model.predict(inputs, batch_size=4)
    assert len(predictions) == len(inputs)
    assert predictions[0].ok and predictions[-1].ok
    assert predictions[1].error == "empty text" and predictions[2].error == "empty text"
    assert "int" in predictions[3].error and "NoneType" in predictions[4].error and "list" in predictions[5].error
    assert predictions[3].label is None and predictions[3].exit_layer is None


def test_long_text_is_truncated_and_flagged(model_factory):
    model = model_factory("bert")
    short, long = model.predict(["fish oil", "fish oil and vitamin e " * 500])
    assert not short.truncated and long.truncated and long.ok
    assert model.encoder.encode("fish oil " * 500).length == model.encoder.max_length


@pytest.mark.parametrize("model_type", ["bert", "gpt2"])
def test_relation_truncation_keeps_both_markers(model_factory, model_type):
    model = model_factory(model_type, task="relation", labels=("none", "effect"))
    filler = "the patient takes fish oil daily " * 40
    text = filler + "aspirin increases warfarin" + " and " + filler
    head = (len(filler), len(filler) + 7)
    tail = (len(filler) + 18, len(filler) + 26)
    row = model.encoder.encode({"text": text, "head": head, "tail": tail})
    assert row.truncated and row.length <= model.encoder.max_length
    for marker in model.encoder.marker_ids:
        assert marker in row.input_ids
    if model_type == "bert":
        assert [row.input_ids[i] for i in row.pool_index] == [model.encoder.marker_ids[0], model.encoder.marker_ids[2]]
    # Far-apart entities: both start markers survive.
    far = {"text": text + text, "head": (0, 3), "tail": (len(text) * 2 - 5, len(text) * 2 - 1)}
    row = model.encoder.encode(far)
    assert row.truncated and model.encoder.marker_ids[0] in row.input_ids and model.encoder.marker_ids[2] in row.input_ids


def test_bad_relation_items(model_factory):
    model = model_factory("bert", task="relation", labels=("none", "effect"))
    text = "aspirin increases warfarin"
    bad = [
        "not a dict",
        {"text": text, "head": (0, 7)},
        {"text": text, "head": (0, 7), "tail": (5, 12)},
        {"text": text, "head": (0, 7), "tail": (18, 99)},
        {"text": "", "head": (0, 0), "tail": (0, 0)},
    ]
    predictions = model.predict(bad + [{"text": text, "head": (0, 7), "tail": (18, 26)}])
    assert all(p.error for p in predictions[:-1]) and predictions[-1].ok
    assert "overlap" in predictions[2].error and "outside" in predictions[3].error


def test_bad_images(model_factory):
    model = model_factory("vit", task="image")
    good = np.zeros((10, 10), dtype=np.uint8)
    bad = [np.zeros((0, 5)), np.zeros((2, 3, 4, 5)), np.full((4, 4), np.nan, dtype=np.float32),
           np.full((4, 4), 3.0, dtype=np.float32), np.zeros((4, 4), dtype=np.complex64), "no/such/file.png", 17]
    predictions = model.predict(bad + [good])
    assert all(p.error for p in predictions[:-1]) and predictions[-1].ok
    assert "shape" in predictions[1].error and "NaN" in predictions[2].error and "int" in predictions[-2].error


def test_array_scaling():
    assert array_to_unit(np.array([[0, 255]], dtype=np.uint8)).tolist() == [[0.0, 1.0]]
    assert array_to_unit(np.array([[0, 65535]], dtype=np.uint16)).tolist() == [[0.0, 1.0]]
    assert array_to_unit(np.zeros((3, 3, 4), dtype=np.uint8)).shape == (3, 3, 3)
    with pytest.raises(InputError):
        array_to_unit(np.zeros((3, 3, 2), dtype=np.uint8))


def test_predict_rejects_a_bare_string(model_factory):
    with pytest.raises(TypeError, match="list"):
        model_factory("bert").predict("fish oil")
