"""Paper 004's Table IV on the demo data (``mmfast demo --paper 004``): AnANet and its
ablations (alignment only, association only, concatenation) trained as the ``ananet*``
systems on the emoji relevance task (``mmfast.data.relevance_records``: each image with its own
caption, a same-group caption and an other-group caption), held-out accuracy and weighted F1.

Regions are the 4 x 4 cells of EfficientNet-Lite0's last feature map at 128 px, words Word2Vec
vectors trained on the training captions (the paper's Faster R-CNN and BERT cannot be had
offline, so the comparable rows of the paper are its "-BERT" ones). Every image comes with all
three classes, so only a variant that compares the two sides can beat chance."""

import time

from mmfast import metrics, systems
from mmfast.data import (RELEVANCE_LABELS, demo_cache_dir, emoji_dataset, read_manifest,
                         relevance_records, split_records)
from mmfast.defaults import ANANETS, REGION_IMAGE_SIZE
from mmfast.experiments import ordering
from mmfast.features import GridRegionFeatureExtractor, image_store, store_features

# Paper 004, Table IV, the rows without BERT: (accuracy, weighted F1) in percent.
PAPER = {"ananet": (81.58, 81.09), "ananet_alignment": (80.87, 79.49),
         "ananet_association": (81.18, 80.09), "ananet_concat": (81.28, 80.18)}


def run(epochs: int | None = None, patience: int | None = 3, device=None) -> dict[str, dict]:
    """Print the table (the systems trained on ``device``); returns each system's held-out
    report."""
    data = emoji_dataset("group")
    train = relevance_records(read_manifest(data.train))
    heldout = relevance_records(read_manifest(data.heldout))
    start = time.perf_counter()
    store = image_store(train + heldout,
                        demo_cache_dir() / f"relevance-regions-grid-lite0-{REGION_IMAGE_SIZE}",
                        GridRegionFeatureExtractor(REGION_IMAGE_SIZE))
    print(f"paper 004 (AnANet) on {len(train)} + {len(heldout)} held-out emoji image-caption "
          f"pairs, classes {', '.join(RELEVANCE_LABELS)}; regions: 4 x 4 EfficientNet-Lite0 "
          f"cells ({time.perf_counter() - start:.1f} s)")
    fit_records, valid_records = split_records(train, 0.1, seed=0)
    fit_inputs = (fit_records, store_features(store, fit_records))
    valid_inputs = (valid_records, store_features(store, valid_records))
    heldout_image = store_features(store, heldout)
    labels = list(RELEVANCE_LABELS)
    print(f"{'system':<20}{'accuracy':>9}{'F1 w.':>8}{'valid':>7}{'epoch':>6}{'train s':>9}"
          f" | {'paper acc':>9}{'F1':>7}")
    reports = {}
    for name in ANANETS:
        system = systems.get(name)
        overrides = {"patience": patience, **({"epochs": epochs} if epochs else {})}
        trained = system.fit(system.default_recipe(**overrides), fit_inputs, labels, False,
                             valid_inputs, device=device)
        report = reports[name] = metrics.classification_report(
            trained.logits(heldout, heldout_image), trained.targets(heldout), False)
        stats = trained.stats
        print(f"{name:<20}{report['accuracy']:>9.3f}{report['f1_weighted']:>8.3f}"
              f"{stats['valid_score']:>7.3f}{stats['best_epoch']:>6}{stats['seconds']:>9.1f}"
              f" | {PAPER[name][0] / 100:>9.3f}{PAPER[name][1] / 100:>7.3f}")
    print(f"chance: {max(report['per_class']['support']) / report['items']:.3f} (the largest "
          "class); the paper's figures are on its own data")
    accuracy = {name: report["accuracy"] for name, report in reports.items()}
    print(ordering("AnANet (both nets) beats each ablation",
                   max(accuracy, key=accuracy.get) == "ananet"))
    return reports
