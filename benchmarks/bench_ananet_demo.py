"""Paper 004's Table IV on the embedded emoji data: AnANet against association-only,
alignment-only and concatenation, held-out accuracy and weighted F1 on a 3-class image-text
relevance task (``mmfast.data.relevance_pairs``: own caption / same-group caption /
other-group caption).

    .venv/bin/python -m pytest benchmarks/bench_ananet_demo.py -s

Inputs (the paper's Faster R-CNN and BERT cannot be had offline):
- regions: the 4 x 4 cells of EfficientNet-Lite0's last convolutional map at 128 px (ImageNet
  weights shipped with mmfast), Kr = 16 regions of 1280-d, cached in a feature store;
- words: Word2Vec trained on the train split's captions only (held-out words it never saw are
  out of vocabulary, as they would be for a deployed model), N = 8, no contextual vectors, so the
  comparable rows of Table IV are the "-BERT" ones (2, 4, 6, 8).
Every variant has the same encoders, seeds, epochs and data order; there is no validation split,
so the epoch count is fixed in advance rather than tuned on the held-out pairs.

What to expect: the captions are 1-3 words, and about a third of the held-out captions share no
word with the train vocabulary (the run prints the count), so many held-out pairs carry no text
at all; and since every image is paired with all three classes, only a variant that compares the
two sides (the alignment net) has a signal to learn. The ordering differs from the paper's.
"""

import time

import numpy as np
import pytest
import torch

from mmfast.data import (RELEVANCE_LABELS, demo_cache_dir, emoji_dataset, read_manifest,
                         relevance_pairs)
from mmfast.features import GridRegionFeatureExtractor, WordVectors, token_vectors
from mmfast.nn.ananet import VARIANTS, AnANet
from mmfast.train import AnANetTrainer, relevance_features
from mmfast.features import image_store

SEED = 0
IMAGE_SIZE = 128  # the emoji are 72 x 72; 128 px gives a 4 x 4 grid of cells
NUM_WORDS = 8  # longer than 99% of the captions
WORD_DIM = 50
EPOCHS = 20
MODEL = dict(num_classes=len(RELEVANCE_LABELS), num_words=NUM_WORDS, word_dim=WORD_DIM,
             context_dim=0, hidden_dim=128, inv_dim=64)
# Paper 004, Table IV, the rows without BERT: (accuracy, weighted F1) in percent.
PAPER = {"full": (81.58, 81.09), "alignment": (80.87, 79.49), "association": (81.18, 80.09),
         "concat": (81.28, 80.18)}
NAMES = {"full": "AnANet", "association": "association only", "alignment": "alignment only",
         "concat": "concatenation"}


@pytest.fixture(scope="module")
def relevance():
    data = emoji_dataset("group")
    train, heldout = read_manifest(data.train), read_manifest(data.heldout)
    extractor = GridRegionFeatureExtractor(IMAGE_SIZE)
    store = image_store(train + heldout, demo_cache_dir() / f"regions-grid-lite0-{IMAGE_SIZE}",
                        extractor)
    vectors = WordVectors.train([record.text for record in train], dim=WORD_DIM, seed=SEED)
    _, lengths, oov = token_vectors([record.text for record in heldout], vectors, NUM_WORDS)
    print(f"\nheld-out captions: {oov} word occurrences out of the train vocabulary, "
          f"{int((lengths == 0).sum())} of {len(heldout)} captions left without any word")
    features = {split: relevance_features(relevance_pairs(records, SEED), store, vectors,
                                          NUM_WORDS)
                for split, records in (("train", train), ("heldout", heldout))}
    return features, extractor.num_regions


def test_ananet_ablation_table(relevance, two_threads):
    features, num_regions = relevance
    counts = np.bincount(features["heldout"]["labels"].numpy(), minlength=len(RELEVANCE_LABELS))
    print(f"held-out pairs: {len(features['heldout']['labels'])} "
          f"({', '.join(f'{n} {c}' for n, c in zip(RELEVANCE_LABELS, counts))}); "
          f"train pairs: {len(features['train']['labels'])}; {EPOCHS} epochs, "
          f"{two_threads} threads")
    print(f"{'method':<18} {'Acc':>6} {'F1':>6} {'dAcc':>6} {'dF1':>6} "
          f"{'F1 per class (' + ' / '.join(RELEVANCE_LABELS) + ')':>44} {'train s':>8} | "
          f"{'paper Acc':>9} {'F1':>6}")
    results = {}
    for variant in VARIANTS:  # "full" first: the others' deltas are to it
        torch.manual_seed(SEED)
        model = AnANet(num_regions=num_regions, region_dim=features["train"]["regions"].shape[2],
                       variant=variant, **MODEL)
        trainer = AnANetTrainer(model)
        start = time.perf_counter()
        trainer.fit(features["train"], EPOCHS, generator=torch.Generator().manual_seed(SEED))
        seconds = time.perf_counter() - start
        scores = results[variant] = trainer.evaluate(features["heldout"])
        accuracy, f1 = 100 * scores["accuracy"], 100 * scores["f1_weighted"]
        per_class = " / ".join(f"{100 * value:.1f}" for value in scores["f1_per_class"])
        full = results["full"]
        print(f"{NAMES[variant]:<18} {accuracy:>6.2f} {f1:>6.2f} "
              f"{accuracy - 100 * full['accuracy']:>+6.2f} {f1 - 100 * full['f1_weighted']:>+6.2f} "
              f"{per_class:>44} {seconds:>8.1f} | {PAPER[variant][0]:>9.2f} "
              f"{PAPER[variant][1]:>6.2f}")
    # Each image comes with all three classes, so the class lies in the pairing alone: a variant
    # whose only view of the two sides is a linear head on [image vector, text vector]
    # (association only, concatenation) adds an image score to a text score and has next to no
    # signal to learn, while the alignment net compares regions with words and must beat chance.
    chance = counts.max() / counts.sum()
    assert results["alignment"]["accuracy"] > chance
