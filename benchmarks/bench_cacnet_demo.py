"""Paper 000's Table 4 on the demo data: CACNet vs CACNet(gamma=1) vs a plain MLP of the same size
(600-600 hidden, sigmoid outputs, BCE) on the emoji ``tags`` task (multi-label), held-out P@1, R@5,
Acc@1, Acc@3, Acc@5.

    pytest benchmarks/bench_cacnet_demo.py -s

Inputs: EfficientNet-Lite0 image features (the demo's cached store; extracted on first use)
reduced to 300-d by a PCA fitted on the train split, and the weighted average of Word2Vec
vectors trained on the train split's text (DESIGN 3.2). SGD, batch 20 (the paper's), fixed
seeds, one thread; the gamma schedule is the paper's (0.4, then up to 0.8 over the last 100
of 500 epochs) scaled to ``EPOCHS``: the ramp is the last fifth.
"""

import time

from mmfast.train.cacnet_demo import HASHTAG_METRICS, cacnet_features, table4
from mmfast.features import demo_features

EPOCHS = 100
LR = 0.1


# One thread: batch-20 GEMMs gain nothing from a second one, and it leaves the other core free.
def test_table4_on_emoji_tags(one_thread):
    start = time.perf_counter()
    data, train, heldout, train_image, heldout_image = demo_features("tags")
    features = cacnet_features(train, heldout, train_image, heldout_image, data.labels)
    rows = table4(features, EPOCHS, lr=LR)

    print(f"\nemoji tags: {len(train)} train / {len(heldout)} held-out items, "
          f"{len(data.labels)} tags ({features.train.targets.sum(1).mean():.2f} per item), "
          f"{features.heldout_oov} held-out word occurrences out of vocabulary; "
          f"{EPOCHS} epochs, batch 20, SGD lr {LR}")
    names = [name for name, _, _ in HASHTAG_METRICS]
    print(f"{'model':<16}" + "".join(f"{name:>8}" for name in names) + f"{'case 2':>16}")
    for model, row in rows.items():
        case2 = (f"{row['case2_steps']}/{row['steps']}" if "steps" in row else "-")
        print(f"{model:<16}" + "".join(f"{100 * row[name]:>7.2f}%" for name in names)
              + f"{case2:>16}")
    print(f"total {time.perf_counter() - start:.1f} s, one thread")
    assert rows["CACNet(gamma=1)"]["case2_steps"] == 0
