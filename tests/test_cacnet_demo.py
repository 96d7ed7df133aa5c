"""Paper 000's Table 4 pipeline (mmfast.train.cacnet_demo) on a slice of the emoji tags task, with
random image features in place of the EfficientNet extraction (its PCA: tests/test_features.py)."""

import numpy as np
import torch

from mmfast.data import emoji_dataset, read_manifest
from mmfast.train.cacnet_demo import HASHTAG_METRICS, cacnet_features, table4


def test_table4_pipeline_on_a_slice_of_the_tags_task(tmp_path):
    data = emoji_dataset("tags", root=tmp_path)
    assert data.multilabel
    train, heldout = read_manifest(data.train)[::10], read_manifest(data.heldout)[::10]
    rng = np.random.default_rng(0)
    image_dim = 1280  # EfficientNet-Lite0's pooled features
    features = cacnet_features(
        train, heldout, rng.standard_normal((len(train), image_dim), dtype=np.float32),
        rng.standard_normal((len(heldout), image_dim), dtype=np.float32), data.labels, dim=16,
    )
    for split, records in ((features.train, train), (features.heldout, heldout)):
        assert split.image.shape == split.text.shape == (len(records), 16)
        assert split.targets.shape == (len(records), len(data.labels))
        assert torch.equal(split.targets.sum(1), torch.tensor([float(len(r.labels))
                                                               for r in records]))
    assert features.heldout_oov > 0  # held-out words the train split never saw

    epochs = 5
    rows = table4(features, epochs, hidden=16, lr=0.1)
    assert set(rows) == {"CACNet", "CACNet(gamma=1)", "MLP"}
    steps = epochs * -(-len(train) // 20)
    assert rows["CACNet"]["steps"] == rows["CACNet(gamma=1)"]["steps"] == steps
    assert rows["CACNet(gamma=1)"]["case2_steps"] == 0
    for row in rows.values():
        assert all(0.0 <= row[name] <= 1.0 for name, _, _ in HASHTAG_METRICS)
        assert row["Acc@1"] <= row["Acc@3"] <= row["Acc@5"]
    # fixed seeds: the same run gives the same table
    assert table4(features, epochs, hidden=16, lr=0.1) == rows
