"""Task losses and metrics against independent implementations (scikit-learn, scipy, a hand-written loop)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from glora.app.tasks import IGNORE_INDEX, METRICS, Task, lm_targets, result_key

sklearn_metrics = pytest.importorskip("sklearn.metrics")
scipy_stats = pytest.importorskip("scipy.stats")


def _classes(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, k, (n,), generator=g)
    pred = torch.where(torch.rand(n, generator=g) < 0.6, label, torch.randint(0, k, (n,), generator=g))
    return pred, label


@pytest.mark.parametrize("k", [2, 3, 5])
def test_classification_metrics_match_scikit_learn(k):
    pred, label = _classes(300, k, k)
    logits = F.one_hot(pred, k).float() * 3 + 0.1  # argmax = pred
    task = Task("classification", num_classes=k)
    stats = task.stats(logits, label)
    got = task.compute(stats)
    assert got["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(label, pred), abs=1e-12)
    assert got["matthews"] == pytest.approx(sklearn_metrics.matthews_corrcoef(label, pred), abs=1e-12)
    if k == 2:
        assert got["f1"] == pytest.approx(sklearn_metrics.f1_score(label, pred), abs=1e-12)
    else:
        assert "f1" not in got and "f1" not in task.metric_names
    # Split into batches and concatenated, the statistics give the same metrics (what sharded evaluation does).
    parts = [task.stats(logits[i : i + 64], label[i : i + 64]) for i in range(0, 300, 64)]
    assert task.compute([torch.cat(c) for c in zip(*parts)]) == got


def test_matthews_is_zero_when_one_class_is_predicted():
    label = torch.tensor([0, 1, 1, 0])
    task = Task("classification", num_classes=2)
    assert task.compute(task.stats(torch.tensor([[1.0, 0.0]]).expand(4, 2), label))["matthews"] == 0


def test_classification_loss_is_the_splits_mean_cross_entropy_and_ranks_lower_first():
    g = torch.Generator().manual_seed(1)
    logits, label = torch.randn(300, 3, generator=g), torch.randint(0, 3, (300,), generator=g)
    task = Task("classification", metric="loss", num_classes=3)
    parts = [task.stats(logits[i : i + 64], label[i : i + 64]) for i in range(0, 300, 64)]
    got = task.compute([torch.cat(c) for c in zip(*parts)])
    expected = sklearn_metrics.log_loss(label, logits.double().softmax(-1), labels=[0, 1, 2])
    assert got["loss"] == pytest.approx(expected, rel=1e-6)
    assert task.selection == "loss" and task.score(got) == -got["loss"]  # the search maximises: lower is better


def test_regression_metrics_match_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 6, (200,), generator=g).double()  # many ties, as STS-B's 0-5 scores have
    pred = (label + torch.randn(200, generator=g, dtype=torch.float64)).round(decimals=1)
    got = Task("regression").compute(Task("regression").stats(pred[:, None], label))
    assert got["pearson"] == pytest.approx(scipy_stats.pearsonr(pred, label)[0], abs=1e-6)
    assert got["spearman"] == pytest.approx(scipy_stats.spearmanr(pred, label)[0], abs=1e-6)
    assert got["mse"] == pytest.approx(float(((pred.float() - label.float()) ** 2).mean()), rel=1e-6)
    out = torch.randn(4, 1, requires_grad=True)
    loss = Task("regression").loss(out, torch.tensor([1.0, 2.0, 0.0, 5.0]))
    assert loss.item() == pytest.approx(float(((out.detach().reshape(-1) - torch.tensor([1, 2, 0, 5.0])) ** 2).sum()))


def test_causal_lm_loss_scores_only_labelled_next_tokens():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    labels = torch.full((2, 8), IGNORE_INDEX)  # longer than the logits: they are cut to match
    labels[0, 3:6] = torch.tensor([4, 5, 6])
    labels[1, 1:3] = torch.tensor([7, 8])
    labels = lm_targets(labels)
    task = Task("causal-lm")
    # By hand: position t predicts token t+1; row 0 scores tokens 3, 4, 5 from positions 2, 3, 4.
    logp = logits.log_softmax(-1)
    row0 = -(logp[0, 2, 4] + logp[0, 3, 5] + logp[0, 4, 6]) / 3
    row1 = -(logp[1, 0, 7] + logp[1, 1, 8]) / 2
    assert task.loss(logits, labels).item() == pytest.approx((row0 + row1).item(), rel=1e-6)
    got = task.compute(task.stats(logits, labels))
    total = -(logp[0, 2, 4] + logp[0, 3, 5] + logp[0, 4, 6] + logp[1, 0, 7] + logp[1, 1, 8]) / 5
    assert got["loss"] == pytest.approx(total.item(), rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(total.item()), rel=1e-6)
    hits = sum(int(logits[r, p].argmax() == t) for r, p, t in [(0, 2, 4), (0, 3, 5), (0, 4, 6), (1, 0, 7), (1, 1, 8)])
    assert got["token_accuracy"] == pytest.approx(hits / 5)


def test_multiple_choice_picks_the_most_likely_option_per_question():
    """Three questions of 2, 3 and 2 options (one sequence each): the option with the lowest summed NLL is the
    choice; the loss metrics count only the correct options."""
    task = Task("causal-lm", "mc_accuracy")
    nll = torch.tensor([5.0, 3.0, 2.0, 9.0, 1.0, 4.0, 4.5])
    count = torch.tensor([2, 2, 3, 3, 3, 1, 1])
    group = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    correct = torch.tensor([0, 1, 1, 0, 0, 0, 1])  # q0: chosen index 1 (right); q1: chosen 4 (wrong); q2: 5 (wrong)
    got = task.compute((nll, count, torch.zeros(7), group, correct))
    assert got["mc_accuracy"] == pytest.approx(1 / 3)
    assert got["loss"] == pytest.approx((3.0 + 2.0 + 4.5) / (2 + 3 + 1))
    assert task.score(got) == pytest.approx(1 / 3)
    plain = task.compute((nll, count, torch.zeros(7), torch.full((7,), -1), torch.ones(7)))
    assert "mc_accuracy" not in plain
    with pytest.raises(ValueError, match="metric mc_accuracy needs multiple-choice rows"):
        task.score(plain)


def test_scores_are_maximised_and_names_checked():
    assert Task("regression", "mse").score({"mse": 0.5}) == -0.5
    assert Task("causal-lm").selection == "loss" and Task("causal-lm").score({"loss": 2.0}) == -2.0
    assert Task("classification", "matthews", 2).score({"matthews": 0.4, "accuracy": 0.9}) == 0.4
    assert Task.from_dict(None) == Task() and Task.from_dict(Task("regression").to_dict()) == Task("regression")
    assert result_key("accuracy") == "acc" and result_key("pearson") == "pearson"
    with pytest.raises(ValueError, match="metric 'f1' does not apply to classification with 3 classes; use one of"):
        Task("classification", "f1", 3)
    with pytest.raises(ValueError, match="'pearson' does not apply to causal-lm; use one of loss, perplexity"):
        Task("causal-lm", "pearson")
    with pytest.raises(ValueError, match="task kind must be one of classification, regression, causal-lm"):
        Task("ranking")
    assert {k for m in METRICS.values() for k in m.kinds} == {"classification", "regression", "causal-lm"}
    assert all(math.isnan(v) for v in Task().compute((torch.zeros(0), torch.zeros(0))).values())
