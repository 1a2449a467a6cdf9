"""Calibration goals, Learn-then-Test certification and its coverage, split safety, CLI."""

import json

import numpy as np
import pytest
import torch
from scipy.stats import beta

from conftest import make_texts
from epee_annotate import BEEM, EPEE, MultiExitModel
from epee_annotate.calibration import (
    CalibrationGoal,
    GuardError,
    SameSplitError,
    UncertifiableGoalError,
    binomial_pvalue,
    calibrate,
    calibrate_checkpoint,
    check_split,
    clopper_pearson_upper,
    data_fingerprint,
    dev_fingerprint,
    dev_overlap,
    fixed_sequence,
    inputs_sha256,
    split_examples,
)
from epee_annotate.cli import main
from epee_annotate.evaluation import ExitTable
from epee_annotate.policies import full_depth

A, B, C, D = [0.99, 0.01], [0.6, 0.4], [0.01, 0.99], [0.4, 0.6]


@pytest.fixture
def table():
    """The hand-checked table of test_evaluation: accuracy 1.0 at full depth."""
    probs = torch.tensor([[A, A, A], [B, B, C], [D, C, C], [B, D, B]])
    return ExitTable(probs, torch.tensor([0, 1, 1, 0]), ["neg", "pos"])


GRID = dict(taus=[0.0, 0.5], patiences=[1, 2, 3])
# (tau, P): speed-up, accuracy -- (0,1) 3.0 .75 | (0,2) 1.33 .75 | (0,3) 1.0 1.0
#                                 (.5,1) 3.0 .75 | (.5,2) 1.5 .75 | (.5,3) 1.33 1.0


def test_clopper_pearson_known_values():
    assert clopper_pearson_upper(0, 100, 0.95) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert clopper_pearson_upper(0, 100, 0.95) == pytest.approx(0.0295, abs=5e-5)
    assert clopper_pearson_upper(9, 10, 0.95) == pytest.approx(0.95 ** (1 / 10))  # k = n - 1: C^(1/n)
    assert clopper_pearson_upper(1, 10, 0.95) == pytest.approx(0.3942, abs=1e-4)
    assert clopper_pearson_upper(10, 10, 0.95) == 1.0
    with pytest.raises(ValueError):
        clopper_pearson_upper(3, 2, 0.95)
    # The binomial test and the Clopper-Pearson limit are the same statement.
    assert binomial_pvalue(3, 300, beta.ppf(0.99, 4, 297)) == pytest.approx(0.01)


def in_sample(kind: str, value: float, **options) -> CalibrationGoal:
    """The in-sample choice without the guard: the selection rule itself on a hand-checked table."""
    return CalibrationGoal(kind, value, in_sample=True, guard_drop=1.0, **options)


def test_max_drop(table):
    strict = calibrate(table, in_sample("max_drop", 0.0), **GRID)
    assert strict.policy == EPEE(0.5, 3) and strict.metrics["speedup"] == pytest.approx(4 / 3)
    assert strict.metrics["accuracy"] == 1.0 and strict.reference["accuracy"] == 1.0
    assert strict.grid_size == 6 and strict.feasible == 2 and strict.n == 4
    loose = calibrate(table, in_sample("max_drop", 0.25), **GRID)
    assert loose.policy.patience == 1 and loose.metrics["speedup"] == 3.0
    assert loose.goal.metric == "accuracy"  # auto without a negative label


def test_min_speedup(table):
    result = calibrate(table, in_sample("min_speedup", 1.2), **GRID)
    assert result.policy == EPEE(0.5, 3) and result.metrics["accuracy"] == 1.0
    assert calibrate(table, in_sample("min_speedup", 1.4), **GRID).metrics["speedup"] == 3.0
    with pytest.raises(ValueError, match="reaches 3.000"):
        calibrate(table, in_sample("min_speedup", 3.5), **GRID)


def two_exit_table(n: int, disagreements: int) -> ExitTable:
    """Exit 1 is confident for every row and differs from exit 2 on ``disagreements`` rows."""
    probs = torch.tensor([[A, A]] * n)
    probs[:disagreements, 1] = torch.tensor(C)
    return ExitTable(probs, probs[:, 1].argmax(-1), ["neg", "pos"])


def test_max_disagreement_is_certified_by_fixed_sequence_tests():
    # Paths, conservative first: P=1: (0,1) (.5,1); P=2: (0,2) [full depth] (.5,2). All but (0,2) exit at layer 1.
    grid = dict(taus=[0.0, 0.5], patiences=[1, 2])
    table = two_exit_table(300, 3)
    # Two statements (disagreement, speed-up) share alpha 0.05; two paths share the disagreement's 0.025.
    level = 1 - 0.05 / 2 / 2
    threshold = beta.ppf(level, 3 + 1, 300 - 3)  # the target at which 3/300 is just significant
    passing = calibrate(table, CalibrationGoal("max_disagreement", threshold + 1e-4, guard_drop=1.0), **grid)
    assert passing.metrics["speedup"] == 2.0 and not passing.fallback
    assert passing.bound == pytest.approx(threshold + 1e-4)  # the promise is the certified target
    assert [s.key for s in passing.statements] == ["disagreement", "speedup"]
    assert sum(s.alpha for s in passing.statements) == pytest.approx(0.05)
    assert "with probability >= 0.95 over the calibration sample" in passing.guarantee()
    # Just below it: only the full-depth point (tau 0, P = M) passes; it cannot disagree and needs no statement.
    failing = calibrate(table, CalibrationGoal("max_disagreement", threshold - 1e-4, guard_drop=1.0), **grid)
    assert failing.policy == EPEE(0.0, 2) and failing.bound is None and failing.metrics["speedup"] == 1.0
    assert failing.feasible == 1 and not failing.fallback and failing.statements == []
    assert any("at least" in note and "examples" in note for note in failing.notes)
    # A grid without a full-depth point falls back to full depth itself.
    fallback = calibrate(table, CalibrationGoal("max_disagreement", 0.001, guard_drop=1.0), taus=[0.0, 0.5],
                         patiences=[1])
    assert fallback.fallback and fallback.policy == full_depth() and fallback.bound is None


def test_fixed_sequence_stops_at_the_first_failure_on_each_path():
    pvalues = [0.001, 0.2, 0.001, 0.001, 0.03]
    assert fixed_sequence([[0, 1, 2], [3, 4]], pvalues, 0.1) == {0, 3, 4}  # 2 passes alone but follows a failure
    assert fixed_sequence([[0, 1, 2], [3, 4]], pvalues, 0.05) == {0, 3}  # 0.03 > 0.05 / 2
    assert fixed_sequence([], pvalues, 0.05) == set()


def test_zero_discordance_never_reads_zero():
    # Every candidate agrees with full depth on all 300 rows: the bounds are the exact binomial limits, not 0.
    table = two_exit_table(300, 0)
    grid = dict(taus=[0.0, 0.5], patiences=[1, 2])
    result = calibrate(table, CalibrationGoal("min_speedup", 1.5, guard_drop=1.0), **grid)
    alpha, size = 0.05 / 2, 4
    assert result.bound == pytest.approx(clopper_pearson_upper(0, 300, 1 - alpha / size))
    assert result.bound == pytest.approx(1 - (alpha / size) ** (1 / 300)) and result.bound > 0
    certified = calibrate(table, CalibrationGoal("max_disagreement", 0.02, guard_drop=1.0), **grid)
    assert certified.metrics["speedup"] == 2.0 and certified.bound == 0.02 > 0


def test_ltt_violation_rate_stays_at_alpha():
    """Seeded population with known risks: over many calibrations the chosen setting rarely breaks the target."""
    from epee_annotate.calibration.simulation import violation_rate

    rng = np.random.default_rng(0)
    risks = [0.0, 0.002, 0.005, 0.008, 0.011, 0.015, 0.03]  # one path, conservative first (exits move earlier)
    population = (rng.random((200_000, 1)) < np.array(risks)).astype(np.int8)
    target, alpha, n = 0.01, 0.1, 961

    def ltt(sample: np.ndarray) -> int | None:
        counts = sample.sum(0)
        certified = fixed_sequence([list(range(len(risks)))],
                                   [binomial_pvalue(int(k), n, target) for k in counts], alpha)
        return max(certified, default=None)  # the fastest certified setting

    runs = 300
    after = violation_rate(ltt, population, target, n, runs, seed=1)
    noise = 3 * np.sqrt(alpha * (1 - alpha) / runs)
    assert after <= alpha + noise
    # Not vacuous: it certifies settings faster than full depth (risk > 0) almost every time.
    picks = [ltt(population[np.random.default_rng(s).integers(0, len(population), n)]) for s in range(20)]
    assert sum(p is not None and p >= 1 for p in picks) >= 15


def test_f1_goal_that_cannot_be_certified_is_refused_with_the_n_needed():
    table = imbalanced_table()  # 100 rows, 10 'pos'
    with pytest.raises(UncertifiableGoalError, match=r"macro_f1 drop <= 0.01 cannot be certified from 100 .*"
                                                     r"needs about \d+ examples.*disagreement goal or an accuracy"):
        calibrate(table, CalibrationGoal("max_drop", 0.01, metric="macro_f1", guard_drop=1.0), **EXIT_ONE_GRID)


def test_f1_goal_is_certified_through_disagreement_when_n_allows():
    # 4000 rows, balanced; exit 1 agrees with the last exit everywhere: certified, with the F1 drop stated.
    probs = torch.tensor([[A, A]] * 2000 + [[C, C]] * 2000)
    table = ExitTable(probs, probs[:, 1].argmax(-1), ["neg", "pos"])
    result = calibrate(table, CalibrationGoal("max_drop", 0.01, metric="macro_f1", guard_drop=1.0), **EXIT_ONE_GRID)
    assert result.metrics["speedup"] == 2.0
    assert [s.key for s in result.statements] == ["disagreement", "class_mass", "speedup"]
    assert 0 < result.bound and "macro_f1 drop below the last exit is <=" in result.guarantee()


def test_dev_fingerprint_counts_overlap_without_storing_text():
    dev = ["a note about aspirin", "another note", "third"]
    fingerprint = dev_fingerprint(dev)
    assert "aspirin" not in json.dumps(fingerprint)
    assert dev_overlap(fingerprint, ["third", "unseen", "a note about aspirin"]) == 2
    assert dev_overlap(fingerprint, ["unseen"]) == 0 and dev_overlap(None, dev) is None
    assert dev_fingerprint(dev)["salt"] != fingerprint["salt"]  # salted per checkpoint


def test_goal_validation():
    with pytest.raises(ValueError, match="goal"):
        CalibrationGoal("fastest", 1.0)
    with pytest.raises(ValueError, match="0.005 = 0.5 points"):
        CalibrationGoal("max_drop", 5.0)
    with pytest.raises(ValueError, match="confidence"):
        CalibrationGoal("max_disagreement", 0.01, confidence=1.0)


def test_split_examples_is_deterministic_and_disjoint():
    items = list(range(101))
    first, rest = split_examples(items, 0.5, seed=3)
    assert (first, rest) == split_examples(items, 0.5, seed=3)
    assert len(first) == 50 and sorted(first + rest) == items
    assert first == sorted(first)  # original order is kept
    assert split_examples(items, 0.5, seed=4)[0] != first
    with pytest.raises(ValueError):
        split_examples(items, 1.0)


def test_check_split_refuses_the_calibration_data(tmp_path):
    data = tmp_path / "dev.jsonl"
    data.write_text("x\n")
    texts = ["a", "b", "c", "d"]
    cal = data_fingerprint(texts[:2], path=data, format="jsonl", fraction=0.5, seed=0, part="calibration")
    record = {"data": cal}
    rest = data_fingerprint(texts[2:], path=data, format="jsonl", fraction=0.5, seed=0, part="report")
    assert check_split(record, rest) is None  # the complementary part is fine
    whole = data_fingerprint(texts, path=data, format="jsonl")
    with pytest.raises(SameSplitError, match="fraction 0.5, seed 0\\)") as refused:
        check_split(record, whole)
    assert "--" not in str(refused.value) and refused.value.part == {"fraction": 0.5, "seed": 0}  # no CLI flags
    other_seed = data_fingerprint(texts[1:3], path=data, format="jsonl", fraction=0.5, seed=1, part="report")
    with pytest.raises(SameSplitError):
        check_split(record, other_seed)
    same_inputs = data_fingerprint(texts[:2], format="jsonl")
    with pytest.raises(SameSplitError, match="exactly"):
        check_split(record, same_inputs)
    # A dev part held out of the same file by training is part of the data's identity.
    dev = {"dev_fraction": 0.2, "dev_seed": 42}
    held = {"data": data_fingerprint(texts[:2], path=data, format="ddi", fraction=0.5, seed=0, part="calibration",
                                     holdout=dev)}
    assert check_split(held, data_fingerprint(texts[2:], path=data, format="ddi", fraction=0.5, seed=0,
                                              part="report", holdout=dev)) is None
    with pytest.raises(SameSplitError, match="dev fraction 0.2, dev seed 42"):
        check_split(held, data_fingerprint(texts[2:], path=data, format="ddi", fraction=0.5, seed=0, part="report"))
    assert "WARNING" in check_split(record, whole, allow_same_split=True)
    assert check_split(None, whole) is None
    assert inputs_sha256(["a", "b"]) != inputs_sha256(["ab"])
    assert inputs_sha256([np.zeros((2, 2), np.uint8)]) != inputs_sha256([np.zeros((4,), np.uint8)])


def test_calibrate_checkpoint_stores_policy(tmp_path, model_factory):
    model = model_factory("bert")
    directory = tmp_path / "model"
    model.save_pretrained(directory)
    weights_hash = MultiExitModel.from_pretrained(directory).config.weights_sha256
    texts = make_texts(30, seed=2)
    gold = [p.label for p in model.predict(texts, policy=full_depth())]
    result = calibrate_checkpoint(directory, texts, gold, CalibrationGoal("max_drop", 0.05),
                                  data={"path": "mem"}, taus=[0.0, 0.3, 0.6])
    loaded = MultiExitModel.from_pretrained(directory)
    assert loaded.default_policy == result.policy
    record = loaded.config.calibration
    assert record["policy"] == result.policy.to_dict() and record["n"] == 30 and record["grid_size"] == 12
    assert record["data"]["inputs_sha256"] == inputs_sha256(texts)
    assert record["metrics"]["accuracy"] >= 1.0 - 0.05
    assert loaded.config.weights_sha256 == weights_hash  # only epee_config.json was rewritten


def saved_model_with_own_labels(tmp_path, model_factory, n: int, seed: int):
    """A tiny BERT checkpoint in tmp_path/model and dev.jsonl labelled with its own full-depth answers."""
    model = model_factory("bert")
    directory = tmp_path / "model"
    model.save_pretrained(directory)
    texts = make_texts(n, seed=seed)
    labels = [p.label for p in model.predict(texts, policy=full_depth())]
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    return directory, data


def test_cli_calibrate_then_evaluate_other_part(tmp_path, model_factory, capsys):
    directory, data = saved_model_with_own_labels(tmp_path, model_factory, 60, seed=11)
    split = ["--calibration-fraction", "0.5", "--seed", "1"]
    record = tmp_path / "calibration.json"
    assert main(["calibrate", str(directory), "--data", str(data), "--max-disagreement", "0.2",
                 "--confidence", "0.9", *split, "--json", str(record)]) == 0
    printed = capsys.readouterr().out
    assert "guarantee: " in printed and "stored" in printed and printed.startswith("metric: accuracy")
    stored = json.loads(record.read_text())
    assert stored["n"] == 30 and stored["data"]["part"] == "calibration" and "Learn-then-Test" in stored["correction"]
    saved = MultiExitModel.from_pretrained(directory).config.calibration
    assert saved["disagreement_bound"] == stored["disagreement_bound"]

    out = tmp_path / "report"
    # The whole file overlaps the calibration part: refused, then allowed with a loud warning.
    assert main(["evaluate", str(directory), "--data", str(data), "--report", str(out), "--no-timing"]) == 2
    err = capsys.readouterr().err
    assert "calibrated on the same data file" in err and "pass --calibration-fraction 0.5 --seed 1" in err
    assert main(["evaluate", str(directory), "--data", str(data), "--report", str(out), "--no-timing",
                 "--allow-same-split"]) == 0
    assert "WARNING" in capsys.readouterr().err
    # The other part of the same split is held out: accepted, evaluated with the stored policy.
    assert main(["evaluate", str(directory), "--data", str(data), "--report", str(out), "--no-timing", *split]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 30 and report["data"]["part"] == "report"
    assert not any("WARNING" in w for w in report["warnings"])
    assert report["selected"]["policy"] == stored["policy"]
    assert report["full_depth"]["accuracy"] == 1.0  # labels are the model's own full-depth answers


def test_cli_calibrate_errors(tmp_path, model_factory, capsys):
    model = model_factory("bert")
    directory = tmp_path / "model"
    model.save_pretrained(directory)
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": "neg"}) + "\n" for t in make_texts(10)))
    with pytest.raises(SystemExit):  # a goal is required
        main(["calibrate", str(directory), "--data", str(data)])
    capsys.readouterr()
    assert main(["calibrate", str(directory), "--data", str(data), "--min-speedup", "50", "--dry-run"]) == 2
    assert "no setting on the grid reaches" in capsys.readouterr().err
    assert main(["calibrate", str(directory), "--data", str(data), "--max-drop", "0.01", "--metric",
                 "micro_f1_positive"]) == 2
    assert "needs a negative label" in capsys.readouterr().err
    assert main(["calibrate", str(directory), "--data", str(data), "--max-drop", "0.01", "--dry-run"]) == 0
    assert MultiExitModel.from_pretrained(directory).config.calibration is None  # dry run wrote nothing


# ----- guarantees on new data (issue 13.1) and the guard (issue 10.5) ------------------------------
R, W = [0.01, 0.99], [0.99, 0.01]  # confident "pos" / confident "neg"


def paired_table(counts: dict[tuple[bool, bool], int]) -> ExitTable:
    """Two exits, gold "pos"; ``counts[(exit 1 right, last exit right)]`` rows of each kind; exit 1 always confident."""
    rows = []
    for (first, last), count in counts.items():
        rows += [[R if first else W, R if last else W]] * count
    probs = torch.tensor(rows)
    return ExitTable(probs, torch.ones(len(rows), dtype=torch.long), ["neg", "pos"])


def population_sample(n: int, p_hurt: float, p_helped: float, p_both_wrong: float, seed: int) -> ExitTable:
    """n rows drawn from a population where exit 1 loses p_hurt - p_helped accuracy against the last exit."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(4, size=n, p=[p_hurt, p_helped, p_both_wrong, 1 - p_hurt - p_helped - p_both_wrong])
    keys = [(False, True), (True, False), (False, False), (True, True)]
    return paired_table({keys[k]: int((kinds == k).sum()) for k in range(4)})


ACC = dict(metric="accuracy", guard_drop=1.0)
EXIT_ONE_GRID = dict(taus=[0.0, 0.5], patiences=[1, 2])  # every point but (0, 2) answers at exit 1


def test_in_sample_choice_misses_out_of_sample_the_bound_does_not():
    # Population: exit 1 is 2 points worse (hurts 3%, helps 1%). This calibration split happens to show
    # no difference at all (2 hurt, 2 helped of 200), the PneumoniaMNIST pattern on a small split.
    calibration = paired_table({(False, True): 2, (True, False): 2, (False, False): 10, (True, True): 186})
    test = population_sample(20_000, 0.03, 0.01, 0.05, seed=1)
    goal = 0.01
    naive = calibrate(calibration, CalibrationGoal("max_drop", goal, in_sample=True, **ACC), **EXIT_ONE_GRID)
    assert naive.metrics["speedup"] == 2.0  # in-sample: exit 1 "meets" the 1-point goal
    naive_drop = test.evaluate(full_depth())["accuracy"] - test.evaluate(naive.policy)["accuracy"]
    assert naive_drop > goal  # ... and misses it on new data from the same distribution
    assert any("in-sample choice" in note for note in naive.notes)
    assert any("every calibration input exits at layer 1" in note for note in naive.notes)
    assert "none on new data" in naive.guarantee()

    bounded = calibrate(calibration, CalibrationGoal("max_drop", goal, **ACC), **EXIT_ONE_GRID)
    assert bounded.metrics["speedup"] == 1.0  # cannot be certified from 200 examples
    assert test.evaluate(full_depth())["accuracy"] - test.evaluate(bounded.policy)["accuracy"] <= goal
    assert any("no faster setting can be certified" in note for note in bounded.notes)

    # With enough calibration data a small hurt rate (0.2%) is certified and exit 1 is chosen.
    big = paired_table({(False, True): 20, (True, False): 20, (False, False): 100, (True, True): 9860})
    certified = calibrate(big, CalibrationGoal("max_drop", goal, **ACC), **EXIT_ONE_GRID)
    assert certified.metrics["speedup"] == 2.0 and certified.bounds["accuracy_drop"] == goal
    assert "on new data from the same distribution" in certified.guarantee()


def speed_table(exit_layers: list[int], depth: int = 4) -> ExitTable:
    """Rows that become confident (and stay so) at the given layers; every answer is right."""
    rows = [[R if m >= layer else [0.45, 0.55] for m in range(1, depth + 1)] for layer in exit_layers]
    return ExitTable(torch.tensor(rows), torch.ones(len(rows), dtype=torch.long), ["neg", "pos"])


def test_min_speedup_needs_the_lower_bound_not_the_sample_value():
    table = speed_table([1, 3] * 50)  # mean exit layer 2.0 of 4: exactly 2.0x on the calibration split
    grid = dict(taus=[0.3], patiences=[4])  # entropy only
    assert calibrate(table, CalibrationGoal("min_speedup", 2.0, in_sample=True), **grid).metrics["speedup"] == 2.0
    with pytest.raises(ValueError, match=r"lower confidence bound on new data of 1\.[0-9]{3}"):
        calibrate(table, CalibrationGoal("min_speedup", 2.0), **grid)
    faster = calibrate(speed_table([1] * 700 + [3] * 300), CalibrationGoal("min_speedup", 2.0), **grid)
    assert faster.bounds["speedup"] >= 2.0 and faster.metrics["speedup"] > 2.2


def imbalanced_table() -> ExitTable:
    """90 'neg' + 10 'pos'; exit 1 says 'neg' for everything: accuracy -0.10, macro-F1 1.0 -> 0.47."""
    rows = [[W, W]] * 90 + [[W, R]] * 10
    gold = torch.tensor([0] * 90 + [1] * 10)
    return ExitTable(torch.tensor(rows), gold, ["neg", "pos"])


def test_guard_refuses_a_setting_that_wrecks_another_metric():
    table = imbalanced_table()
    goal = CalibrationGoal("min_speedup", 2.0, metric="accuracy", in_sample=True, guard_drop=0.15)
    with pytest.raises(GuardError, match=r"loses 0\.5263 macro_f1.*Nothing was stored"):
        calibrate(table, goal, **EXIT_ONE_GRID)
    forced = calibrate(table, CalibrationGoal("min_speedup", 2.0, metric="accuracy", in_sample=True,
                                              guard_drop=0.15, force=True), **EXIT_ONE_GRID)
    assert forced.forced and forced.metrics["speedup"] == 2.0 and "force" in forced.notes[0]
    assert forced.drops["macro_f1"] == pytest.approx(1 - 0.9474 / 2, abs=1e-3)
    assert "FORCED" in forced.summary() and "macro_f1" in forced.summary()
    # The checkpoint's training metric is the default metric.
    auto = calibrate(table, CalibrationGoal("max_drop", 0.01, in_sample=True), **EXIT_ONE_GRID,
                     training_metric="macro_f1")
    assert auto.goal.metric == "macro_f1" and auto.metrics["speedup"] == 1.0


def test_note_when_every_setting_meets_the_goal():
    table = speed_table([1] * 300)
    result = calibrate(table, CalibrationGoal("max_drop", 0.05), taus=[0.3, 0.5], patiences=[1, 4])
    assert any("every one of the 4 grid settings met the goal" in note for note in result.notes)
    assert any("exits at layer 1 of 4" in note for note in result.notes)
    assert "note: every one" in result.summary()


def test_cli_calibrate_out_copy_and_guard_refusal(tmp_path, model_factory, capsys):
    directory, data = saved_model_with_own_labels(tmp_path, model_factory, 40, seed=5)
    (directory / "training_state").mkdir()  # optimizer state of a kept run: never copied
    copy = tmp_path / "calibrated"
    args = ["calibrate", str(directory), "--data", str(data), "--max-drop", "0.05"]
    assert main(args + ["--out", str(copy)]) == 0
    assert "stored epee" in capsys.readouterr().out
    assert MultiExitModel.from_pretrained(directory).config.calibration is None  # the source is unchanged
    record = MultiExitModel.from_pretrained(copy).config.calibration
    assert record["goal"]["kind"] == "max_drop" and "guarantee" in record and "drops" in record
    assert not (copy / "training_state").exists()
    assert main(args + ["--out", str(copy)]) == 2  # an existing copy is not silently replaced
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--out", str(copy), "--overwrite"]) == 0
    capsys.readouterr()
    # A goal only a layer-1 setting meets; exit 1 of the random model disagrees with the last exit.
    refused = ["calibrate", str(directory), "--data", str(data), "--min-speedup", "3.9", "--in-sample"]
    assert main(refused) == 3
    err = capsys.readouterr().err
    assert "refused" in err and "Nothing was stored" in err and "--force" in err
    assert MultiExitModel.from_pretrained(directory).config.calibration is None
    assert main(refused + ["--force", "--dry-run"]) == 0
    assert "FORCED" in capsys.readouterr().out
def test_calibrate_beem_families(table):
    # Exit accuracies of the table: .75, .5, 1.0 (the accuracy-based weights).
    for family, weights in (("beem", ()), ("beem-accuracy", (0.75, 0.5, 1.0))):
        # In-sample and unguarded: this tiny table is about the families' grids, not the guarantees.
        result = calibrate(table, CalibrationGoal("min_speedup", 1.5, in_sample=True, guard_drop=1.0), family=family,
                           exit_accuracies=weights or None)
        assert isinstance(result.policy, BEEM) and result.policy.weights == weights
        assert result.metrics["speedup"] >= 1.5 and result.grid["family"] == family
        replayed = table.evaluate(result.policy)
        assert result.metrics["accuracy"] == replayed["accuracy"]
    with pytest.raises(ValueError, match="unknown policy family"):
        calibrate(table, CalibrationGoal("min_speedup", 1.5, in_sample=True), family="bogus")
    # Accuracy weights must come from other data than the calibration split: none given, refused.
    with pytest.raises(ValueError, match="training's dev set"):
        calibrate(table, CalibrationGoal("min_speedup", 1.5, in_sample=True), family="beem-accuracy")


def test_cli_calibrate_beem_round_trips_through_checkpoint(tmp_path, model_factory, capsys):
    directory, data = saved_model_with_own_labels(tmp_path, model_factory, 40, seed=12)
    args = ["calibrate", str(directory), "--data", str(data), "--max-drop", "0.1", "--calibration-fraction", "0.5",
            "--in-sample", "--guard-drop", "1"]
    assert main(args + ["--family", "beem-accuracy"]) == 2  # an untrained checkpoint has no dev accuracies
    assert "training's dev set" in capsys.readouterr().err
    assert main(args + ["--family", "beem"]) == 0
    loaded = MultiExitModel.from_pretrained(directory)
    assert isinstance(loaded.default_policy, BEEM)
    assert "stored beem(" in capsys.readouterr().out
    out = tmp_path / "report"
    assert main(["evaluate", str(directory), "--data", str(data), "--report", str(out), "--no-timing",
                 "--calibration-fraction", "0.5", "--grid"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["selected"]["policy"]["name"] == "beem" and report["dynamic"]["beem"]
    assert (out / "frontier.png").is_file()


def test_evaluate_and_calibrate_name_the_same_metric_and_last_exit_value(tmp_path, model_factory, capsys):
    directory, data = saved_model_with_own_labels(tmp_path, model_factory, 40, seed=21)
    config = json.loads((directory / "epee_config.json").read_text())
    config["training"] = {"metric": "macro_f1"}  # as `train --metric macro_f1` records it
    (directory / "epee_config.json").write_text(json.dumps(config))
    record = tmp_path / "record.json"
    assert main(["calibrate", str(directory), "--data", str(data), "--max-disagreement", "0.2", "--dry-run",
                 "--json", str(record)]) == 0
    calibrated = capsys.readouterr().out
    assert main(["evaluate", str(directory), "--data", str(data), "--report", str(tmp_path / "r"), "--no-timing",
                 "--no-plots"]) == 0
    evaluated = capsys.readouterr().out
    stored, report = json.loads(record.read_text()), json.loads((tmp_path / "r" / "report.json").read_text())
    assert stored["goal"]["metric"] == report["metric"] == "macro_f1" == report["metric_names"][0]
    assert stored["reference"]["macro_f1"] == pytest.approx(report["full_depth"]["macro_f1"])
    for printed in (calibrated, evaluated):  # named first, with where it came from
        assert printed.startswith("metric: macro_f1 (the checkpoint's: training selected its epoch on it)")
    # --metric overrides it the same way in both.
    assert main(["calibrate", str(directory), "--data", str(data), "--max-disagreement", "0.2", "--dry-run",
                 "--metric", "accuracy"]) == 0
    assert capsys.readouterr().out.startswith("metric: accuracy (given)")
    assert main(["evaluate", str(directory), "--data", str(data), "--report", str(tmp_path / "r"), "--no-timing",
                 "--no-plots", "--metric", "accuracy"]) == 0
    assert capsys.readouterr().out.startswith("metric: accuracy (given)")
