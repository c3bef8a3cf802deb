"""Temperature scaling, ECE and the dihedral views, against closed-form values."""

import pytest
import torch

from fimvision.calibration import dihedral_views, expected_calibration_error, fit_temperature


def test_ece_is_the_weighted_gap_between_confidence_and_accuracy():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    target = torch.tensor([0, 1, 1])
    # bins: 0.9 (right) gap 0.1; 0.6 (wrong) gap 0.6; 0.8 (right) gap 0.2 -> mean 0.3
    assert expected_calibration_error(probs, target) == pytest.approx(0.3, abs=1e-6)
    perfect = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, torch.tensor([0, 1])) == pytest.approx(0.0, abs=1e-7)


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_at():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(20000, 4, generator=generator)
    target = torch.multinomial((logits / 2.5).softmax(1), 1, generator=generator).squeeze(1)
    assert fit_temperature(logits, target) == pytest.approx(2.5, rel=0.05)
    # Calibrated probabilities have a lower ECE than the over-confident ones.
    before = expected_calibration_error(logits.softmax(1), target)
    after = expected_calibration_error((logits / fit_temperature(logits, target)).softmax(1), target)
    assert after < before / 3


def test_fit_temperature_without_data_is_one():
    assert fit_temperature(torch.empty(0, 3), torch.empty(0, dtype=torch.long)) == 1.0


def test_dihedral_views_are_the_eight_distinct_symmetries():
    image = torch.arange(9.0).reshape(1, 1, 3, 3)
    views = dihedral_views(image)
    assert len(views) == 8
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    assert torch.equal(views[0], image)
    # Closed under the group: the views of any view are the same eight images.
    again = {tuple(v.flatten().tolist()) for v in dihedral_views(views[3])}
    assert again == {tuple(v.flatten().tolist()) for v in views}


def test_fit_temperature_works_under_inference_mode_as_in_validation():
    generator = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        logits = 3 * torch.randn(500, 3, generator=generator)
        target = torch.multinomial((logits / 2).softmax(1), 1, generator=generator).squeeze(1)
        assert fit_temperature(logits, target) == pytest.approx(2.0, rel=0.2)


def test_fit_combination_recovers_the_weights_and_class_bias_labels_were_drawn_with():
    from fimvision.calibration import fit_combination

    generator = torch.Generator().manual_seed(0)
    a = (2 * torch.randn(20000, 3, generator=generator)).log_softmax(1)
    b = (2 * torch.randn(20000, 3, generator=generator)).log_softmax(1)
    bias = torch.tensor([0.5, 0.0, -0.5])
    target = torch.multinomial((1.5 * a + 0.5 * b + bias).softmax(1), 1, generator=generator).squeeze(1)
    weights, fitted_bias = fit_combination([a, b], target, bias_decay=0.0)
    assert weights == pytest.approx([1.5, 0.5], abs=0.08)
    centred = torch.tensor(fitted_bias) - torch.tensor(fitted_bias).mean()  # softmax ignores a common shift
    assert centred.tolist() == pytest.approx(bias.tolist(), abs=0.08)
    # A learner that knows nothing gets (almost) no weight.
    noise = (2 * torch.randn(20000, 3, generator=generator)).log_softmax(1)
    weights, _ = fit_combination([a, noise], target)
    assert abs(weights[1]) < 0.05 < weights[0]
    assert fit_combination([a, b], torch.empty(0, dtype=torch.long)) == ([0.5, 0.5], [0.0, 0.0, 0.0])
