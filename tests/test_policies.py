import json

import pytest
import torch

from epee_annotate import BEEM, EPEE, BudgetedExit, EntropyExit, MaxProbExit, PatienceExit
from epee_annotate.policies import normalized_entropy, policy_from_dict, resolve_policy, simulate


def random_exit_probs(rows=500, layers=6, classes=3, seed=0, sharpness=3.0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, layers, classes, generator=generator) * sharpness
    return logits.softmax(-1)


def test_normalized_entropy_bounds():
    uniform = torch.full((1, 4), 0.25)
    onehot = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert normalized_entropy(uniform).item() == pytest.approx(1.0)
    assert normalized_entropy(onehot).item() == pytest.approx(0.0)
    two = torch.tensor([[0.9, 0.1]])
    expected = -(0.9 * torch.log(torch.tensor(0.9)) + 0.1 * torch.log(torch.tensor(0.1))) / torch.log(torch.tensor(2.0))
    assert normalized_entropy(two).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("patience", [1, 2, 3, 4, 6])
def test_epee_with_zero_entropy_is_patience_only(patience):
    probs = random_exit_probs()
    assert torch.equal(simulate(EPEE(entropy=0.0, patience=patience), probs), simulate(PatienceExit(patience), probs))


@pytest.mark.parametrize("tau", [0.05, 0.2, 0.5, 0.8, 0.95])
def test_epee_with_full_patience_is_entropy_only(tau):
    probs = random_exit_probs()
    layers = probs.size(1)
    epee = simulate(EPEE(entropy=tau, patience=layers), probs)
    entropy = simulate(EntropyExit(tau), probs)
    assert torch.equal(epee, entropy)
    assert 1 < epee.float().mean() < layers  # the case is not trivially all-first or all-last


def test_patience_counter_resets_on_change():
    # argmax per layer: 0, 0, 1, 1, 1, 0 -> run lengths 1, 2, 1, 2, 3, 1
    picks = [0, 0, 1, 1, 1, 0]
    probs = torch.stack([torch.tensor([0.6, 0.4]) if p == 0 else torch.tensor([0.4, 0.6]) for p in picks])[None]
    assert simulate(PatienceExit(2), probs).item() == 2
    assert simulate(PatienceExit(3), probs).item() == 5
    assert simulate(PatienceExit(4), probs).item() == 6  # never reached: the last layer answers


def test_entropy_rule_and_epee_or():
    probs = torch.tensor([[[0.5, 0.5], [0.6, 0.4], [0.99, 0.01], [0.99, 0.01]]])
    assert simulate(EntropyExit(0.2), probs).item() == 3
    # patience 2 fires at layer 2 (argmax 0 twice) before the entropy rule does
    assert simulate(EPEE(entropy=0.2, patience=2), probs).item() == 2


def test_budgeted_and_maxprob():
    probs = random_exit_probs(rows=50)
    assert simulate(BudgetedExit(3), probs).eq(3).all()
    assert simulate(BudgetedExit(0), probs).eq(probs.size(1)).all()
    exits = simulate(MaxProbExit(0.8), probs)
    for row, layer in enumerate(exits.tolist()):
        reached = (probs[row].max(-1).values >= 0.8).nonzero()
        assert layer == (int(reached[0]) + 1 if len(reached) else probs.size(1))


def test_policy_serialisation_round_trip():
    for policy in [EPEE(0.3, 2), EntropyExit(0.4), PatienceExit(3), MaxProbExit(0.7), BudgetedExit(2)]:
        assert policy_from_dict(policy.to_dict()) == policy
    assert policy_from_dict(None) == BudgetedExit(0)
    with pytest.raises(ValueError, match="unknown exit policy"):
        policy_from_dict({"name": "bogus"})


def test_invalid_settings_raise():
    with pytest.raises(ValueError):
        EPEE(entropy=1.5, patience=1)
    with pytest.raises(ValueError):
        PatienceExit(0)
    with pytest.raises(ValueError):
        BudgetedExit(-1)


def test_describe_is_stable_text():
    assert EPEE(entropy=0.1 + 0.2, patience=2).describe() == "epee(entropy=0.3,patience=2)"
    assert BudgetedExit(3).describe() == "budgeted(layer=3)"


def beem_row():
    """One row, 6 exits, (max prob, class) per exit: (.9,0) (.9,0) (.6,1) (.8,1) (.7,1) (.9,1)."""
    picks = [(0.9, 0), (0.9, 0), (0.6, 1), (0.8, 1), (0.7, 1), (0.9, 1)]
    return torch.tensor([[[p, 1 - p] if c == 0 else [1 - p, p] for p, c in picks]])


def test_beem_cost_weighted_score_resets_on_class_change():
    # w_m = m/6. Score: .15, .45, reset -> .30, .30 + .5333 = .8333, + .5833 = 1.4167, + .9 = 2.3167
    probs = beem_row()
    assert simulate(BEEM(threshold=0.4), probs).item() == 2
    # Without the reset layer 3 would score .45 + .30 = .75 and exit at 0.5; with it, layer 4 does.
    assert simulate(BEEM(threshold=0.5), probs).item() == 4
    assert simulate(BEEM(threshold=0.84), probs).item() == 5
    assert simulate(BEEM(threshold=3.0), probs).item() == 6  # never reached: the last layer answers
    _, state = BEEM(threshold=9).step(3, 6, probs[:, 2], torch.tensor([[0.0, 0.45]]))
    assert state.tolist() == [[1.0, pytest.approx(0.3)]]


def test_beem_accuracy_weights_and_layer_thresholds():
    probs = beem_row()
    # weights .5 x5 then 1: scores .45, .90 -> exits at layer 2 for threshold .8
    assert simulate(BEEM(threshold=0.8, weights=(0.5,) * 5 + (1.0,)), probs).item() == 2
    per_layer = (9, 9, 9, 0.8, 9, 9)  # only layer 4 (score .8333) may exit
    assert simulate(BEEM(layer_thresholds=per_layer), probs).item() == 4
    assert simulate(BEEM(layer_thresholds=(9, 9, 9, 0.9, 9, 9)), probs).item() == 6
    with pytest.raises(ValueError, match="6 exits"):
        simulate(BEEM(weights=(1.0, 1.0)), probs)


def test_beem_round_trip_and_validation():
    policy = BEEM(threshold=0.7, weights=(0.5, 0.6), layer_thresholds=())
    data = json.loads(json.dumps(policy.to_dict()))  # lists after JSON, as in a checkpoint or config
    assert policy_from_dict(data) == policy and policy_from_dict(data).weights == (0.5, 0.6)
    assert BEEM(threshold=0.1 + 0.2).describe() == "beem(threshold=0.3,weights=(),layer_thresholds=())"
    assert resolve_policy({"beem": 0.5}) == BEEM(0.5)
    with pytest.raises(ValueError, match="conflicting exit-policy settings"):
        resolve_policy({"entropy": 0.1, "beem": 0.5})
    with pytest.raises(ValueError):
        BEEM(threshold=-1.0)
    with pytest.raises(ValueError, match="weights"):
        BEEM(weights=("a",))
