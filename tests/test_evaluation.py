"""Evaluation numbers on a hand-checkable exit table, reports, plots and the evaluate CLI."""

import json
import math

import pytest
import torch

from conftest import make_texts
from epee_annotate import EPEE, EntropyExit, PatienceExit
from epee_annotate.cli import main
from epee_annotate.evaluation import (
    ExitTable,
    budgeted,
    dynamic,
    encode_gold,
    evaluate_model,
    evaluate_table,
    find_negative_label,
    pareto_front,
    time_policies,
)
from epee_annotate.policies import full_depth
from epee_annotate.policies.beem import DEFAULT_BEEM_FRACTIONS
from epee_annotate.reports import render_markdown, write_report

A = [0.99, 0.01]  # class 0, confident
B = [0.6, 0.4]  # class 0, unsure
C = [0.01, 0.99]  # class 1, confident
D = [0.4, 0.6]  # class 1, unsure


def h2(p):
    """Binary entropy in bits = normalized entropy for K = 2."""
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


@pytest.fixture
def table():
    # Exits 1..3 of four rows.   tau=0.5 exits at   patience=2 exits at   last answer  gold
    probs = torch.tensor([
        [A, A, A],  # row 0:       1                  2                    0            0
        [B, B, C],  # row 1:       3                  2 (answers 0)        1            1
        [D, C, C],  # row 2:       2                  2                    1            1
        [B, D, B],  # row 3:       3 (never)          3 (argmax 0,1,0)     0            0
    ])
    return ExitTable(probs, torch.tensor([0, 1, 1, 0]), ["neg", "pos"], negative_label="neg")


def test_policy_numbers_by_hand(table):
    entropy = table.evaluate(EntropyExit(0.5))
    assert entropy["exit_histogram"] == [1, 1, 2]  # exits 1, 3, 2, 3
    assert entropy["mean_exit_layer"] == pytest.approx(9 / 4)
    assert entropy["saved_fraction"] == pytest.approx(1 - 9 / 12)  # paper Eq. 5
    assert entropy["speedup"] == pytest.approx(12 / 9)  # M / mean exit layer
    assert entropy["accuracy"] == 1.0 and entropy["disagreement"] == 0.0

    patience = table.evaluate(PatienceExit(2))
    assert patience["exit_histogram"] == [0, 3, 1]  # exits 2, 2, 2, 3
    assert patience["accuracy"] == 0.75  # row 1 answers class 0 at exit 2
    assert patience["disagreement"] == 0.25 and patience["disagreement_count"] == 1
    assert patience["speedup"] == pytest.approx(12 / 9)

    epee = table.evaluate(EPEE(entropy=0.5, patience=2))  # exit = the earlier rule: 1, 2, 2, 3
    assert epee["mean_exit_layer"] == pytest.approx(2.0)
    assert epee["saved_fraction"] == pytest.approx(1 / 3)
    assert epee["speedup"] == pytest.approx(1.5)
    assert epee["accuracy"] == 0.75 and epee["disagreement"] == 0.25
    # Positive class "pos": rows 1, 2 are gold positive; only row 2 is found -> P = 1, R = 1/2.
    assert epee["micro_f1_positive"] == pytest.approx(2 / 3)
    # Macro-F1: class neg tp=2 fp=1 fn=0 -> 0.8; class pos tp=1 fp=0 fn=1 -> 2/3.
    assert epee["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)

    full = table.evaluate(full_depth())
    assert full["accuracy"] == 1.0 and full["speedup"] == 1.0 and full["saved_fraction"] == 0.0


def test_budgeted_mode_by_hand(table):
    rows = budgeted(table)
    assert [r["layer"] for r in rows] == [1, 2, 3]
    assert [r["accuracy"] for r in rows] == [0.75, 0.5, 1.0]  # argmax per exit: 0010, 0011, 0110
    assert rows[0]["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert rows[0]["mean_entropy"] == pytest.approx((h2(0.99) + 2 * h2(0.6) + h2(0.4)) / 4, rel=1e-5)
    assert rows[2]["mean_entropy"] == pytest.approx((3 * h2(0.99) + h2(0.6)) / 4, rel=1e-5)
    assert [r["speedup"] for r in rows] == pytest.approx([3.0, 1.5, 1.0])
    assert [r["saved_fraction"] for r in rows] == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert [r["disagreement"] for r in rows] == [0.25, 0.5, 0.0]


def test_dynamic_grid_and_baselines(table):
    out = dynamic(table, taus=[0.5, 0.0], patiences=[3, 2])
    assert out["taus"] == [0.0, 0.5] and out["patiences"] == [2, 3]
    grid = {(r["entropy"], r["patience"]): r for r in out["epee"]}
    assert set(grid) == {(0.0, 2), (0.0, 3), (0.5, 2), (0.5, 3)}
    assert grid[(0.5, 2)]["speedup"] == pytest.approx(1.5)
    # tau = 0 is patience only, P = M is entropy only, tau = 0 and P = M is full depth.
    patience = {r["patience"]: r for r in out["patience"]}
    entropy = {r["entropy"]: r for r in out["entropy"]}
    assert grid[(0.0, 2)]["exit_histogram"] == patience[2]["exit_histogram"] == [0, 3, 1]
    assert grid[(0.5, 3)]["exit_histogram"] == entropy[0.5]["exit_histogram"] == [1, 1, 2]
    assert grid[(0.0, 3)]["speedup"] == 1.0 and grid[(0.0, 3)]["accuracy"] == 1.0
    with pytest.raises(ValueError, match="patience"):
        dynamic(table, taus=[0.1], patiences=[0])
    with pytest.raises(ValueError, match=r"entropy must be in \[0, 1\]"):
        dynamic(table, taus=[1.5], patiences=[1])


def test_pareto_front_keeps_only_undominated_rows():
    rows = [{"speedup": 1.0, "accuracy": 0.9}, {"speedup": 2.0, "accuracy": 0.8},
            {"speedup": 1.5, "accuracy": 0.7}, {"speedup": 3.0, "accuracy": 0.8}]
    assert [(r["speedup"], r["accuracy"]) for r in pareto_front(rows, "accuracy")] == [(1.0, 0.9), (3.0, 0.8)]


def test_table_validation_and_labels():
    with pytest.raises(ValueError, match="does not know"):
        encode_gold(["neg", "maybe"], ["neg", "pos"])
    assert encode_gold(["pos", "neg"], ["neg", "pos"]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="one gold label per row"):
        ExitTable(torch.full((2, 3, 2), 0.5), torch.tensor([0]), ["a", "b"])
    with pytest.raises(ValueError, match="zero examples"):
        ExitTable(torch.zeros(0, 3, 2), torch.zeros(0, dtype=torch.long), ["a", "b"])
    assert find_negative_label(["none", "mechanism"]) == "none"
    assert find_negative_label(["Adverse_event", "Potential_therapeutic_event"]) is None


def test_report_files_and_markdown(table, tmp_path):
    report = evaluate_table(table, policy=EPEE(0.5, 2), grid=True, taus=[0.0, 0.5], patiences=[2, 3])
    assert report["metric"] == "micro_f1_positive"  # auto: there is a negative label
    paths = write_report(report, tmp_path)
    for name in ("exits", "grid_heatmaps", "frontier"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(paths["json"].read_text())
    assert saved["selected"]["speedup"] == pytest.approx(1.5)
    assert len(saved["dynamic"]["epee"]) == 4 and len(saved["budgeted"]) == 3
    text = render_markdown(report)
    assert "selected: epee(entropy=0.5,patience=2)" in text
    assert "EPEE grid: speed-up" in text


def test_evaluate_model_matches_real_predictions(model_factory):
    model = model_factory("bert")
    texts = make_texts(24, seed=5)
    full = model.predict(texts, policy=full_depth())
    gold = [p.label for p in full]
    gold[0] = next(label for label in model.labels if label != gold[0])  # one known error
    report = evaluate_model(model, texts, gold, policy=EPEE(0.6, 2), grid=False, timing="selected", timing_repeats=1)
    assert report["full_depth"]["accuracy"] == pytest.approx(23 / 24)
    early = model.predict(texts, policy=EPEE(0.6, 2))
    exits = [p.exit_layer for p in early]
    assert report["selected"]["mean_exit_layer"] == pytest.approx(sum(exits) / len(exits), abs=0.1)
    timing = report["timing"]["policies"]
    assert set(timing) == {"full_depth", "selected"} and timing["full_depth"]["wall_speedup"] == 1.0
    assert timing["selected"]["exit_layer_match"] > 0.9


def test_time_policies_pairs_policies_batch_by_batch(model_factory, monkeypatch):
    """Every bucket runs under every policy in each repeat, in a rotating order; exits are the real ones."""
    model = model_factory("bert")
    texts = make_texts(20, seed=3)
    policies = {"epee": EPEE(0.6, 2), "entropy": EntropyExit(0.5)}
    expected = {name: [p.exit_layer for p in model.predict(texts, policy=policy, batch_size=8)]
                for name, policy in {"full_depth": full_depth(), **policies}.items()}
    calls = []
    real_predict = model.predict

    def recording_predict(items, policy=None, batch_size=32, **kwargs):
        calls.append((policy.describe(), len(items)))
        return real_predict(items, policy=policy, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(model, "predict", recording_predict)
    timing = time_policies(model, texts, policies, batch_size=8, repeats=2)
    timed_calls = calls[1:]  # after the warm-up call
    assert len(timed_calls) == 2 * 3 * 3  # repeats x buckets (8 + 8 + 4) x policies
    assert sorted(n for _, n in timed_calls[::3]) == [4, 4, 8, 8, 8, 8]
    firsts = [name for name, _ in timed_calls[::3]]
    assert len(set(firsts)) == 3  # the order rotates, so no policy always runs first
    for name, entry in timing.items():
        assert entry["mean_exit_layer"] == pytest.approx(sum(expected[name]) / len(texts))
        assert 0 < entry["seconds"] <= min(entry["seconds_runs"])  # a sum of per-bucket minima
    assert timing["full_depth"]["wall_speedup"] == 1.0


def test_time_policies_rejects_zero_repeats(model_factory):
    with pytest.raises(ValueError, match="repeats"):
        time_policies(model_factory("bert"), ["pain"], {}, repeats=0)


# ----- the CLI -------------------------------------------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path, model_factory):
    """A saved tiny checkpoint and a JSONL file labelled (mostly) with its own full-depth answers."""
    model = model_factory("bert")
    directory = tmp_path / "model"
    model.save_pretrained(directory)
    texts = make_texts(40, seed=7)
    labels = [p.label for p in model.predict(texts, policy=full_depth())]
    labels[:6] = [model.labels[(model.labels.index(label) + 1) % 3] for label in labels[:6]]
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    return directory, data, texts


def test_cli_evaluate_writes_report(checkpoint, tmp_path, capsys):
    directory, data, texts = checkpoint
    out = tmp_path / "report"
    code = main(["evaluate", str(directory), "--data", str(data), "--grid", "--entropy", "0.5", "--patience", "2",
                 "--report", str(out), "--taus", "0,0.3,0.6", "--timing-repeats", "1"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 40
    assert report["full_depth"]["accuracy"] == pytest.approx(34 / 40)
    assert report["selected"]["name"] == "epee(entropy=0.5,patience=2)"
    assert len(report["dynamic"]["epee"]) == 3 * 4 and report["dynamic"]["patiences"] == [1, 2, 3, 4]
    assert {"full_depth", "selected"} <= set(report["timing"]["policies"])
    assert (out / "frontier.png").is_file() and (out / "report.md").is_file()
    # No note text in any output.
    written = (out / "report.json").read_text() + (out / "report.md").read_text()
    assert not any(text in written for text in texts if len(text) > 20)
    assert "speedup" in capsys.readouterr().out


def test_cli_evaluate_errors(checkpoint, tmp_path, capsys):
    directory, data, _ = checkpoint
    out = str(tmp_path / "r")
    assert main(["evaluate", str(directory), "--data", str(tmp_path / "missing.jsonl"), "--report", out]) == 2
    assert "does not exist" in capsys.readouterr().err
    unseen = tmp_path / "unseen.jsonl"
    unseen.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in [("pain", "neg"), ("rash", "maybe")]))
    assert main(["evaluate", str(directory), "--data", str(unseen), "--report", out]) == 2
    assert "unseen in the checkpoint: ['maybe']" in capsys.readouterr().err
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in [("pain", "A"), ("rash", "B")]))
    assert main(["evaluate", str(directory), "--data", str(other), "--report", out]) == 2
    assert "does not match" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["evaluate", str(directory), "--data", str(empty), "--report", out]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nope"), "--data", str(data), "--report", out]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_beem_in_dynamic_grid(table):
    out = dynamic(table, taus=[0.5], patiences=[2])
    thresholds = sorted(r["threshold"] for r in out["beem"])
    # Cost weights 1/3, 2/3, 1 sum to 2: thresholds are the fractions of 2.
    assert thresholds == [round(2 * f, 6) for f in DEFAULT_BEEM_FRACTIONS]
    by_threshold = {r["threshold"]: r for r in out["beem"]}
    # Scores (w = 1/3, 2/3, 1): row 0 .33 .99; row 1 .2 .6; row 2 .2 .86; row 3 .2, class change -> .4, -> .6
    assert by_threshold[0.3]["exit_histogram"] == [1, 3, 0]
    assert by_threshold[0.5]["exit_histogram"] == [0, 3, 1]  # without the reset row 3 would score .6 at exit 2
    assert by_threshold[2.0]["exit_histogram"] == [0, 0, 4]
    assert all(r["policy"]["name"] == "beem" for r in out["beem"])


# ----- rows a rule answers (the DDI negative rules, as epee_ddi applies them) ---------------------------
def test_rule_rows_count_in_quality_and_not_in_cost(table):
    ruled = ExitTable(table.probs, table.gold, table.labels, "neg", ruled=torch.tensor([False, True, False, False]))
    full = ruled.evaluate(full_depth())
    assert full["accuracy"] == 0.75  # row 1 (gold pos, the model says pos) is answered neg by the rule
    assert (full["speedup"], full["exit_histogram"], full["rule_rows"]) == (1.0, [0, 0, 3], 1)
    entropy = ruled.evaluate(EntropyExit(0.5))  # the model rows exit at 1, 2, 3
    assert entropy["exit_histogram"] == [1, 1, 1] and entropy["mean_exit_layer"] == 2.0
    assert entropy["speedup"] == pytest.approx(9 / 6)
    assert entropy["disagreement_count"] == 0  # a ruled row answers the same at every setting
    assert ruled.model_rows().num_rows == 3 and ruled.model_rows().ruled is None
    with pytest.raises(ValueError, match="rules answer all 4 rows"):
        ExitTable(table.probs, table.gold, table.labels, "neg", ruled=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="need the negative label"):
        ExitTable(table.probs, table.gold, table.labels, None, ruled=torch.zeros(4, dtype=torch.bool))


RULE_TEXT = "Aspirin (ASA), warfarin, heparin and aspirin; digoxin increases the effect of quinidine."
RULE_WORDS = ["Aspirin", "ASA", "warfarin", "heparin", "aspirin", "digoxin", "quinidine"]


def _ddi_sentence(folder):
    """One DDI XML sentence with 21 pairs, 14 of them matched by a negative rule; digoxin-quinidine is an effect."""
    at = [(RULE_TEXT.index(w), RULE_TEXT.index(w) + len(w)) for w in RULE_WORDS]
    entities = "".join(f'<entity id="d.s0.e{i}" charOffset="{s}-{e - 1}" type="drug" text="{RULE_TEXT[s:e]}"/>'
                       for i, (s, e) in enumerate(at))
    pairs = "".join(f'<pair id="d.s0.p{n}" e1="d.s0.e{i}" e2="d.s0.e{j}" '
                    + ('ddi="true" type="effect"/>' if (i, j) == (5, 6) else 'ddi="false"/>')
                    for n, (i, j) in enumerate((i, j) for i in range(7) for j in range(i + 1, 7)))
    folder.mkdir()
    (folder / "d.xml").write_text(f'<document id="d"><sentence id="d.s0" text="{RULE_TEXT}">{entities}{pairs}'
                                  "</sentence></document>")
    return folder


def test_cli_evaluate_and_calibrate_apply_the_ddi_negative_rules(clinical_checkpoints, tmp_path, capsys):
    from epee_annotate.data import load_examples
    from epee_annotate.model import MultiExitModel

    data, ckpt = _ddi_sentence(tmp_path / "ddi"), clinical_checkpoints["ddi"]
    examples = load_examples(data, "ddi", "relation")
    ruled = [bool((e.meta or {}).get("filter_rule")) for e in examples]
    assert (len(examples), sum(ruled)) == (21, 14)
    answers = [p.label for p in MultiExitModel.from_pretrained(ckpt).predict([e.input for e in examples],
                                                                            policy=full_depth())]
    expected = [("none" if r else a) == e.label for a, r, e in zip(answers, ruled, examples)]
    reports = {}
    for choice in ("auto", "off"):
        out = tmp_path / f"report_{choice}"
        assert main(["evaluate", ckpt, "--data", str(data), "--format", "ddi", "--report", str(out), "--no-plots",
                     "--no-timing", "--negative-rules", choice]) == 0
        reports[choice] = json.loads((out / "report.json").read_text())
    on, off = reports["auto"], reports["off"]
    assert (on["n"], on["rule_rows"], off["rule_rows"]) == (21, 14, 0)
    assert on["full_depth"]["accuracy"] == pytest.approx(sum(expected) / 21)
    assert sum(on["full_depth"]["exit_histogram"]) == 7 and sum(off["full_depth"]["exit_histogram"]) == 21
    assert "answered by the negative rules" in (tmp_path / "report_auto" / "report.md").read_text()
    record = tmp_path / "cal.json"
    assert main(["calibrate", ckpt, "--data", str(data), "--format", "ddi", "--max-disagreement", "0.5",
                 "--in-sample", "--dry-run", "--json", str(record), "--metric", "accuracy"]) == 0
    assert "calibrating on the 7 pairs the model answers; 14 pairs" in capsys.readouterr().err
    calibration = json.loads(record.read_text())
    assert calibration["data"]["negative_rules"] == {"rule_rows": 14, "model_rows": 7}
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(json.dumps({"text": "A with B.", "head": [0, 1], "tail": [7, 8], "label": "none"}) + "\n")
    assert main(["evaluate", ckpt, "--data", str(jsonl), "--report", str(tmp_path / "r"), "--no-timing",
                 "--negative-rules", "on"]) == 2
    assert "--negative-rules on needs --format ddi" in capsys.readouterr().err
