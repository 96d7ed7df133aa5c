"""Paper 003 models (fastText, continuous fusions, PQ/RSPQ tokens), the early-fusion MLP
baseline, trainer, checkpoints."""

import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

import mmfast
from mmfast.nn import ContinuousFusion, DiscretizedFastText, FastText, TextHasher, fnv1a_32
from mmfast.metrics import accuracy
from mmfast.nn.kiela import FUSIONS
from mmfast.train import Examples, load_checkpoint, predict, save_checkpoint, train
from mmfast.data import Record
from mmfast.defaults import TEXT_LR_SCALES, Recipe
from mmfast.systems.kiela import fit


def test_fnv1a_is_the_standard_hash():
    assert fnv1a_32("") == 0x811C9DC5 and fnv1a_32("a") == 0xE40C292C


def test_text_hasher_words_and_ngrams():
    hasher = TextHasher.build(["red apple", "green apple"], buckets=50, ngrams=2)
    assert hasher.vocabulary[0] == "apple" and hasher.num_embeddings == 3 + 50
    ids = hasher.ids("Red apple pie")
    assert ids[:2] == [hasher.word_ids["red"], 0]  # "pie" is out of vocabulary
    assert ids[2:] == [3 + fnv1a_32("red apple") % 50, 3 + fnv1a_32("apple pie") % 50]
    words, offsets = hasher.encode(["red", "", "apple green"])
    assert offsets.tolist() == [0, 1, 1] and words.numel() == 1 + 3


def test_fasttext_tables_start_uniform_and_the_seed_alone_decides_them():
    """fastText's init (U uniform in [-1/dim, 1/dim], W and b zero); a table of millions of
    entries is filled in seeded blocks on the torch threads: the same values at one thread and
    at two, another seed other values."""
    threads = torch.get_num_threads()
    tables = []
    try:
        for count, seed in ((1, 0), (2, 0), (2, 1)):
            torch.set_num_threads(count)
            torch.manual_seed(seed)
            model = FastText(70_000, 20, 3)
            tables.append(model.embedding.weight.detach())
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(tables[0], tables[1]) and not torch.equal(tables[1], tables[2])
    table = tables[0]
    assert table.abs().max() <= 1 / 20 and table.min() < -0.049 and table.max() > 0.049
    assert abs(float(table.mean())) < 1e-3 and abs(float(table.var()) - (0.1**2) / 12) < 1e-5
    assert not model.classifier.weight.any() and not model.classifier.bias.any()


def test_examples_batch_gathers_bags():
    words = torch.tensor([1, 2, 3, 4, 5, 6])
    data = Examples(words, torch.tensor([0, 2, 2, 5]), torch.arange(8.0).view(4, 2),
                    torch.tensor([0, 1, 2, 3]))
    w, o, image, targets = data.batch(torch.tensor([3, 0, 1]))
    assert w.tolist() == [6, 1, 2] and o.tolist() == [0, 1, 3]
    assert image[:, 0].tolist() == [6.0, 0.0, 2.0] and targets.tolist() == [3, 0, 1]


def _inputs(batch=5, dim=7, vocab=30):
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([3, 0, 1, 4, 2])[:batch]
    offsets = torch.cumsum(lengths, 0) - lengths
    words = torch.randint(vocab, (int(lengths.sum()),), generator=generator)
    return words, offsets, lengths, torch.randn(batch, dim, generator=generator)


def _text_mean(model, words, lengths):
    rows = model.embedding.weight[words].split(lengths.tolist())
    return torch.stack([r.mean(0) if len(r) else torch.zeros(model.dim) for r in rows])


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("gate", ["text", "image"])
def test_continuous_fusions_match_their_formulas(fusion, gate):
    words, offsets, lengths, image = _inputs()
    model = ContinuousFusion(30, 7, 4, 3, fusion=fusion, gate=gate)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter)
    model.center_images(torch.randn(9, 7))
    centered = torch.nn.functional.normalize(image - model.image_mean, dim=1)
    u, v = _text_mean(model, words, lengths), centered @ model.image_projection.weight.T
    if fusion.startswith("bilinear"):
        if fusion == "bilinear_gated":
            u, v = (u.sigmoid(), v) if gate == "text" else (u, v.sigmoid())
        else:
            u, v = u + model.text_offset, v + model.image_offset
        expected = torch.nn.functional.bilinear(u, v, model.bilinear_weight, model.bilinear_bias)
    else:
        fused = {"image": v, "additive": u + v, "max": torch.maximum(u, v),
                 "gated": u.sigmoid() * v if gate == "text" else u * v.sigmoid()}[fusion]
        expected = model.classifier(fused)
    torch.testing.assert_close(model(words, offsets, image), expected)


def test_discretized_model_normalizes_words_and_tokens_separately():
    words, offsets, lengths, _ = _inputs()
    tokens = torch.randint(12, (5, 4), generator=torch.Generator().manual_seed(1))
    model = DiscretizedFastText(30, 12, 6, 3, alpha=0.3)
    torch.nn.init.normal_(model.classifier.weight)
    table = model.embedding.weight
    hidden = _text_mean(model, words, lengths) + 0.3 * table[tokens + 30].mean(1)
    torch.testing.assert_close(model(words, offsets, tokens), model.classifier(hidden))
    # the fused trainer's one weighted bag (bags) sums the same
    ids, starts, weights = model.bags(words, offsets, tokens)
    torch.testing.assert_close(model.embedding(ids, starts, per_sample_weights=weights), hidden)
    model(words, offsets, tokens).sum().backward()
    assert model.embedding.weight.grad.is_sparse  # the table's gradient stays sparse


def test_models_reject_bad_inputs():
    words, offsets, _, image = _inputs()
    with pytest.raises(ValueError, match="fusion must be one of"):
        ContinuousFusion(30, 7, 4, 3, fusion="concat")
    with pytest.raises(ValueError, match=r"image must be a float tensor \[B, 7\]"):
        ContinuousFusion(30, 7, 4, 3)(words, offsets, image[:, :3])
    with pytest.raises(ValueError, match=r"words must be ids in \[0, 30\)"):
        FastText(30, 4, 3)(words + 100, offsets)
    with pytest.raises(TypeError, match="image must be int64 tokens"):
        DiscretizedFastText(30, 12, 6, 3)(words, offsets, image)
    with pytest.raises(TypeError, match="offsets must be a 1-d int64 tensor"):
        FastText(30, 4, 3)(words, offsets.int())


def _toy_task(n=240, classes=3, seed=0):
    """Class c: words from its own block of the vocabulary; image = a noisy class direction."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(classes, (n,), generator=generator)
    lengths = torch.randint(1, 4, (n,), generator=generator)
    words = torch.cat([c * 10 + torch.randint(10, (int(k),), generator=generator)
                       for c, k in zip(targets.tolist(), lengths)])
    offsets = torch.cumsum(lengths, 0) - lengths
    image = torch.nn.functional.one_hot(targets, 8).float() + 0.3 * torch.randn(n, 8,
                                                                                generator=generator)
    return Examples(words, offsets, image, targets)


@pytest.mark.parametrize("fusion", ["image", "additive", "bilinear_gated"])
def test_training_learns_and_checkpoints_round_trip(tmp_path, fusion):
    data = _toy_task()
    model = ContinuousFusion(30, 8, 10, 3, fusion=fusion).center_images(data.image)
    stats = train(model, data, epochs=8, lr=1.0, batch_size=16)
    assert stats["items_per_s"] > 0
    logits = predict(model, data)
    assert (logits.argmax(1) == data.targets).float().mean() > 0.9
    save_checkpoint(tmp_path / "ckpt", model, {"labels": ["a", "b", "c"]})
    loaded, config = load_checkpoint(tmp_path / "ckpt")
    assert config["labels"] == ["a", "b", "c"] and config["args"]["fusion"] == fusion
    torch.testing.assert_close(predict(loaded, data), logits)


def test_image_centering_is_fitted_saved_and_optional_in_old_checkpoints():
    images = torch.rand(40, 8) + 1.0  # non-negative like pooled CNN features: a shared offset
    model = ContinuousFusion(30, 8, 10, 3).center_images(images)
    torch.testing.assert_close(model.image_mean,
                               torch.nn.functional.normalize(images, dim=1).mean(0))
    # the model's image vectors are centered and unit length whatever the input's scale
    hidden = model.image_projection.weight.T
    x = torch.nn.functional.normalize(images[:3] - model.image_mean, dim=1)
    words, offsets = torch.zeros(0, dtype=torch.long), torch.zeros(3, dtype=torch.long)
    torch.testing.assert_close(model(words, offsets, 5 * images[:3]),
                               model.classifier(x @ hidden))
    # a checkpoint written before centering (no image_mean) loads with a zero mean
    state = {k: v for k, v in model.state_dict().items() if k != "image_mean"}
    old = ContinuousFusion(30, 8, 10, 3)
    old.load_state_dict(state)
    assert not old.image_mean.any()
    for bad in (torch.rand(0, 8), torch.rand(4, 7), torch.ones(4, 8, dtype=torch.long),
                torch.full((4, 8), float("nan"))):
        with pytest.raises(ValueError, match="center_images: images must be"):
            model.center_images(bad)


def test_one_vs_all_training_on_multilabel_targets():
    data = _toy_task()
    data.targets = torch.nn.functional.one_hot(data.targets, 3).float()
    model = FastText(30, 10, 3)
    train(model, data, epochs=8, lr=2.0, batch_size=16, loss="ova")
    assert (predict(model, data).argmax(1) == data.targets.argmax(1)).float().mean() > 0.9


def test_learning_rate_decays_linearly_to_zero(monkeypatch):
    seen = []
    original = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    with mmfast.backend("reference"):  # the minibatch path; the fused one has no optimizer
        train(FastText(30, 4, 3), _toy_task(n=40), epochs=2, lr=1.0, batch_size=10)
    torch.testing.assert_close(torch.tensor(seen), 1.0 - torch.arange(8) / 8.0,
                               check_dtype=False)


@pytest.mark.parametrize("model", ["text", "pq"])
def test_fused_training_is_per_example_sgd_decaying_to_zero(monkeypatch, model):
    calls = []
    original = mmfast.train.fasttext.fasttext_sgd_

    def fasttext_sgd_(*args, **kwargs):
        calls.append(args[7:9])  # lr_start, lr_end
        return original(*args, **kwargs)

    monkeypatch.setattr(mmfast.train.fasttext, "fasttext_sgd_", fasttext_sgd_)
    data = _toy_task()
    data.targets[:5] = -100  # unknown labels take no step, as cross_entropy ignores them
    if model == "text":
        net = FastText(30, 10, 3)
    else:
        data.image = data.image.argmax(1, keepdim=True)  # one image token per item
        net = DiscretizedFastText(30, 8, 10, 3, alpha=0.5)
    stats = train(net, data, epochs=4, lr=0.5)
    assert calls == [(0.5, 0.375), (0.375, 0.25), (0.25, 0.125), (0.125, 0.0)]
    assert stats["final_loss"] < 0.5
    keep = data.targets >= 0
    assert accuracy(predict(net, data)[keep], data.targets[keep]) > 0.9


def test_fused_training_of_short_epochs_is_the_same_every_run():
    """Hogwild threads race, so two runs differ; an epoch shorter than HOGWILD_MIN_EXAMPLES
    trains on one thread, and the same seed gives the same model however many threads torch
    has."""
    def trained(threads):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        net = FastText(30, 10, 3)
        train(net, _toy_task(n=4000), epochs=3, lr=0.5, seed=0)
        return net.state_dict()

    before = torch.get_num_threads()
    try:
        runs = [trained(threads) for threads in (2, 2, 1)]
    finally:
        torch.set_num_threads(before)
    for run in runs[1:]:
        for name, value in runs[0].items():
            assert torch.equal(value, run[name]), name


def test_load_checkpoint_rejects_unknown_models(tmp_path):
    (tmp_path / "config.json").write_text('{"model": "os.system", "args": {}}')
    with pytest.raises(ValueError, match="model must be one of"):
        load_checkpoint(tmp_path)


def _multilabel_task(n=600, labels=50, seed=0):
    """Each item has 2 or 3 of ``labels`` labels, each label one word of its own among shared
    noise words; a label's frequency falls with its index, so the prior ranks label 0 first."""
    generator = torch.Generator().manual_seed(seed)
    popularity = 1.0 / torch.arange(1, labels + 1).sqrt()
    targets = torch.zeros(n, labels)
    bags = []
    for row in range(n):
        chosen = torch.multinomial(popularity, int(torch.randint(2, 4, (1,),
                                                                 generator=generator)),
                                   generator=generator)
        targets[row, chosen] = 1.0
        noise = labels + torch.randint(20, (3,), generator=generator)
        bags.append(torch.cat([chosen, noise]))
    lengths = torch.tensor([len(bag) for bag in bags])
    return Examples(torch.cat(bags), torch.cumsum(lengths, 0) - lengths,
                    torch.randn(n, 8, generator=generator), targets)


def _prior_precision_at_1(train_targets, test_targets) -> float:
    prior = train_targets.mean(0).expand_as(test_targets).contiguous()
    return mmfast.metrics.precision_at_k(prior, test_targets, 1)


@pytest.mark.parametrize("model, backend", [("text", "fused"), ("text", "reference"),
                                            ("additive", "fused")])
def test_multilabel_training_beats_the_label_prior(model, backend):
    """One-vs-all as fastText's -loss ova, at fastText's learning rate: with the loss averaged
    over the 50 labels instead of summed, every model stayed at the prior's P@1."""
    train_data, test_data = _multilabel_task(seed=0), _multilabel_task(n=300, seed=1)
    net = (FastText(70, 20, 50) if model == "text"
           else ContinuousFusion(70, 8, 20, 50, fusion="additive"))
    with mmfast.backend(backend):
        train(net, train_data, epochs=10, lr=0.5, batch_size=8, loss="ova")
    precision = mmfast.metrics.precision_at_k(predict(net, test_data), test_data.targets, 1)
    prior = _prior_precision_at_1(train_data.targets, test_data.targets)
    assert precision > prior + 0.2, (precision, prior)


def test_demo_tags_text_model_beats_the_label_prior(tmp_path):
    """The demo's multi-label task (113 tags) with the text model's default recipe."""
    import numpy as np

    from mmfast.data import emoji_dataset, read_manifest
    data = emoji_dataset("tags", root=tmp_path)
    train_records, heldout = read_manifest(data.train), read_manifest(data.heldout)
    no_image = np.zeros((len(train_records), 1), np.float32)  # the text model reads no image
    trained = fit(Recipe.default("text", True), (train_records, no_image), data.labels, True)
    examples = trained.examples(heldout, np.zeros((len(heldout), 1), np.float32))
    precision = mmfast.metrics.precision_at_k(predict(trained.model, examples),
                                              examples.targets, 1)
    train_targets = trained.examples(train_records, no_image).targets
    prior = _prior_precision_at_1(train_targets, examples.targets)
    assert precision > prior + 0.15, (precision, prior)


def test_validation_keeps_the_best_epoch_and_patience_stops():
    data, valid = _toy_task(seed=0), _toy_task(n=90, seed=1)
    model = ContinuousFusion(30, 8, 10, 3, fusion="additive")
    stats = train(model, data, epochs=6, lr=1.0, batch_size=16, valid=valid)
    scores = [row["valid_accuracy"] for row in stats["history"]]
    assert len(scores) == 6 and all("train_accuracy" in row for row in stats["history"])
    # the last epoch within one validation item of the best
    kept = max(epoch for epoch, value in enumerate(scores, 1)
               if value >= max(scores) - 1 / len(valid) - 1e-9)
    assert stats["best_epoch"] == kept and stats["valid_score"] == scores[kept - 1]
    assert accuracy(predict(model, valid), valid.targets) == pytest.approx(scores[kept - 1])
    # a run that cannot improve (no validation item has a known label) stops after `patience`
    valid.targets[:] = -100
    stats = train(model, data, epochs=20, lr=1.0, valid=valid, patience=2)
    assert len(stats["history"]) == 3 and stats["best_epoch"] == 3


@pytest.mark.parametrize("tie, kept, epochs_run", [(0.0, 2, 5), (0.01, 4, 5), (0.2, 5, 5)])
def test_a_score_within_the_tie_of_the_best_keeps_the_later_epoch(tie, kept, epochs_run):
    """Scores 0.80, 0.81, 0.80, 0.80 (one item of 100 below the best), 0.70: with no tie the
    best epoch is kept, with a tie of one item the fourth (trained longer), with a wide one the
    last."""
    from mmfast.train.resume import Resumable
    from mmfast.train.selection import select_epochs, valid_tie

    model = torch.nn.Linear(1, 1, bias=False)
    scores = iter([0.80, 0.81, 0.80, 0.80, 0.70])

    def epoch_losses(done):
        for epoch in range(done + 1, 6):
            model.weight.data.fill_(epoch)  # the kept weights say which epoch they are
            yield 0.0

    stats = select_epochs(model, epoch_losses, 5, "accuracy", lambda: 0.0,
                          lambda: next(scores), 3, 1, 0.1, resumable=Resumable(None, model, []),
                          tie=tie)
    assert stats["best_epoch"] == kept and model.weight.item() == kept
    assert len(stats["history"]) == epochs_run
    assert valid_tie(100) > 0.01 and 0.80 >= 0.81 - valid_tie(100)  # one item, after rounding


def test_stop_epoch_ends_the_run_with_the_schedule_of_all_epochs():
    """A refit's run: stop_epoch 2 of 6 trains two epochs whose learning rate falls as in a
    six-epoch run, not as in a two-epoch one; without validation it keeps the last."""
    from mmfast.train.resume import Resumable
    from mmfast.train.selection import select_epochs

    model = torch.nn.Linear(1, 1, bias=False)
    ran = []

    def epoch_losses(done):
        for epoch in range(done + 1, 7):
            ran.append(epoch)
            yield 0.0

    stats = select_epochs(model, epoch_losses, 6, "accuracy", lambda: 0.0, None, None, 1, 0.1,
                          resumable=Resumable(None, model, []), stop_epoch=2)
    assert ran == [1, 2] and len(stats["history"]) == 2 and "best_epoch" not in stats
    with pytest.raises(ValueError, match=r"stop_epoch must be in \[1, epochs=6\] or None, "
                                         r"got 7"):
        select_epochs(model, epoch_losses, 6, "accuracy", lambda: 0.0, None, None, 1, 0.1,
                      resumable=Resumable(None, model, []), stop_epoch=7)
    data = _toy_task(seed=0)
    runs = {}
    for epochs, stop in ((6, 2), (2, None), (6, None)):
        torch.manual_seed(0)
        model = ContinuousFusion(30, 8, 10, 3, fusion="additive")
        stats = train(model, data, epochs=epochs, lr=1.0, batch_size=16, stop_epoch=stop)
        runs[epochs, stop] = (len(stats["history"]),
                              torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert runs[6, 2][0] == runs[2, None][0] == 2
    assert not torch.equal(runs[6, 2][1], runs[2, None][1])  # not a two-epoch schedule's
    assert not torch.equal(runs[6, 2][1], runs[6, None][1])


def test_divergence_keeps_the_best_epoch_or_raises():
    """A learning rate that blows the weights up ends the run at the last good epoch, or says
    so when there is none, instead of returning NaN scores."""
    data, valid = _toy_task(seed=0), _toy_task(n=90, seed=1)
    model = ContinuousFusion(30, 8, 10, 3, fusion="additive")
    with pytest.raises(ValueError, match=r"diverged at epoch 1 .*lr 1e\+30 is too high"):
        train(model, data, epochs=3, lr=1e30, batch_size=16)
    calls = []
    original = torch.optim.SGD.step

    def step(self, *args, **kwargs):  # sane for the first epoch's 15 steps, then blows up
        calls.append(None)
        if len(calls) > 15:
            for group in self.param_groups:
                group["lr"] = 1e30
        return original(self, *args, **kwargs)

    model = ContinuousFusion(30, 8, 10, 3, fusion="additive")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.SGD, "step", step)
        stats = train(model, data, epochs=4, lr=1.0, batch_size=16, valid=valid)
    assert stats["diverged_epoch"] == 2 and stats["best_epoch"] == 1
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_mlp_text_weights_are_tf_idf():
    """W1 x_t as a weighted sum bag equals W1 times scikit-learn's TfidfVectorizer(sublinear_tf=
    True) vector: smooth idf ln((1 + n) / (1 + df)) + 1, tf 1 + ln(count), rows L2-normalized."""
    from mmfast.nn import EarlyFusionMLP

    texts = [[0, 1, 1, 1], [1, 2], [3], []]
    words = torch.tensor([w for text in texts for w in text])
    offsets = torch.tensor([0, 4, 6, 7])
    model = EarlyFusionMLP(5, 3, 4, 2).fit_statistics(words, offsets, torch.rand(4, 3))
    df = torch.tensor([1.0, 2, 1, 1, 0])
    torch.testing.assert_close(model.idf, torch.log(5.0 / (1 + df)) + 1)
    dense = torch.zeros(4, 5)
    for row, text in enumerate(texts):
        for word in set(text):
            dense[row, word] = model.idf[word] * (1 + math.log(text.count(word)))
    dense = torch.nn.functional.normalize(dense, dim=1)
    got = torch.zeros(4, 5).index_put_(
        (model._document_of(words, offsets), words), model.text_weights(words, offsets),
        accumulate=True)
    torch.testing.assert_close(got, dense)


def test_mlp_learns_and_round_trips_through_a_checkpoint(tmp_path):
    records = [Record(f"i{n}", "", f"w{n % 3} filler{n % 5}", (f"c{n % 3}",)) for n in range(90)]
    generator = torch.Generator().manual_seed(0)
    image = (torch.nn.functional.one_hot(torch.arange(90) % 3, 6).float()
             + 0.3 * torch.rand(90, 6, generator=generator) + 1.0).numpy()
    trained = fit(Recipe.default("mlp", epochs=30, lr=1e-2, dim=32), (records, image),
                  ["c0", "c1", "c2"], multilabel=False)
    examples = trained.examples(records, image)
    logits = predict(trained.model, examples)
    assert accuracy(logits, examples.targets) > 0.95
    assert trained.model.idf.min() >= 1 and trained.model.image_mean.abs().sum() > 0
    trained.save(tmp_path / "ckpt")
    loaded = mmfast.systems.load(tmp_path / "ckpt")
    torch.testing.assert_close(predict(loaded.model, examples), logits)


@pytest.mark.parametrize("informative", ["text", "image"])
def test_auto_gate_keeps_the_modality_that_validates_better(informative):
    """Gated fusion passes one modality and gates it by the other: where only the text tells the
    classes apart it must pass the text (the image gates, gate "image"), and the other way."""
    generator = torch.Generator().manual_seed(0)
    classes = torch.arange(120) % 3
    texts = classes if informative == "text" else torch.randint(3, (120,), generator=generator)
    records = [Record(f"i{n}", "", f"w{int(texts[n])}", (f"c{int(classes[n])}",))
               for n in range(120)]
    shown = classes if informative == "image" else torch.randint(3, (120,), generator=generator)
    image = (torch.nn.functional.one_hot(shown, 6).float()
             + 0.2 * torch.rand(120, 6, generator=generator) + 1.0).numpy()
    # at lr 3 the wrong gate does not fit the task in 20 epochs (validation 0.77 against 1.0);
    # at the default 8 both fit it and tie
    recipe = Recipe.default("gated", dim=16, epochs=20, lr=3.0)
    assert recipe.gate == "auto"
    trained = fit(recipe, (records[:90], image[:90]), ["c0", "c1", "c2"], multilabel=False,
                  valid=(records[90:], image[90:]))
    assert trained.recipe.gate == ("image" if informative == "text" else "text")
    assert trained.model.gate == trained.recipe.gate
    examples = trained.examples(records[90:], image[90:])
    assert accuracy(predict(trained.model, examples), examples.targets) > 0.9
    # without a validation set there is nothing to choose by: the text gate
    assert fit(recipe, (records[:30], image[:30]), ["c0", "c1", "c2"], False).recipe.gate == "text"


def test_text_lr_scale_steps_the_text_table_alone_faster():
    """One full-batch SGD step: the text table moves text_lr_scale times as far, the dense
    weights as far as at scale 1."""
    generator = torch.Generator().manual_seed(0)
    examples = Examples(torch.randint(10, (30,), generator=generator),
                        torch.arange(0, 30, 3), torch.rand(10, 5, generator=generator),
                        torch.arange(10) % 3)
    moved = {}
    for scale in (1.0, 5.0):
        torch.manual_seed(0)
        model = ContinuousFusion(10, 5, 4, 3, fusion="bilinear")
        start = {name: value.clone() for name, value in model.state_dict().items()}
        train(model, examples, epochs=1, lr=0.1, batch_size=10, text_lr_scale=scale)
        moved[scale] = {name: (value - start[name]).abs().sum().item()
                        for name, value in model.state_dict().items()}
    assert moved[1.0]["embedding.weight"] > 0
    assert moved[5.0]["embedding.weight"] == pytest.approx(5 * moved[1.0]["embedding.weight"],
                                                           rel=1e-4)
    assert moved[5.0]["bilinear_weight"] == pytest.approx(moved[1.0]["bilinear_weight"],
                                                          rel=1e-4)
    with pytest.raises(ValueError, match="text_lr_scale must be a finite number > 0, got 0"):
        train(model, examples, text_lr_scale=0.0)


def test_auto_text_lr_scale_keeps_the_rate_that_validates_better():
    """text_lr_scale "auto" (bilinear's default) fits each of TEXT_LR_SCALES and keeps the one
    with the better validation score, the first on ties and without a validation set; the
    fastText models, whose one table steps at lr, train at 1 whatever the recipe says."""
    generator = torch.Generator().manual_seed(0)
    classes = torch.arange(120) % 3
    records = [Record(f"i{n}", "", f"w{int(classes[n])} r{n}", (f"c{int(classes[n])}",))
               for n in range(120)]
    image = (torch.rand(120, 6, generator=generator) + 1.0).numpy()
    labels, train, valid = ["c0", "c1", "c2"], (records[:90], image[:90]), (records[90:],
                                                                              image[90:])
    recipe = Recipe.default("bilinear", False, 3, dim=8, epochs=3)
    assert recipe.text_lr_scale == "auto" and Recipe.default("additive").text_lr_scale == 1.0
    scores = {scale: fit(replace(recipe, text_lr_scale=scale), train, labels, False,
                         valid).stats["valid_score"] for scale in TEXT_LR_SCALES}
    trained = fit(recipe, train, labels, False, valid)
    assert trained.recipe.text_lr_scale == max(TEXT_LR_SCALES, key=scores.__getitem__)
    assert trained.stats["valid_score"] == max(scores.values())
    assert fit(recipe, train, labels, False).recipe.text_lr_scale == TEXT_LR_SCALES[0]
    text = fit(Recipe.default("text", epochs=1, text_lr_scale="auto"), (records, None), labels,
               False)
    assert text.recipe.text_lr_scale == 1.0
    for bad in (0.0, -1.0, float("inf"), "fast"):
        with pytest.raises(ValueError, match="text_lr_scale must be a finite number > 0 or"):
            Recipe.default("bilinear", text_lr_scale=bad)


def test_bilinear_checkpoints_without_input_offsets_load_with_zero_offsets():
    model = ContinuousFusion(30, 7, 4, 3, fusion="bilinear")
    assert model.text_offset.abs().min() > 0 and model.image_offset.abs().min() > 0
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("_offset")}
    old = ContinuousFusion(30, 7, 4, 3, fusion="bilinear")
    old.load_state_dict(state)
    assert not old.text_offset.any() and not old.image_offset.any()


def test_load_checkpoint_builds_no_weights_it_overwrites(tmp_path):
    """load_checkpoint builds the model on the meta device and takes the saved tensors; a
    checkpoint of an older format, missing tensors the model defaults at load, is built again
    the usual way: no tensor of either is left on the meta device."""
    from mmfast._io import load_tensors, save_tensors_atomic

    model = ContinuousFusion(30, 7, 4, 3, fusion="bilinear")
    save_checkpoint(tmp_path / "new", model)
    loaded, _ = load_checkpoint(tmp_path / "new")
    state = loaded.state_dict()
    assert not any(t.is_meta for t in state.values())
    for name, tensor in model.state_dict().items():
        assert torch.equal(state[name], tensor), name
    save_checkpoint(tmp_path / "old", model)
    weights = tmp_path / "old" / "model.safetensors"
    save_tensors_atomic(weights, {k: v for k, v in load_tensors(weights).items()
                                  if not k.endswith("_offset") and k != "image_mean"})
    old, _ = load_checkpoint(tmp_path / "old")
    assert not any(t.is_meta for t in old.state_dict().values())
    assert not old.text_offset.any() and not old.image_mean.any()
    torch.testing.assert_close(old.bilinear_weight, model.bilinear_weight)


def test_an_embedding_table_larger_than_memory_is_refused_before_allocation(monkeypatch):
    records = [Record(f"i{n}", "", f"w{n}", ("c",)) for n in range(4)]
    image = np.zeros((4, 3), np.float32)

    def machine(gib):
        monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096,
                                                         "SC_PHYS_PAGES": gib * 2**18}[name])

    machine(64)  # the mlp's 2M bigram buckets x 2048 under Adam: 48 GiB
    with pytest.raises(ValueError, match=r"embedding table \(2,000,0[0-9,]+ rows = vocabulary "
                                         r"\+ buckets 2,000,000, x dim 2048\) needs 4[0-9.]+ GiB, "
                                         r"more than half this machine's 64.0 GiB"):
        fit(Recipe.default("mlp", ngrams=2, buckets=2_000_000, dim=2048, epochs=1),
            (records, image), ["c"], False)
    machine(4)  # fastText's table, SGD: 2.2 GiB
    with pytest.raises(ValueError, match="more than half this machine's 4.0 GiB"):
        fit(Recipe.default("text", ngrams=2, buckets=2_000_000, dim=300), (records, None),
            ["c"], False)
    fit(Recipe.default("text", ngrams=2, buckets=1_000_000, dim=300, epochs=1), (records, None),
        ["c"], False)


def test_learning_rate_follows_the_label_count():
    """Single-label text models step 0.13 sqrt(K) within [0.7, 1.3], bilinear ones 0.05 sqrt(K)
    within [0.2, 0.5]; multi-label ones and explicit learning rates are left alone."""
    lrs = [Recipe.default("text", False, k).lr for k in (2, 9, 25, 50, 99, 1000)]
    assert lrs == pytest.approx([0.7, 0.7, 0.7, 0.13 * 50 ** 0.5, 0.13 * 99 ** 0.5, 1.3])
    lrs = [Recipe.default("bilinear", False, k).lr for k in (2, 11, 36, 99, 1000)]
    assert lrs == pytest.approx([0.2, 0.2, 0.3, 0.05 * 99 ** 0.5, 0.5])
    assert Recipe.default("text", True, 99).lr == Recipe.default("text", True).lr == 0.4
    assert Recipe.default("bilinear", True, 99).lr == Recipe.default("bilinear").lr == 0.2
    assert Recipe.default("text", False, 99, lr=0.3).lr == 0.3
    assert Recipe.default("pq", False, 99).lr == Recipe.default("pq").lr


def test_max_steps_larger_on_single_label_tasks():
    """The max fusion trains at lr 8 on single-label tasks and keeps the other fusions' 3 on
    multi-label ones, where 10 collapsed the tags."""
    assert Recipe.default("max").lr == Recipe.default("max", False, 99).lr == 8.0
    assert Recipe.default("max", True, 113).lr == Recipe.default("additive", True, 113).lr == 3.0
    assert Recipe.default("max", True, 113).epochs == 80


def test_multilabel_text_reads_bigrams():
    assert Recipe.default("text", True, 113).ngrams == 2
    assert Recipe.default("text", False, 99).ngrams == Recipe.default("pq", True).ngrams == 1


def test_bilinear_widens_on_many_labels():
    """Bilinear trains dim 100 for 80 epochs from MANY_LABELS labels on, single- and
    multi-label, and keeps dim 50 below; explicit settings win."""
    assert (Recipe.default("bilinear", False, 99).dim, Recipe.default("bilinear", False, 99).epochs
            ) == (100, 80)
    assert Recipe.default("bilinear", True, 113).dim == 100
    assert Recipe.default("bilinear", False, 10).dim == Recipe.default("bilinear").dim == 50
    assert Recipe.default("bilinear", False, 99, dim=20).dim == 20
    assert Recipe.default("additive", False, 99).dim == Recipe.default("additive").dim


def test_rspq_weighs_its_image_tokens_more_on_many_labels():
    """RSPQ trains alpha 3 for 60 epochs from MANY_LABELS labels on, and keeps alpha 2 and 30
    epochs below, where the image tokens' weight is the data's; PQ keeps its recipe."""
    for multilabel, labels in ((False, 99), (True, 113)):
        recipe = Recipe.default("rspq", multilabel, labels)
        assert (recipe.alpha, recipe.epochs) == (3.0, 60)
    assert (Recipe.default("rspq", False, 10).alpha, Recipe.default("rspq", False, 10).epochs
            ) == (Recipe.default("rspq").alpha, Recipe.default("rspq").epochs) == (2.0, 30)
    assert Recipe.default("pq", False, 99).alpha == Recipe.default("pq").alpha


def test_image_only_weight_decay_follows_the_label_count():
    """The image-only model's L2 penalty is 0.03 / K, single- and multi-label; the fusions keep
    theirs, and an explicit penalty is left alone."""
    assert Recipe.default("continuous", False, 10).weight_decay == pytest.approx(3e-3)
    assert Recipe.default("continuous", True, 100).weight_decay == pytest.approx(3e-4)
    assert Recipe.default("continuous", True, 100).epochs == Recipe.default("continuous",
                                                                           True).epochs
    assert Recipe.default("continuous", False, 10, weight_decay=0.0).weight_decay == 0.0
    assert Recipe.default("additive", False, 10).weight_decay == Recipe.default("additive"
                                                                                ).weight_decay
