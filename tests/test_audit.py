"""The production audit: full-depth answers reuse the early pass, the sample is deterministic, verdicts are honest."""

import json

import spacy
import torch

import epee_annotate.components  # noqa: F401  (factories)
from epee_annotate.calibration import clopper_pearson_upper, examples_to_certify
from epee_annotate.calibration.audit import (
    EXCEEDED, HOLDS, NO_PROMISE, NOT_ENOUGH, audit_report, audited, effective_fraction, promised_bound,
)
from epee_annotate.engine import run_all_exits, run_early_exit
from epee_annotate.policies import BudgetedExit

from conftest import make_texts


def test_audited_rows_keep_their_early_answer_and_get_the_last_exits(model_factory):
    model = model_factory("bert")
    texts = make_texts(12, seed=3)
    rows = model.encode(texts)
    batch = model.collate(rows)
    policy = BudgetedExit(1)
    plain = run_early_exit(model.backbone, model.heads, batch, policy)
    audit = torch.tensor([i % 3 == 0 for i in range(len(texts))])
    checked = run_early_exit(model.backbone, model.heads, batch, policy, audit=audit)
    assert torch.equal(plain.exit_layer, checked.exit_layer) and torch.allclose(plain.probs, checked.probs)
    full = run_all_exits(model.backbone, model.heads, batch)[:, -1]
    assert torch.allclose(checked.full_probs[audit], full[audit], atol=1e-5)
    assert plain.full_probs is None and not checked.full_probs[~audit].any()
    predictions = model.predict(texts, policy, audit=[bool(a) for a in audit])
    last = model.predict(texts, BudgetedExit(0))
    assert [p.full_label for p in predictions] == [q.label if a else None for q, a in zip(last, audit)]


def test_the_sample_is_deterministic_and_about_the_fraction():
    texts = make_texts(2000, seed=1)
    first = [audited(t, 0.1) for t in texts]
    assert first == [audited(t, 0.1) for t in texts]
    assert 0.07 < sum(first) / len(texts) < 0.13
    assert not any(audited(t, 0.0) for t in texts) and all(audited(t, 1.0) for t in texts)
    assert effective_fraction(None, {"disagreement_bound": 0.1}) == 0.05 and effective_fraction(None, None) == 0.0


def test_verdicts_and_the_promise_they_are_held_to():
    assert audit_report(400, 2, 0.05, "c")["verdict"] == HOLDS
    report = audit_report(100, 40, 0.05, "c")
    assert report["verdict"] == EXCEEDED and report["upper_bound"] == clopper_pearson_upper(40, 100, 0.95)
    few = audit_report(10, 0, 0.05, "c")
    assert few["verdict"] == NOT_ENOUGH and few["n_needed"] == examples_to_certify(0.05, 0.05)
    assert audit_report(0, 0, 0.05, "c")["verdict"] == NOT_ENOUGH
    assert audit_report(50, 1, None, "none")["verdict"] == NO_PROMISE
    calibration = {"policy": {"name": "budgeted", "layer": 2}, "disagreement_bound": 0.1, "confidence": 0.9}
    assert promised_bound(calibration, {"name": "budgeted", "layer": 2})[0] == 0.1
    assert promised_bound(calibration, {"name": "budgeted", "layer": 3}) == (None, "the policy in use is not the calibrated one")


def _pipeline(checkpoint, **config):
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    return nlp, nlp.add_pipe("epee_textcat", config={"checkpoint": str(checkpoint), **config})


def _calibrated(model_factory, tmp_path, policy, bound):
    """A tiny checkpoint whose calibration record promises ``bound`` for ``policy``."""
    model = model_factory("bert")
    model.set_default_policy(policy, {"policy": policy.to_dict(), "disagreement_bound": bound, "confidence": 0.9})
    model.save_pretrained(tmp_path / "ckpt")
    model.set_default_policy(BudgetedExit(0), None)  # the cached fixture stays as it was
    return tmp_path / "ckpt"


def test_component_verdict_holds_for_a_well_calibrated_model(model_factory, tmp_path):
    model = model_factory("bert")
    texts = make_texts(300, seed=5)
    exits = model.exit_probs(texts).argmax(-1)
    rate = float((exits[:, 2] != exits[:, 3]).float().mean())  # what layer 3 really does on this data
    checkpoint = _calibrated(model_factory, tmp_path, BudgetedExit(3), min(0.99, rate + 0.2))
    nlp, component = _pipeline(checkpoint, audit_fraction=1.0)
    list(nlp.pipe(texts))
    report = component.audit.report()
    assert report["audited"] >= 300 and report["verdict"] == HOLDS, report


def test_component_verdict_exceeded_when_layer_one_disagrees(model_factory, tmp_path):
    checkpoint = _calibrated(model_factory, tmp_path, BudgetedExit(1), 0.01)
    nlp, component = _pipeline(checkpoint, audit_fraction=1.0)
    list(nlp.pipe(make_texts(100, seed=7)))
    report = component.audit.report()
    assert report["disagreements"] > 5 and report["verdict"] == EXCEEDED, report
    assert sum(v[0] for v in component.audit.by_exit_layer.values()) == report["audited"]


def test_component_default_audits_calibrated_checkpoints_and_too_few_is_said(model_factory, tmp_path):
    checkpoint = _calibrated(model_factory, tmp_path, BudgetedExit(0), 0.02)
    nlp, component = _pipeline(checkpoint)  # no setting: on, with the default fraction
    assert component.audit_fraction_in_use == 0.05
    texts = make_texts(40, seed=9)
    list(nlp.pipe(texts))
    report = component.audit.report()
    assert report["disagreements"] == 0 and report["verdict"] == NOT_ENOUGH
    assert report["n_needed"] == examples_to_certify(0.02, 0.05)
    nlp, component = _pipeline(checkpoint, audit_fraction=0.0)
    list(nlp.pipe(texts))
    assert component.audit.audited == 0


def _output(root, name, created, disagreements, audited=200, promised=0.05):
    from epee_annotate.calibration.audit import audit_report

    out = root / name
    out.mkdir()
    report = {**audit_report(audited, disagreements, promised, "calibration"), "fraction": 0.05}
    (out / "_SUCCESS").write_text(json.dumps({"version": 2, "datasets": {},
                                              "audit": {"created": created, "components": {"textcat": report}}}))
    return str(out)


def test_audit_report_table_and_plot_over_runs(tmp_path, capsys):
    from epee_annotate.cli import main
    from epee_annotate.pipelines.audit import audit_table

    later = _output(tmp_path, "march", "2026-03-01T00:00:00", 30)
    earlier = _output(tmp_path, "january", "2026-01-01T00:00:00", 1)
    rows = audit_table([later, earlier])
    assert [r["output"] for r in rows] == [earlier, later]  # oldest run first
    assert [r["verdict"] for r in rows] == [HOLDS, EXCEEDED]
    plot = tmp_path / "drift.png"
    assert main(["audit-report", later, earlier, "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert "holds" in printed and "exceeded" in printed and printed.index("january") < printed.index("march")
    assert plot.read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "_SUCCESS").write_text(json.dumps({"version": 2, "datasets": {}}))
    assert main(["audit-report", str(tmp_path / "plain"), "--plot", str(plot)]) == 2
    assert "has no audit" in capsys.readouterr().err
