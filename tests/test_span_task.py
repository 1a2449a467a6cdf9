"""The span (mention) task: loaders, training, evaluation, and the same marking in the spaCy component."""

import json
import random
from pathlib import Path

import pytest
import spacy
import torch
from spacy.tokens import DocBin

from epee_annotate.cli import main
from epee_annotate.data import DataError, load_examples, split_by_group
from epee_annotate.evaluation import ExitTable
from epee_annotate.inputs import InputError, mark_mention
from epee_annotate.model import MultiExitModel
from epee_annotate.policies import EntropyExit, normalized_entropy, simulate
from epee_annotate.testing import tiny_backbone_dir

TYPES = {"drug": ["aspirin", "warfarin", "melatonin"], "brand": ["coq10"], "group": ["supplement"],
         "drug_n": ["ginseng", "echinacea", "valerian"]}
CONTEXTS = ["the patient takes {} daily", "she stopped taking {} before surgery", "{} was started two weeks ago",
            "no history of adverse reaction to {}"]


def ddi_entities_fixture(folder: Path, documents: int = 6, seed: int = 0) -> Path:
    """A small DDI 2013-like corpus: one XML file per document, typed entities (and one pair) per sentence."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(documents):
        sentences = []
        for s in range(4):
            kind_a, kind_b = rng.sample(sorted(TYPES), 2)
            a, b = rng.choice(TYPES[kind_a]), rng.choice(TYPES[kind_b])
            text = rng.choice(CONTEXTS).format(f"{a} and {b}")
            sid = f"DDI-Fix.d{d}.s{s}"
            spans = [(text.index(a), kind_a, a), (text.index(b, text.index(a) + len(a)), kind_b, b)]
            entities = "".join(
                f'<entity id="{sid}.e{k}" charOffset="{start}-{start + len(word) - 1}" type="{kind}" text="{word}"/>'
                for k, (start, kind, word) in enumerate(spans))
            pair = f'<pair id="{sid}.p0" e1="{sid}.e0" e2="{sid}.e1" ddi="false"/>'
            sentences.append(f'<sentence id="{sid}" text="{text}">{entities}{pair}</sentence>')
        (folder / f"d{d}.xml").write_text(f'<?xml version="1.0" encoding="UTF-8"?><document id="DDI-Fix.d{d}">'
                                          + "".join(sentences) + "</document>")
    return folder


@pytest.fixture(scope="module")
def span_run(tmp_path_factory):
    """A tiny span checkpoint trained with the CLI on the ddi-entities fixture, plus its data."""
    root = tmp_path_factory.mktemp("span_run")
    corpus = ddi_entities_fixture(root / "ddi")
    base = tiny_backbone_dir("bert", root / "base", num_layers=3)
    out = root / "model"
    assert main(["train", "--task", "span", "--base", str(base), "--format", "ddi-entities", "--train", str(corpus),
                 "--dev-fraction", "0.34", "--out", str(out), "--epochs", "2", "--batch-size", "8", "--lr", "1e-3",
                 "--seed", "3", "--threads", "1", "--no-progress"]) == 0
    return corpus, out


def test_ddi_entities_loader(tmp_path):
    corpus = ddi_entities_fixture(tmp_path / "ddi", documents=2)
    examples = load_examples(corpus, "ddi-entities", "span")
    assert len(examples) == 2 * 4 * 2
    for example in examples:
        text, (start, end) = example.input["text"], example.input["span"]
        assert text[start:end] in TYPES[example.label]  # inclusive corpus offsets became exclusive ends
        assert example.input["context"] == (0, len(text)) and example.group.startswith("DDI-Fix.d")
    # A discontinuous entity spans first to last fragment; a bad type names the entity.
    doc = ('<document id="D"><sentence id="D.s0" text="beta- and alpha-blockers here">'
           '<entity id="D.s0.e0" charOffset="0-4;16-23" type="group" text="beta-blockers"/></sentence></document>')
    (tmp_path / "one.xml").write_text(doc)
    [one] = load_examples(tmp_path / "one.xml", "ddi-entities", "span")
    assert one.input["span"] == (0, 24) and one.label == "group"
    (tmp_path / "bad.xml").write_text(doc.replace('type="group"', 'type="herb"'))
    with pytest.raises(DataError, match="entity D.s0.e0 has type 'herb'"):
        load_examples(tmp_path / "bad.xml", "ddi-entities", "span")


def test_spans_jsonl_loader_and_bad_records(tmp_path, caplog):
    path = tmp_path / "notes.jsonl"
    good = {"id": "n1", "text": "took fish oil until May", "spans": [{"start": 5, "end": 13, "label": "Discontinued"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "n2", "spans": [{"start": 5, "end": 99,
                                                                                         "label": "x"}]}) + "\n")
    with pytest.raises(DataError, match=r"line 2: span 0 \(5, 99\) is outside the text of length 23"):
        load_examples(path, "spans", "span")
    [example] = load_examples(path, "spans", "span", on_error="skip")
    assert example.input == {"text": good["text"], "span": (5, 13), "context": (0, 23)}
    assert (example.label, example.id, example.group) == ("Discontinued", "n1:5-13", "n1")
    assert "fish" not in caplog.text  # positions only, never note text
    with pytest.raises(ValueError, match="gives span data, not 'text'"):
        load_examples(path, "spans", "text")


def test_docbin_loader_reads_span_groups_and_sentence_context(tmp_path):
    nlp = spacy.blank("en")
    doc = nlp.make_doc("She took fish oil. She stopped ginseng later.")
    doc[0].is_sent_start = True
    doc[5].is_sent_start = True
    for token in doc[1:5]:
        token.is_sent_start = False
    for token in doc[6:]:
        token.is_sent_start = False
    doc.spans["supp"] = [doc.char_span(9, 17, label="Continuing"), doc.char_span(31, 38, label="Discontinued")]
    DocBin(docs=[doc], store_user_data=True).to_disk(tmp_path / "notes.spacy")
    examples = load_examples(tmp_path / "notes.spacy", "docbin", "span", spans_key="supp")
    assert [e.label for e in examples] == ["Continuing", "Discontinued"]
    assert [e.input["context"] for e in examples] == [(0, 18), (19, 45)]  # each mention's sentence
    with pytest.raises(DataError, match="has no span group 'other'"):
        load_examples(tmp_path / "notes.spacy", "docbin", "span", spans_key="other")


def test_span_encoder_marks_within_context_and_refuses_bad_spans(tmp_path):
    base = tiny_backbone_dir("bert", tmp_path / "base", num_layers=2)
    model = MultiExitModel.from_base(base, task="span", labels=["a", "b"])
    text = "the patient takes fish oil daily. aspirin was stopped."
    encoder = model.encoder
    row = encoder.encode({"text": text, "span": (18, 26), "context": (0, 33)})
    # The same text the component's text path and mark_mention give.
    marked, cut = encoder.mention_input(text, 18, 26, 0, 33)
    assert marked == mark_mention(text[:33], 18, 26) and not cut and not row.truncated
    assert row.input_ids == encoder.tokenizer(marked)["input_ids"]
    assert row.input_ids == encoder.encode({"text": text[:33], "span": (18, 26)}).input_ids
    # The markers are single special tokens and the heads read the start marker (entity-start pooling).
    assert model.config.pooling == "positions"
    assert row.input_ids[row.pool_index[0]] == encoder.tokenizer.convert_tokens_to_ids("<e1>")
    assert row.input_ids.count(encoder.tokenizer.convert_tokens_to_ids("</e1>")) == 1
    for bad, message in [({"text": text, "span": (40, 30)}, "span span"), ({"text": text}, "span must be"),
                         ({"text": text, "span": (0, 5), "context": (3, 10)}, "outside its context"), ("text", "dict")]:
        with pytest.raises(InputError, match=message):
            encoder.encode(bad)


def test_span_checkpoint_records_the_run(span_run):
    _, out = span_run
    model = MultiExitModel.from_pretrained(out)
    assert model.task == "span" and model.labels == ["drug", "brand", "group", "drug_n"]
    training = model.config.training
    assert training["seed"] == 3 and training["environment"]["torch_threads"] == 1
    assert training["environment"]["versions"]["torch"] == torch.__version__


def test_pipeline_gives_what_evaluate_gives_for_each_mention(span_run, tmp_path):
    """Training, evaluate and the spaCy component mark mentions in one place: same label and exit layer."""
    corpus, out = span_run
    model = MultiExitModel.from_pretrained(out)
    examples = split_by_group(load_examples(corpus, "ddi-entities", "span"), 0.34, 3)[1]  # the dev part
    inputs, gold = [e.input for e in examples], [e.label for e in examples]
    table = ExitTable.from_model(model, inputs, gold)  # what `evaluate` computes
    # An entropy threshold in the widest gap of the first exit's entropies: some mentions leave early.
    first = sorted(normalized_entropy(table.probs[:, 0]).tolist())
    gaps = [(b - a, (a + b) / 2) for a, b in zip(first, first[1:])]
    tau = max(gaps)[1]
    exits = simulate(EntropyExit(entropy=tau), table.probs)
    labels = [model.labels[i] for i in table.predictions(exits).tolist()]
    assert len(set(exits.tolist())) > 1  # the check covers early exits, not only full depth

    nlp = spacy.blank("en")
    nlp.add_pipe("epee_span_classifier", config={"checkpoint": str(out), "spans_key": "ddi", "entropy": tau})
    docs, by_example = {}, []
    for example in examples:
        text, (start, end) = example.input["text"], example.input["span"]
        doc = docs.get(example.id.rsplit(".e", 1)[0])
        if doc is None:
            doc = docs.setdefault(example.id.rsplit(".e", 1)[0], nlp.make_doc(text))
            doc.spans["ddi"] = []
        doc.spans["ddi"] = list(doc.spans["ddi"]) + [doc.char_span(start, end, label=example.label)]
        by_example.append((doc, start, end))
    list(nlp.pipe(docs.values()))
    got = []
    for doc, start, end in by_example:
        [span] = [s for s in doc.spans["ddi"] if (s.start_char, s.end_char) == (start, end)]
        got.append((span._.epee_label, span._.epee_exit_layer))
    assert got == list(zip(labels, exits.tolist()))

    # The evaluate command on the same mentions reports the same quality and depth.
    assert main(["evaluate", str(out), "--data", str(corpus), "--format", "ddi-entities", "--dev-fraction", "0.34",
                 "--dev-seed", "3", "--entropy", str(tau), "--report", str(tmp_path / "report"), "--no-timing",
                 "--no-plots", "--threads", "1"]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    accuracy = sum(label == g for (label, _), g in zip(got, gold)) / len(gold)
    assert report["n"] == len(examples) and report["selected"]["accuracy"] == pytest.approx(accuracy)
    assert report["selected"]["mean_exit_layer"] == pytest.approx(sum(e for _, e in got) / len(got))


def test_train_span_cli_refuses_misfit_options(tmp_path, capsys):
    corpus = ddi_entities_fixture(tmp_path / "ddi", documents=2)
    base = ["train", "--task", "span", "--base", "unused", "--train", str(corpus), "--dev-fraction", "0.5",
            "--out", str(tmp_path / "m")]
    assert main(base + ["--format", "ddi"]) == 2
    assert "gives relation data, not 'span'" in capsys.readouterr().err
    assert main(base + ["--format", "ddi-entities", "--spans-key", "sc"]) == 2
    assert "--spans-key applies to --format docbin only" in capsys.readouterr().err
    assert main(base + ["--format", "ddi-entities", "--filter-negatives"]) == 2
    assert "--filter-negatives applies to --format ddi only" in capsys.readouterr().err
