"""PCA: reduce features to their leading principal components (DESIGN 3.2 reduces CNN image
features to CACNet's 300-d input this way), optionally whitened (DESIGN 3.3 whitens the visual
words histogram to 200-d). Fit on the training split only, then apply the same map to every
split, so no held-out statistics leak into training."""

from collections.abc import Callable

import numpy as np
import torch


class PCA:
    """``pca(x)`` -> ``(x - mean) @ components.T`` [N, dim]; ``components`` [dim, D] are the
    orthonormal directions of largest variance, the first one first, each divided by the
    deviation along it when fitted with ``whiten``."""

    def __init__(self, mean: np.ndarray, components: np.ndarray):
        if mean.ndim != 1 or components.ndim != 2 or components.shape[1] != mean.shape[0]:
            raise ValueError(f"PCA: mean must have shape [D] and components [dim, D], got "
                             f"{mean.shape} and {components.shape}")
        self.mean, self.components = mean, components

    @property
    def dim(self) -> int:
        return self.components.shape[0]

    @classmethod
    def fit(cls, x: np.ndarray, dim: int, whiten: bool = False, eps: float = 1e-6,
            total: Callable[[torch.Tensor], torch.Tensor] | None = None) -> "PCA":
        """The ``dim`` leading principal components of ``x`` [N, D]; dim <= min(N, D).

        ``whiten``: component k is divided by ``sqrt(variance_k + eps * variance_1)`` (variances
        along the components, ddof 1, the largest first), so the projected fit split has
        identity covariance. ``eps`` is relative to the largest variance, so the result does not
        depend on the scale of ``x``; it keeps a component of (near) zero variance, such as the
        one lost to the fixed sum of l1-normalized histograms (frequencies), from amplifying
        rounding noise. l2-normalized histograms (``BagOfVisualWords``' default) have a fixed
        length instead, which leaves no such linear direction in general.

        ``total``: when ``x`` is one share of a split that several processes hold (torchrun,
        ``mmfast train --rank-data share``), the sum over the processes
        (``distributed.global_sum``): the components are then the whole split's, the
        eigenvectors of its scatter matrix summed from every share's (float64), instead of
        the SVD of ``x`` itself.
        """
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"PCA.fit: x must have shape [N, D], got {x.shape}")
        reduce = total or (lambda tensor: tensor)
        rows = int(reduce(torch.tensor(x.shape[0])))
        if not 1 <= dim <= min(rows, x.shape[1]):
            raise ValueError(f"PCA.fit: dim must be in [1, min(N, D) = {min(rows, x.shape[1])}]"
                             f" for x of {rows} rows of {x.shape[1]}, got {dim}")
        if eps < 0:
            raise ValueError(f"PCA.fit: eps must be >= 0, got {eps}")
        if total is None:
            mean = x.mean(axis=0)
            _, singular_values, vt = np.linalg.svd(x - mean, full_matrices=False)
            components, variances = vt[:dim], singular_values[:dim] ** 2
        else:
            mean = total(torch.from_numpy(x.sum(axis=0))).numpy() / rows
            centered = x - mean
            scatter = total(torch.from_numpy(centered.T @ centered)).numpy()
            eigenvalues, eigenvectors = np.linalg.eigh(scatter)  # ascending
            components = eigenvectors[:, ::-1][:, :dim].T.copy()
            variances = np.maximum(eigenvalues[::-1][:dim], 0.0)
        variances = variances / max(rows - 1, 1)
        # A component's sign is arbitrary and LAPACK builds may differ: make each one's largest
        # loading positive so the projection is reproducible.
        largest = np.abs(components).argmax(axis=1)
        components *= np.sign(components[np.arange(dim), largest])[:, None]
        if whiten:
            if variances[0] == 0:
                raise ValueError(f"PCA.fit: x must vary to be whitened, but its {rows} "
                                 "rows are all equal")
            components /= np.sqrt(variances + eps * variances[0])[:, None]
        return cls(mean.astype(np.float32), components.astype(np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"PCA: x must have shape [N, {self.mean.shape[0]}], got {x.shape}")
        return (x - self.mean) @ self.components.T
