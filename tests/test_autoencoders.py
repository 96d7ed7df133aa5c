"""Paper 002 (DESIGN 3.3): tag vectors, the joint and cross-modal autoencoders,
their trainer, the per-concept logistic regression protocol and the Table 2 pipeline."""

import copy
import math
from types import SimpleNamespace

import msgspec
import numpy as np
import pytest
import torch

from mmfast.data import Record
from mmfast.features import TagVectors
from mmfast.nn import CrossModalAutoencoder, JointAutoencoder
from mmfast.nn.autoencoder import CROSS_MODAL_MODES
from mmfast.train import (AutoencoderTrainer, LogisticRegression, concept_auc, load_checkpoint,
                          save_checkpoint)
from mmfast.experiments.autoencoder_demo import ROWS, Training, table2


def set_weights(model, w1, b1, w2, b2):
    with torch.no_grad():
        for parameter, value in ((model.encoder.weight, w1), (model.encoder.bias, b1),
                                 (model.decoder.weight, w2), (model.decoder.bias, b2)):
            parameter.copy_(torch.tensor(value, dtype=torch.float32))


def correlated(num_rows=256, visual_dim=12, text_dim=4, seed=0):
    """Both modalities as noisy linear views of one 3-d latent: each predicts the other."""
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(num_rows, 3, generator=generator)
    v = latent @ torch.randn(3, visual_dim, generator=generator)
    tau = latent @ torch.randn(3, text_dim, generator=generator)
    v = v + 0.1 * torch.randn(v.shape, generator=generator)
    tau = tau + 0.1 * torch.randn(tau.shape, generator=generator)
    return (v - v.mean(0)) / v.std(0), (tau - tau.mean(0)) / tau.std(0)


# ---------------------------------------------------------------- the models


def test_shapes_and_over_complete_hidden_layer():
    joint = JointAutoencoder(10, 4)
    assert joint.hidden == 20  # round(1.4 * (10 + 4))
    v, tau = torch.randn(3, 10), torch.randn(3, 4)
    out = joint(v, tau)
    assert out.hidden.shape == (3, 20) and out.visual.shape == (3, 10) and out.text.shape == (3, 4)
    assert joint.encode(v).shape == (3, 20)  # text missing: read as the mean
    for mode, visual_shape in (("I", None), ("II", (3, 10))):
        cross = CrossModalAutoencoder(10, 4, mode)
        assert cross.hidden == 14  # round(1.4 * 10): the input is v alone
        out = cross(v)
        assert out.hidden.shape == (3, 14) and out.text.shape == (3, 4)
        assert (out.visual is None) if visual_shape is None else out.visual.shape == visual_shape
        assert cross.decoder.out_features == (4 if mode == "I" else 14)
    with torch.no_grad():
        hidden = joint(v, tau).hidden
    assert 0 < float(hidden.min()) and float(hidden.max()) < 1  # sigmoid units


def test_joint_loss_matches_a_hand_computation():
    # visual_dim 2, text_dim 1, hidden round(2/3 * 3) = 2, ReLU, mu 10, lambda 0.5
    model = JointAutoencoder(2, 1, hidden_ratio=2 / 3, activation="relu", mu=10.0,
                             weight_decay=0.5)
    set_weights(model, [[1, 0, 1], [0, 1, -1]], [0, 0.5], [[1, 0], [0, 1], [1, 1]], [0, 0, -1])
    v, tau = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([[3.0], [-1.0]])
    # row 0: h = relu([4, -0.5]) = [4, 0], output [4, 0, 3]: |v - v_hat|^2 = 9 + 4, text 0
    # row 1: h = relu([-1, 2.5]) = [0, 2.5], output [0, 2.5, 1.5]: 2.25, text (-1 - 1.5)^2 = 6.25
    # decay: 0.5 (|W1|^2 + |W2|^2) = 0.5 (4 + 4)
    with torch.no_grad():
        loss = model.loss(v, tau)
    assert float(loss.visual) == pytest.approx((13 + 2.25) / 2)
    assert float(loss.text) == pytest.approx(10 * 6.25 / 2)
    assert float(loss.decay) == pytest.approx(4.0)
    assert float(loss.total) == pytest.approx(7.625 + 31.25 + 4.0)
    # row 1 without text: no text term, and the model reads 0 for its text:
    # h = relu([0, 1.5]), output [0, 1.5, 0.5]: |v - v_hat|^2 = 0.25
    with torch.no_grad():
        loss = model.loss(v, torch.tensor([[3.0], [math.nan]]), torch.tensor([True, False]))
    assert float(loss.visual) == pytest.approx((13 + 0.25) / 2)
    assert float(loss.text) == 0.0 and float(loss.total) == pytest.approx(6.625 + 4.0)


def test_cross_modal_losses_match_a_hand_computation():
    v = torch.tensor([[1.0, 2.0], [-1.0, 1.0]])
    tau = torch.tensor([[4.0], [math.nan]])  # row 1 has no text
    present = torch.tensor([True, False])
    model = CrossModalAutoencoder(2, 1, "II", hidden_ratio=1.0, activation="relu",
                                  weight_decay=0.0)
    set_weights(model, [[1, 0], [0, 1]], [0, 0], [[1, 0], [0, 1], [1, 1]], [0, 0, 0])
    # h = [1, 2] -> [1, 2, 3]: text (4 - 3)^2 = 1; h = [0, 1] -> [0, 1, 1]: visual 1
    with torch.no_grad():
        loss = model.loss(v, tau, present)
    assert (float(loss.visual), float(loss.text), float(loss.total)) == pytest.approx(
        (0.5, 10 * 1 / 2, 5.5))
    model = CrossModalAutoencoder(2, 1, "I", hidden_ratio=1.0, activation="relu",
                                  weight_decay=0.0)
    set_weights(model, [[1, 0], [0, 1]], [0, 0], [[1, 1]], [0])
    with torch.no_grad():
        loss = model.loss(v, tau, present)  # mode I: the text term has weight 1, not mu
    assert (float(loss.visual), float(loss.text)) == pytest.approx((0.0, 0.5))


def test_gradients_reach_only_what_the_loss_uses():
    torch.manual_seed(0)
    v, tau = torch.randn(6, 5), torch.randn(6, 3)
    model = CrossModalAutoencoder(5, 3, "II", weight_decay=0.0)
    model.loss(v, tau, torch.zeros(6, dtype=torch.bool)).total.backward()
    # no row has text: the text outputs get nothing, the visual ones do
    assert not model.decoder.weight.grad[5:].any() and not model.decoder.bias.grad[5:].any()
    assert model.decoder.weight.grad[:5].abs().sum() > 0

    model = CrossModalAutoencoder(5, 3, "I", weight_decay=1e-2)
    model.loss(v, tau, torch.zeros(6, dtype=torch.bool)).total.backward()
    # only the decay is left: it reaches the weights, never the biases
    assert model.encoder.weight.grad.abs().sum() > 0
    assert model.encoder.bias.grad is None or not model.encoder.bias.grad.any()
    assert model.decoder.bias.grad is None or not model.decoder.bias.grad.any()

    # NaN in the rows without text neither leaks into the loss nor into any gradient
    model = JointAutoencoder(5, 3)
    tau_missing = tau.clone()
    tau_missing[::2] = math.nan
    present = torch.tensor([False, True] * 3)
    loss = model.loss(v, tau_missing, present)
    loss.total.backward()
    assert math.isfinite(float(loss.total.detach()))
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # a missing row's text is not a target: changing it changes nothing
    tau_other = tau_missing.nan_to_num(123.0)
    assert torch.equal(model.loss(v, tau_other, present).total, loss.total)


def test_masked_text_rows_count_in_the_batch_but_add_no_text_term():
    torch.manual_seed(0)
    v, tau = torch.randn(8, 6), torch.randn(8, 2)
    present = torch.tensor([True, False, True, True, False, False, True, True])
    model = CrossModalAutoencoder(6, 2, "II")
    with torch.no_grad():
        masked = model.loss(v, tau, present)
        kept = model.loss(v[present], tau[present])
        assert float(masked.text) == pytest.approx(float(kept.text) * 5 / 8, rel=1e-6)
    # tau=None: no row has text, for the joint model; a cross-modal model needs its target
    joint = JointAutoencoder(6, 2)
    with torch.no_grad():
        assert float(joint.loss(v).text) == 0.0
    # the cross-modal features never look at the text
    assert torch.equal(model.encode(v), model(v).hidden)


# ---------------------------------------------------------------- training


def test_training_lowers_reconstruction_error_and_is_deterministic():
    v, tau = correlated()
    histories = []
    for _ in range(2):
        torch.manual_seed(0)
        model = JointAutoencoder(12, 4)
        trainer = AutoencoderTrainer(model, torch.optim.Adam(model.parameters(), lr=1e-2))
        histories.append(trainer.fit(v[:192], tau[:192], epochs=30, batch_size=32, seed=1,
                                     progress=False))
    assert histories[0] == histories[1]  # same seeds, same run
    history = histories[0]
    assert len(history) == 30 and history[-1]["loss"] < 0.3 * history[0]["loss"]
    with torch.no_grad():
        heldout = model.loss(v[192:], tau[192:])
    assert float(heldout.visual + heldout.text) < 0.3 * (12 + 10 * 4)  # unit-variance inputs

    # Cross-Modal I learns the text from the image alone, which the shared latent allows
    torch.manual_seed(0)
    model = CrossModalAutoencoder(12, 4, "I")
    trainer = AutoencoderTrainer(model, torch.optim.SGD(model.parameters(), lr=1e-2,
                                                        momentum=0.9))
    trainer.fit(v[:192], tau[:192], epochs=30, seed=1, progress=False)
    with torch.no_grad():
        assert float(model.loss(v[192:], tau[192:]).text) < 0.3 * 4


def test_cross_modal_models_need_tau_to_train_but_not_to_encode():
    v, tau = correlated(num_rows=16)
    message = ("tau is required: it is the cross-modal model's reconstruction target, "
               "got None")
    for mode in CROSS_MODAL_MODES:
        model = CrossModalAutoencoder(12, 4, mode)
        with pytest.raises(ValueError, match=f"CrossModalAutoencoder.loss: {message}"):
            model.loss(v)
        trainer = AutoencoderTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1))
        with pytest.raises(ValueError, match=f"AutoencoderTrainer.fit: {message}"):
            trainer.fit(v, None, epochs=1, progress=False)
        with pytest.raises(ValueError, match=message):
            trainer.step(v)
        assert trainer.epoch == 0 and model.encode(v).shape == (16, model.hidden)


def test_fit_checks_the_inputs_once_not_per_batch(monkeypatch):
    v, tau = correlated(num_rows=64)
    torch.manual_seed(0)
    model = JointAutoencoder(12, 4)
    calls = []
    check_inputs = model.check_inputs
    monkeypatch.setattr(model, "check_inputs", lambda *args: calls.append(args[0]) or
                        check_inputs(*args))
    trainer = AutoencoderTrainer(model, torch.optim.SGD(model.parameters(), lr=1e-2))
    trainer.fit(v, tau, epochs=2, batch_size=8, progress=False)
    assert calls == ["AutoencoderTrainer.fit"]
    trainer.step(v[:8], tau[:8])  # the public step still checks its batch
    assert calls[1:] == ["JointAutoencoder.loss"]
    with pytest.raises(ValueError, match=r"AutoencoderTrainer.fit: batch_size must be a "
                                         r"positive int, got True"):
        trainer.fit(v, tau, epochs=3, batch_size=True)


@pytest.mark.parametrize("mode", [None, "I", "II"])
def test_loss_and_training_step_on_the_device(device, mode):
    v, tau = correlated(num_rows=32)
    present = torch.arange(32) % 4 != 0
    torch.manual_seed(0)
    model = JointAutoencoder(12, 4) if mode is None else CrossModalAutoencoder(12, 4, mode)
    on_device = copy.deepcopy(model).to(device)
    inputs = (v, tau, present)
    with torch.no_grad():
        expected = model.loss(*inputs)
        loss = on_device.loss(*(x.to(device) for x in inputs))
    for part, value in zip(loss, expected):
        assert part.device.type == device
        torch.testing.assert_close(part.cpu(), value, rtol=1e-5, atol=1e-5)
    trainers = [AutoencoderTrainer(m, torch.optim.SGD(m.parameters(), lr=1e-2))
                for m in (model, on_device)]
    first = trainers[0].step(*inputs)
    assert trainers[1].step(*(x.to(device) for x in inputs)) == pytest.approx(first, rel=1e-5)
    expected = trainers[0].fit(v, tau, epochs=2, batch_size=8, progress=False,
                               text_present=present)
    history = trainers[1].fit(v.to(device), tau.to(device), epochs=2, batch_size=8,
                              progress=False, text_present=present.to(device))
    for epoch, expected_epoch in zip(history, expected, strict=True):
        assert epoch == pytest.approx(expected_epoch, rel=1e-4)
    other = "meta"
    with pytest.raises(ValueError, match=f"v must be on the model's device \\({device}\\), got "
                                         f"{other}"):
        on_device.loss(v.to(other), tau.to(device))
    with pytest.raises(ValueError, match=f"tau must be on the model's device \\({device}\\)"):
        on_device.loss(v.to(device), tau.to(other))
    with pytest.raises(ValueError, match="text_present must be on the model's device"):
        on_device.loss(v.to(device), tau.to(device), present.to(other))


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    v = torch.randn(4, 7)
    for model in (JointAutoencoder(7, 3, activation="tanh", mu=5.0),
                  CrossModalAutoencoder(7, 3, "I"), CrossModalAutoencoder(7, 3, "II", mu=2.0)):
        directory = tmp_path / type(model).__name__ / str(model.mu)
        save_checkpoint(directory, model)
        loaded, _ = load_checkpoint(directory)
        assert type(loaded) is type(model) and loaded.config() == model.config()
        assert torch.equal(loaded.encode(v), model.encode(v))


def test_fit_resumes_from_its_checkpoint_exactly(tmp_path):
    v, tau = correlated(num_rows=64)

    def trainer():
        torch.manual_seed(0)
        model = CrossModalAutoencoder(12, 4, "II")
        return AutoencoderTrainer(model, torch.optim.Adam(model.parameters(), lr=1e-2))

    straight = trainer()
    straight.fit(v, tau, epochs=4, batch_size=16, seed=3, progress=False)
    first = trainer()
    first.fit(v, tau, epochs=2, batch_size=16, seed=3, progress=False,
              checkpoint_dir=tmp_path)
    resumed = trainer()
    resumed.load_checkpoint(tmp_path)
    assert resumed.epoch == 2 and resumed.history == first.history
    with pytest.raises(ValueError, match="seed must be 3"):
        resumed.fit(v, tau, epochs=4, batch_size=16, seed=4, progress=False)
    history = resumed.fit(v, tau, epochs=4, batch_size=16, seed=3, progress=False)
    assert history == straight.history
    for a, b in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.equal(a, b)
    # the model alone loads too, and a trainer of another model refuses the checkpoint
    assert torch.equal(load_checkpoint(tmp_path)[0].encode(v), first.model.encode(v))
    other = JointAutoencoder(12, 4)
    with pytest.raises(ValueError, match="must hold a trainer checkpoint"):
        AutoencoderTrainer(other, torch.optim.SGD(other.parameters(), lr=0.1)).load_checkpoint(
            tmp_path)


def test_a_checkpoint_cut_short_over_an_earlier_one_does_not_load(tmp_path, monkeypatch):
    from mmfast.train import checkpoint

    v, tau = correlated(num_rows=32)
    torch.manual_seed(0)
    model = CrossModalAutoencoder(12, 4, "II")
    trainer = AutoencoderTrainer(model, torch.optim.Adam(model.parameters(), lr=1e-2))
    trainer.fit(v, tau, epochs=1, progress=False, checkpoint_dir=tmp_path)
    assert load_checkpoint(tmp_path)[1]["trainer"]["epoch"] == 1

    def crash(*args, **kwargs):
        raise OSError("disk full")

    # epoch 2's weights and optimizer state are written, then its config.json fails
    monkeypatch.setattr(checkpoint, "write_text_atomic", crash)
    with pytest.raises(OSError, match="disk full"):
        trainer.fit(v, tau, epochs=2, progress=False, checkpoint_dir=tmp_path)
    # epoch 1's config beside epoch 2's weights would be a silent mix: the config is gone
    with pytest.raises(FileNotFoundError, match="is not an mmfast checkpoint .no config.json: "
                                                "never saved, or its save did not finish"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not an mmfast checkpoint"):
        trainer.load_checkpoint(tmp_path)


def test_a_diverging_run_stops_with_a_clear_error():
    v, tau = correlated(num_rows=64)
    torch.manual_seed(0)
    model = JointAutoencoder(12, 4)
    trainer = AutoencoderTrainer(model, torch.optim.SGD(model.parameters(), lr=50.0))
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        trainer.fit(v, tau, epochs=5, progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------- evaluation protocol


def test_logistic_regression_matches_scikit_learn():
    linear_model = pytest.importorskip("sklearn.linear_model")
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    latent = rng.standard_normal((200, 6))
    x = latent * [1, 2, 3, 0.5, 1, 10] + 3
    targets = (latent @ rng.standard_normal((6, 3)) + rng.standard_normal((200, 3)) > 0.5
               ).astype(int)
    for standardize in (False, True):
        model = LogisticRegression(l2=2.0, standardize=standardize, tolerance=1e-10,
                                   max_iter=2000).fit(x, targets)
        scaled = StandardScaler().fit_transform(x) if standardize else x
        for k in range(3):
            reference = linear_model.LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000)
            reference.fit(scaled, targets[:, k])
            np.testing.assert_allclose(model.weight[k].numpy(), reference.coef_[0], atol=1e-5)
            assert float(model.bias[k]) == pytest.approx(reference.intercept_[0], abs=1e-5)
            np.testing.assert_allclose(model.decision_function(x)[:, k].numpy(),
                                       reference.decision_function(scaled), atol=1e-4)
    auc = concept_auc(x[:150], targets[:150], x[150:], targets[150:], l2=2.0)
    scores = model.decision_function(x[150:]).numpy()
    expected = [roc_auc_score(targets[150:, k], scores[:, k]) for k in range(3)]
    np.testing.assert_allclose(auc.per_label.numpy(), expected, atol=0.02)  # other train rows
    assert auc.mean == pytest.approx(float(auc.per_label.mean()))


def test_concept_auc_is_one_on_separable_concepts_and_skips_one_class_ones():
    generator = torch.Generator().manual_seed(0)
    targets = (torch.rand(120, 3, generator=generator) < 0.4).float()
    # concept k is feature k's sign, with a margin; feature 3 is noise
    features = torch.cat([(2 * targets - 1) * (1 + torch.rand(120, 3, generator=generator)),
                          torch.randn(120, 1, generator=generator)], 1)
    result = concept_auc(features[:80], targets[:80], features[80:], targets[80:])
    assert result.mean == 1.0 and result.per_label.tolist() == [1.0, 1.0, 1.0]
    test_targets = targets[80:].clone()
    test_targets[:, 1] = 0  # held-out concept 1 without positives: no AUC
    result = concept_auc(features[:80], targets[:80], features[80:], test_targets)
    assert result.num_skipped == 1 and math.isnan(result.per_label[1])
    with pytest.raises(ValueError, match=r"column\(s\) \[2\] hold one class"):
        concept_auc(features[:80], torch.cat([targets[:80, :2], torch.ones(80, 1)], 1),
                    features[80:], targets[80:])
    with pytest.raises(ValueError, match="must hold only 0 and 1"):
        concept_auc(features[:80], targets[:80] * 2, features[80:], targets[80:])
    with pytest.raises(ValueError, match="must have 4 columns"):
        concept_auc(features[:80], targets[:80], features[80:, :3], targets[80:])
    with pytest.raises(ValueError, match="must be finite"):
        LogisticRegression().fit(features.clone().fill_(math.nan), targets)


def test_logistic_regression_and_concept_auc_on_the_device(device):
    generator = torch.Generator().manual_seed(1)
    targets = (torch.rand(120, 3, generator=generator) < 0.4).float()
    features = (2 * targets - 1) + torch.randn(120, 3, generator=generator)
    expected = LogisticRegression().fit(features, targets)
    # features on the device, targets left on the CPU (and as numpy): they follow the features
    for train_targets in (targets, targets.numpy()):
        model = LogisticRegression().fit(features.to(device), train_targets)
        assert model.weight.device.type == device
        torch.testing.assert_close(model.weight.cpu(), expected.weight, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(model.decision_function(features).cpu(),
                                   expected.decision_function(features), rtol=1e-4, atol=1e-6)
    result = concept_auc(features[:80].to(device), targets[:80], features[80:].to(device),
                         targets[80:])
    reference = concept_auc(features[:80], targets[:80], features[80:], targets[80:])
    assert result.mean == pytest.approx(reference.mean, abs=1e-6)


def test_logistic_regression_bad_arguments():
    features, targets = torch.randn(6, 2), torch.tensor([[0.0], [1.0]] * 3)
    bad = targets.clone()
    bad[3, 0] = 0.5
    with pytest.raises(ValueError, match=r"targets must hold only 0 and 1, got 0.5 at \[3, 0\]"):
        LogisticRegression().fit(features, bad)
    bad[3, 0] = math.nan
    with pytest.raises(ValueError, match=r"got nan at \[3, 0\]"):
        LogisticRegression().fit(features, bad)
    for kwargs, message in [({"max_iter": 0}, "max_iter must be an int >= 1, got 0"),
                            ({"max_iter": 2.5}, "max_iter must be an int >= 1, got 2.5"),
                            ({"tolerance": 0}, "tolerance must be a finite number > 0, got 0"),
                            ({"tolerance": -1e-4}, "tolerance must be a finite number > 0"),
                            ({"tolerance": math.nan}, "tolerance must be a finite number > 0")]:
        with pytest.raises(ValueError, match=f"LogisticRegression: {message}"):
            LogisticRegression(**kwargs)


# ---------------------------------------------------------------- features


def test_tag_vectors_exclude_standardize_and_unknown_tags():
    tags = [["sky", "blue", "cloud"], ["sky", "sun"], ["dog", "cat"], ["cat", "pet"],
            ["sea", "blue"], ["sky"]] * 10
    vectors = TagVectors.fit(tags, dim=6, exclude={"sky"}, epochs=5)
    assert "sky" not in vectors.vectors.index and "cloud" in vectors.vectors.index
    features, tagged = vectors.transform(tags)
    assert features.shape == (60, 6) and features.dtype == np.float32
    assert (~tagged).sum() == 10  # the ["sky"] items: their only tag is excluded
    assert not features[~tagged].any()
    np.testing.assert_allclose(features[tagged].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(features[tagged].std(0), 1, atol=1e-4)
    new, new_tagged = vectors.transform([["unicorn"], ["sky", "cat", "unicorn"], []])
    assert new_tagged.tolist() == [False, True, False] and not new[0].any()
    cat = vectors.vectors.vectors[vectors.vectors.index["cat"]]
    np.testing.assert_allclose(new[1], (cat - vectors.mean) / vectors.std, rtol=1e-5)  # "sky"
    # excluded, "unicorn" unknown: the mean of "cat" alone
    again = TagVectors.fit(tags, dim=6, exclude={"sky"}, epochs=5)
    np.testing.assert_array_equal(again.transform(tags)[0], features)  # seeded, one worker
    with pytest.raises(TypeError, match=r"tag_lists\[0\] must be a list of str tags"):
        vectors.transform(["sky blue"])
    with pytest.raises(ValueError, match="at least one tag outside exclude"):
        TagVectors.fit([["sky"], []], exclude={"sky"})


# ---------------------------------------------------------------- Table 2 pipeline


def synthetic_records(num_items, offset, rng):
    """Labels by index pattern (weather 2/3, sky 1/2, red 2/5, rare 1/10 of the items); the text
    has noise words, "cloud" for weather and the leaking tag "sky"; the histograms put extra
    mass in bin 0 for red."""
    records, histograms = [], []
    noise = ["a", "b", "c", "d", "e", "f", "g", "h"]
    for i in range(offset, offset + num_items):
        labels = [name for name, member in (("weather", i % 3 != 0), ("sky", i % 2 == 0),
                                            ("red", i % 5 < 2), ("rare", i % 10 == 0)) if member]
        words = list(rng.choice(noise, 2, replace=False))
        words += ["cloud"] * ("weather" in labels) + ["sky"] * ("sky" in labels)
        records.append(Record(f"item{i}", "", " ".join(words), tuple(labels)))
        histogram = rng.random(12) + 3.0 * np.eye(12)[0] * ("red" in labels)
        histograms.append(histogram / histogram.sum())
    return records, np.array(histograms, dtype=np.float32)


@pytest.fixture(scope="module")
def tiny_table2():
    """The tiny synthetic problem and its Table 2, computed once for the tests below."""
    rng = np.random.default_rng(0)
    train, train_histograms = synthetic_records(90, 0, rng)
    heldout, heldout_histograms = synthetic_records(45, 1000, rng)
    labels = ["rare", "red", "sky", "weather"]
    training = Training(epochs=3, batch_size=16)
    table = table2(train, heldout, train_histograms, heldout_histograms, labels,
                   num_concepts=3, tag_dim=4, training=training)
    return SimpleNamespace(train=train, heldout=heldout, train_histograms=train_histograms,
                           heldout_histograms=heldout_histograms, labels=labels,
                           training=training, table=table)


def test_table2_pipeline_on_tiny_synthetic_data(tiny_table2):
    train, heldout, labels = tiny_table2.train, tiny_table2.heldout, tiny_table2.labels
    train_histograms = tiny_table2.train_histograms
    heldout_histograms = tiny_table2.heldout_histograms
    training, table = tiny_table2.training, tiny_table2.table
    assert table.concepts == ("weather", "sky", "red")
    assert table.removed == ("sky",) and set(table.untagged) == {"", "sky"}
    assert table.visual_dim == 12  # 200 capped by the histogram width
    assert list(table.auc) == list(ROWS)
    for row in ROWS:
        assert 0 <= table.auc[row].mean <= 1 and table.auc[row].per_label.shape == (3,)
    raw_tags, sift = table.auc["Raw Tags"].per_label, table.auc["SIFT"].per_label
    assert raw_tags[0] == 1.0  # "cloud" gives weather away
    assert raw_tags[1] < 0.8  # "sky" was removed before predicting sky
    assert sift[2] > 0.95  # the histograms' bin 0 gives red away
    again = table2(train, heldout, train_histograms, heldout_histograms, labels,
                   num_concepts=3, tag_dim=4, training=training)
    assert {row: s.mean for row, s in again.auc.items()} == {
        row: s.mean for row, s in table.auc.items()}
    # fitting never touches the caller's global RNG
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    table2(train, heldout, train_histograms, heldout_histograms, labels, num_concepts=3,
           tag_dim=4, training=Training(epochs=1, batch_size=16))
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(ValueError, match=r"train_histograms must have shape \[90, W\]"):
        table2(train, heldout, train_histograms[1:], heldout_histograms, labels)
    with pytest.raises(ValueError, match=r"num_concepts must be in \[1, 4\]"):
        table2(train, heldout, train_histograms, heldout_histograms, labels, num_concepts=5)


def test_table2_removes_the_tag_of_a_capitalized_concept_label(tiny_table2):
    train, heldout = tiny_table2.train, tiny_table2.heldout
    train_histograms = tiny_table2.train_histograms
    heldout_histograms = tiny_table2.heldout_histograms
    training, expected = tiny_table2.training, tiny_table2.table

    def relabel(records, names):
        return [msgspec.structs.replace(r, labels=tuple(names.get(label, label)
                                                    for label in r.labels)) for r in records]

    # the label "Sky" stands for the tag "sky" of the texts: it must be removed all the same
    names = {"sky": "Sky"}
    table = table2(relabel(train, names), relabel(heldout, names), train_histograms,
                   heldout_histograms, ["rare", "red", "Sky", "weather"], num_concepts=3,
                   tag_dim=4, training=training)
    assert table.concepts == ("weather", "Sky", "red")
    assert table.removed == ("Sky",) and set(table.untagged) == {"", "sky"}
    assert table.auc["Raw Tags"].per_label[1] < 0.8  # no leak through the "sky" tag
    for row in ROWS:
        torch.testing.assert_close(table.auc[row].per_label, expected.auc[row].per_label,
                                   rtol=0, atol=0, equal_nan=True)
    names = {"red": "light red"}
    with pytest.raises(ValueError, match=r"concept 'light red' must tokenize to exactly one "
                                         r"tag .*, got \['light', 'red'\]"):
        table2(relabel(train, names), relabel(heldout, names), train_histograms,
               heldout_histograms, ["rare", "light red", "sky", "weather"], num_concepts=3,
               tag_dim=4, training=training)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("make, message", [
    (lambda: JointAutoencoder(0, 4), "visual_dim must be a positive int, got 0"),
    (lambda: JointAutoencoder(4, 2.0), "text_dim must be a positive int, got 2.0"),
    (lambda: JointAutoencoder(4, 2, activation="gelu"), "activation must be one of"),
    (lambda: JointAutoencoder(4, 2, mu=0), "mu must be a finite number > 0.0, got 0"),
    (lambda: JointAutoencoder(4, 2, weight_decay=-1), "weight_decay must be a finite number"),
    (lambda: JointAutoencoder(4, 2, hidden_ratio=0.01), "leaves no hidden unit"),
    (lambda: CrossModalAutoencoder(4, 2, mode="III"), r"mode must be one of \('I', 'II'\)"),
    (lambda: CrossModalAutoencoder(4, 2, mode="I", mu=10.0), "it must be None, got 10.0"),
])
def test_bad_constructor_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_inputs_name_the_argument():
    model = JointAutoencoder(5, 3)
    v, tau = torch.randn(4, 5), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"JointAutoencoder.loss: v must have shape \[B, 5\]"):
        model.loss(torch.randn(4, 6), tau)
    with pytest.raises(TypeError, match="v must have the model's dtype torch.float32, got "
                                        "torch.float64"):
        model.loss(v.double(), tau)
    with pytest.raises(TypeError, match="v must be a torch.Tensor, got ndarray"):
        model.encode(v.numpy())
    with pytest.raises(ValueError, match=r"tau must have shape \[B, 3\] with B = 4 rows"):
        model.loss(v, tau[:3])
    bad = v.clone()
    bad[2, 1] = math.inf
    with pytest.raises(ValueError, match="v must be finite, but row 2"):
        model.loss(bad, tau)
    bad = tau.clone()
    bad[1, 0] = math.nan
    with pytest.raises(ValueError, match="tau must be finite, but row 1"):
        model.loss(v, bad)
    # the same NaN in a row marked without text is fine
    model.loss(v, bad, torch.tensor([True, False, True, True]))
    with pytest.raises(TypeError, match="text_present must be one of bool"):
        model.loss(v, tau, torch.ones(4))
    with pytest.raises(ValueError, match="text_present must have 4 entries"):
        model.loss(v, tau, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="v must have at least one row"):
        model.loss(v[:0], tau[:0])
    with pytest.raises(ValueError, match="text_present needs tau"):
        model.loss(v, None, torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="model must be a JointAutoencoder or a "
                                        "CrossModalAutoencoder, got Linear"):
        AutoencoderTrainer(torch.nn.Linear(2, 2), None)
    trainer = AutoencoderTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="epochs must be a positive int, got 0"):
        trainer.fit(v, tau, epochs=0)
    with pytest.raises(ValueError, match=r"AutoencoderTrainer.fit: tau must have shape"):
        trainer.fit(v, torch.randn(5, 3), epochs=1, progress=False)
