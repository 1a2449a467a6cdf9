"""Quick start: a multi-exit model on the offline MiniLM encoder, EPEE inference, save/load.

The exit heads here are untrained (see docs/training.md to train them), so labels are arbitrary;
the point is the API and the per-prediction exit layer.
"""

import tempfile

from epee_annotate import EPEE, BudgetedExit, MultiExitModel, minilm_path

model = MultiExitModel.from_base(minilm_path(), task="text", labels=["Adverse_event", "Potential_therapeutic_event"])
notes = [
    "Patient developed a maculopapular rash after starting carbamazepine.",  # synthetic
    "Metformin was continued and glucose control improved.",  # synthetic
    "",  # bad input: answered with an error, the rest of the batch goes on
]
for prediction in model.predict(notes, policy=EPEE(entropy=0.2, patience=2), batch_size=32):
    print(prediction.label, prediction.exit_layer, "/", prediction.num_layers, prediction.confidence, prediction.error)

with tempfile.TemporaryDirectory() as directory:
    model.set_default_policy(BudgetedExit(3))  # calibrate sets this for you
    model.save_pretrained(directory)  # epee_config.json + model.safetensors + tokenizer
    reloaded = MultiExitModel.from_pretrained(directory)
    print([p.exit_layer for p in reloaded.predict(notes[:2])])  # [3, 3]: the stored default policy
