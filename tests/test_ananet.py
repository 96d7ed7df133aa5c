"""AnANet (paper 004, DESIGN 3.4): modules, ablation variants, losses, trainer, checkpoints,
region features, and the emoji image-text relevance task."""

import json

import pytest
import torch

import mmfast
from mmfast import reference
from mmfast.data import Record, emoji_dataset, read_manifest, relevance_pairs
from mmfast.features import GridRegionFeatureExtractor, WordVectors
from mmfast.nn import AlignmentNet, AnANet, AssociationNet
from mmfast.nn.ananet import VARIANTS, mean_pool
from mmfast.train import AnANetTrainer, load_checkpoint, load_features, relevance_features
from mmfast.features import image_store

SMALL = dict(num_classes=3, num_regions=5, num_words=7, region_dim=24, word_dim=6,
             context_dim=10, hidden_dim=16, inv_dim=8)


def _features(num_samples, seed=0, separable=False):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(3, (num_samples,), generator=g)
    regions = torch.randn(num_samples, SMALL["num_regions"], SMALL["region_dim"], generator=g)
    if separable:  # the class is written in the regions: a model that learns must fit it
        regions[:, :, :3] += 3 * torch.nn.functional.one_hot(labels, 3)[:, None, :]
    return {
        "regions": regions,
        "word_vectors": torch.randn(num_samples, SMALL["num_words"], SMALL["word_dim"], generator=g),
        "context_vectors": torch.randn(num_samples, SMALL["num_words"], SMALL["context_dim"],
                                       generator=g),
        "t_lengths": torch.randint(0, SMALL["num_words"] + 1, (num_samples,), generator=g),
        "labels": labels,
    }


def _inputs(features):
    """AnANet's positional inputs from ``_features``: regions, word vectors, context vectors and
    text lengths."""
    return [features[k] for k in ("regions", "word_vectors", "context_vectors", "t_lengths")]


def test_alignment_net_is_t_bar_then_v_bar():
    V, T = torch.randn(4, 5, 16), torch.randn(4, 7, 16)
    t_lengths = torch.tensor([7, 3, 0, 1])
    r_l = AlignmentNet(5, 7, scale=0.5)(V, T, t_lengths)
    v_bar, t_bar = reference.cross_attention_cosine(V, T, t_lengths, 0.5)
    torch.testing.assert_close(r_l, torch.cat([t_bar, v_bar], 1))
    with pytest.raises(ValueError, match=r"must be \(5, 7\) \(Kr, N\), got \(5, 6\)"):
        AlignmentNet(5, 7)(V, T[:, :6], None)


def test_association_net_pools_valid_words_and_projects():
    net = AssociationNet(dim=6, inv_dim=4, var_dim=3)
    V, T = torch.randn(2, 5, 6), torch.randn(2, 4, 6)
    t_lengths = torch.tensor([2, 0])
    out = net(V, T, t_lengths)
    torch.testing.assert_close(out.f_inv_img, V.mean(1) @ net.shared.weight.T)
    torch.testing.assert_close(out.f_inv_txt[0], T[0, :2].mean(0) @ net.shared.weight.T)
    assert torch.equal(out.f_inv_txt[1], torch.zeros(4))  # no words: pooled to 0
    assert out.r_g.shape == (2, 8) and out.f_var_img.shape == (2, 3)
    expected = (out.f_inv_img - out.f_inv_txt).norm(dim=1).mean()
    torch.testing.assert_close(AssociationNet.invariant_loss(out), expected)


def test_orthogonality_loss_vanishes_for_orthogonal_rows():
    net = AssociationNet(dim=6, inv_dim=2, var_dim=2)
    basis = torch.eye(6)
    with torch.no_grad():
        net.shared.weight.copy_(basis[:2])
        net.private_img.weight.copy_(basis[2:4])
        net.private_txt.weight.copy_(basis[4:])
    assert net.orthogonality_loss().item() == 0.0
    with torch.no_grad():
        net.private_txt.weight.copy_(2 * basis[:2])  # W P_txt^T = 2 I: Frobenius norm 2 sqrt(2)
    torch.testing.assert_close(net.orthogonality_loss(), torch.tensor(2 * 2**0.5))


def test_ananet_forward_backward_and_reference_backend():
    torch.manual_seed(0)
    model = AnANet(**SMALL)
    features = _features(6)
    inputs = _inputs(features)
    output = model(*inputs)
    assert output.logits.shape == (6, 3)
    loss = model.loss(output, features["labels"])
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with mmfast.backend("reference"):
        reference_output = model(*inputs)
    torch.testing.assert_close(output.logits, reference_output.logits)
    expected = (torch.nn.functional.cross_entropy(output.logits, features["labels"])
                + 0.1 * output.invariant_loss + 2.0 * output.orthogonality_loss)
    torch.testing.assert_close(loss, expected)


def test_trainer_learns_and_checkpoints_round_trip(tmp_path):
    torch.manual_seed(0)
    trainer = AnANetTrainer(AnANet(**SMALL), batch_size=16)
    train = _features(96, seed=1, separable=True)
    history = trainer.fit(train, epochs=30, generator=torch.Generator().manual_seed(0))
    assert history[-1] < 0.5 * history[0]
    scores = trainer.evaluate(train)
    assert scores["accuracy"] > 0.8 and len(scores["f1_per_class"]) == 3

    trainer.save_checkpoint(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json",
                                                                     "model.safetensors"]
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["steps"] == trainer.steps
    restored = AnANetTrainer.load_checkpoint(tmp_path / "ckpt")
    torch.testing.assert_close(restored.predict(train), trainer.predict(train))
    assert isinstance(load_checkpoint(tmp_path / "ckpt")[0], AnANet)
    # no samples (a rank's empty share of a validation split): no rows, every class
    empty = {key: value[:0] for key, value in train.items()}
    assert trainer.predict(empty).shape == (0, 3)


def test_feature_store_round_trip(tmp_path):
    from safetensors.torch import save_file

    features = _features(5)
    save_file(features, tmp_path / "features.safetensors")
    loaded = load_features(tmp_path / "features.safetensors")
    assert all(torch.equal(loaded[k], features[k]) for k in features)
    del features["context_vectors"]
    save_file(features, tmp_path / "bad.safetensors")
    with pytest.raises(KeyError, match=r"missing \['context_vectors'\]"):
        load_features(tmp_path / "bad.safetensors")


def test_region_features_random_weights_tiny_images(tmp_path):
    from safetensors.torch import save_file

    from mmfast.features import RegionFeatureExtractor

    torch.manual_seed(0)
    extractor = RegionFeatureExtractor(weights=None, num_regions=36, image_size=64)
    images = [torch.rand(3, 48, 64), torch.rand(3, 40, 40)]
    features, boxes = extractor(images)
    assert features.shape == (2, 36, 1024) and boxes.shape == (2, 36, 4)
    assert torch.isfinite(features).all()
    assert (boxes[1, :, 2:] <= 40 + 1e-3).all()  # boxes in the given image's coordinates

    # Weights from a local file load into the same architecture and give the same features.
    state = {k: v.contiguous() for k, v in extractor.detector.state_dict().items()}
    save_file(state, tmp_path / "frcnn.safetensors")
    reloaded = RegionFeatureExtractor(tmp_path / "frcnn.safetensors", image_size=64)
    torch.testing.assert_close(reloaded(images)[0], features)


def test_variants_keep_only_their_branches():
    torch.manual_seed(0)
    features = _features(6)
    inputs = _inputs(features)
    heads = {}
    for variant in VARIANTS:
        model = AnANet(**SMALL, variant=variant)
        heads[variant] = (model.association is not None, model.alignment is not None)
        if variant == "full":
            continue  # the default: test_ananet_forward_backward_and_reference_backend runs it
        output = model(*inputs)
        assert output.logits.shape == (6, 3)
        model.loss(output, features["labels"]).backward()
        assert all(p.grad is not None for p in model.parameters())
        if model.association is None:  # L_c alone
            assert output.invariant_loss.item() == output.orthogonality_loss.item() == 0.0
    assert heads == {"full": (True, True), "association": (True, False),
                     "alignment": (False, True), "concat": (False, False)}

    # Concatenation: one linear head on [mean regions, mean valid words] of the encoders.
    model = AnANet(**SMALL, variant="concat")
    V = model.region_encoder(inputs[0])
    T = model.encode_words(*inputs[1:])
    expected = model.global_head(torch.cat(mean_pool(V, T, inputs[3]), dim=1))
    torch.testing.assert_close(model(*inputs).logits, expected)
    with pytest.raises(ValueError, match="variant must be one of"):
        AnANet(**SMALL, variant="global")


def _records(groups):
    return [Record(f"{group}{i}", f"{group}{i}.png", f"caption {group} {i}", (group,))
            for group, count in groups.items() for i in range(count)]


def test_relevance_pairs_labels_and_determinism():
    records = _records({"a": 4, "b": 3, "c": 1})
    pairs = relevance_pairs(records, seed=3)
    assert pairs == relevance_pairs(records, seed=3)
    assert pairs != relevance_pairs(records, seed=4)
    for pair in pairs:
        group, caption_group = pair.image.labels[0], pair.caption.labels[0]
        if pair.label == 0:
            assert pair.caption == pair.image
        elif pair.label == 1:
            assert caption_group == group and pair.caption.id != pair.image.id
        else:
            assert caption_group != group
    # Three pairs per image, except "c0", alone in its group: no same-group caption exists.
    per_image = {record.id: [p.label for p in pairs if p.image.id == record.id]
                 for record in records}
    assert per_image["c0"] == [0, 2]
    assert all(labels == [0, 1, 2] for item, labels in per_image.items() if item != "c0")
    with pytest.raises(ValueError, match="at least 2 groups"):
        relevance_pairs(_records({"a": 3}))
    with pytest.raises(ValueError, match="exactly one group label"):
        relevance_pairs(records + [Record("x", "x.png", "x", ())])


def test_relevance_pairs_on_the_demo_split_never_cross_it():
    data = emoji_dataset("group")
    splits = {name: read_manifest(path) for name, path in (("train", data.train),
                                                           ("heldout", data.heldout))}
    for name, records in splits.items():
        ids = {record.id for record in records}
        pairs = relevance_pairs(records, seed=0)
        assert all(p.image.id in ids and p.caption.id in ids for p in pairs), name
        # Every group has several items on each side of the split: three pairs per image.
        counts = torch.bincount(torch.tensor([p.label for p in pairs]), minlength=3)
        assert counts.tolist() == [len(records)] * 3, name


def test_relevance_training_end_to_end_on_demo_items(tmp_path):
    """A few demo items through grid regions, Word2Vec tokens, pairs, training and metrics."""
    torch.manual_seed(0)
    data = emoji_dataset("group")
    train, heldout = read_manifest(data.train)[::25], read_manifest(data.heldout)[::20]
    extractor = GridRegionFeatureExtractor(image_size=64)  # 2 x 2 cells
    store = image_store(train + heldout, tmp_path / "regions", extractor, progress=False)
    assert store["image"].shape == (len(train) + len(heldout), 4, 1280)
    vectors = WordVectors.train([record.text for record in train], dim=8, epochs=2)
    features = {name: relevance_features(relevance_pairs(records), store, vectors, num_words=4)
                for name, records in (("train", train), ("heldout", heldout))}
    assert features["heldout"]["regions"].shape[1:] == (4, 1280)
    model = AnANet(num_regions=4, num_words=4, region_dim=1280, word_dim=8, context_dim=0,
                   hidden_dim=16, inv_dim=8)
    trainer = AnANetTrainer(model, batch_size=32)
    history = trainer.fit(features["train"], epochs=3, generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(torch.tensor(history)))
    scores = trainer.evaluate(features["heldout"])
    assert 0.0 <= scores["accuracy"] <= 1.0 and len(scores["f1_per_class"]) == 3
