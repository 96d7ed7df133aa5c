"""Product quantization (PQ) and random-sample PQ (RSPQ) as ``torch.nn.Module`` s.

PQ splits a D-vector into M sub-vectors and codes each by its nearest of C centroids. RSPQ
(Kiela et al., paper 003) repeats this R times on randomly permuted dimensions, so each vector
gets R*M codes; decoding averages the R reconstructions. Codes become classifier tokens with
``token = (r*M + m) * C + code`` (DESIGN 2.1), one embedding table of R*M*C rows for all.
"""

import json
import os
from pathlib import Path

import torch
from torch import nn

from mmfast._io import load_tensors, save_tensors_atomic, write_text_atomic
from mmfast.ops._checks import check_ids
from mmfast.ops.pq_encode import pq_encode
from mmfast.quant.kmeans import train_subspace_codebooks

_CONFIG = "config.json"
_WEIGHTS = "quantizer.safetensors"


class ProductQuantizer(nn.Module):
    """PQ of ``dim``-vectors into ``num_subvectors`` codes of ``num_centroids`` (2 to 65536)."""

    def __init__(self, dim: int, num_subvectors: int, num_centroids: int = 256, seed: int = 0):
        super().__init__()
        self._init(dim, num_subvectors, num_centroids, 1, seed)

    def _init(self, dim, num_subvectors, num_centroids, repetitions, seed) -> None:
        name = type(self).__name__
        for arg, value, low in (
            ("dim", dim, 1),
            ("num_subvectors", num_subvectors, 1),
            ("num_centroids", num_centroids, 2),
            ("repetitions", repetitions, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: {arg} must be an integer >= {low}, got {value!r}")
        if num_centroids > 65536:
            raise ValueError(f"{name}: num_centroids must be at most 65536, got {num_centroids}")
        if dim % num_subvectors != 0:
            raise ValueError(
                f"{name}: dim={dim} must be divisible by num_subvectors={num_subvectors}"
            )
        self.dim = dim
        self.num_subvectors = num_subvectors
        self.num_centroids = num_centroids
        self.repetitions = repetitions
        self.seed = seed
        self.dsub = dim // num_subvectors
        subspaces = repetitions * num_subvectors
        self.register_buffer("codebooks", torch.zeros(subspaces, num_centroids, self.dsub))
        self.register_buffer("perm", self._make_perm())
        self.register_buffer("fitted", torch.tensor(False))

    def _make_perm(self) -> torch.Tensor | None:
        return None  # PQ slices dimensions in order; RSPQ overrides with random permutations

    @property
    def num_subspaces(self) -> int:
        return self.repetitions * self.num_subvectors

    @property
    def num_tokens(self) -> int:
        """Rows of the embedding table that holds every image token."""
        return self.num_subspaces * self.num_centroids

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_subvectors={self.num_subvectors}, "
            f"num_centroids={self.num_centroids}, repetitions={self.repetitions}"
        )

    # ---- training
    def fit(
        self,
        x: torch.Tensor,
        iters: int = 25,
        max_points_per_centroid: int = 256,
        init: str = "random",
    ) -> "ProductQuantizer":
        """Train every subspace's codebook by k-means on ``x`` [N, dim]; returns self."""
        self._check_vectors("x", x)
        books = []
        for r in range(self.repetitions):
            xr = x if self.perm is None else x[:, self.perm[r]]
            books.append(
                train_subspace_codebooks(
                    xr,
                    self.num_subvectors,
                    self.num_centroids,
                    iters=iters,
                    seed=self.seed + r,
                    max_points_per_centroid=max_points_per_centroid,
                    init=init,
                )
            )
        self.codebooks.copy_(torch.cat(books).to(self.codebooks.device))
        self.fitted.fill_(True)
        return self

    # ---- coding
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes [B, R*M] of ``x`` [B, dim] (uint8 for C <= 256, int16 up to 32768, else int32)."""
        self._check_fitted()
        self._check_vectors("x", x)
        if not x.is_floating_point() or x.dtype == torch.float64:
            x = x.float()
        return pq_encode(x, self.codebooks, self.perm)

    forward = encode

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Reconstruction [B, dim] from codes [B, R*M]; RSPQ averages its repetitions."""
        self._check_fitted()
        self._check_codes(codes)
        subspace = torch.arange(self.num_subspaces, device=codes.device)
        parts = self.codebooks[subspace, codes.long()]  # [B, R*M, dsub]
        per_rep = parts.reshape(codes.shape[0], self.repetitions, self.dim)  # permuted order
        if self.perm is None:
            return per_rep[:, 0]
        out = torch.zeros_like(per_rep)
        out.scatter_(2, self.perm.expand(codes.shape[0], -1, -1), per_rep)  # undo permutations
        return out.mean(1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Image tokens [B, R*M] (int64) of ``x``: ``(r*M + m) * C + code``, ids into one
        embedding table of ``num_tokens`` rows."""
        codes = self.encode(x).long()
        offsets = torch.arange(self.num_subspaces, device=codes.device) * self.num_centroids
        return codes + offsets

    def reconstruction_error(self, x: torch.Tensor) -> float:
        """Mean squared error per vector, relative to the mean squared norm of ``x``."""
        x = x.float()
        error = ((self.decode(self.encode(x)) - x) ** 2).sum(1).mean()
        return float(error / (x**2).sum(1).mean().clamp(min=1e-30))

    # ---- checkpoints: safetensors weights + JSON config, written atomically
    def config(self) -> dict:
        return {
            "kind": type(self).__name__,
            "dim": self.dim,
            "num_subvectors": self.num_subvectors,
            "num_centroids": self.num_centroids,
            "repetitions": self.repetitions,
            "seed": self.seed,
        }

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``quantizer.safetensors`` into ``directory``. Each file is
        written atomically; an existing config.json is removed first and the new one written
        last, so a directory with a config.json holds a complete quantizer, also after a crash
        while overwriting an earlier save."""
        self._check_fitted()
        directory = Path(directory)
        (directory / _CONFIG).unlink(missing_ok=True)
        tensors = {"codebooks": self.codebooks}
        if self.perm is not None:
            tensors["perm"] = self.perm
        save_tensors_atomic(directory / _WEIGHTS, tensors)
        write_text_atomic(directory / _CONFIG, json.dumps(self.config(), indent=2) + "\n")

    @staticmethod
    def load(directory: str | os.PathLike, map_location="cpu") -> "ProductQuantizer":
        """A ``ProductQuantizer`` or ``RSPQ`` saved by ``save``; never unpickles anything."""
        directory = Path(directory)
        try:
            config = json.loads((directory / _CONFIG).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"load: {directory / _CONFIG} is not JSON ({error})") from None
        if not isinstance(config, dict):
            raise ValueError(f"load: {directory / _CONFIG} must be a JSON object, got "
                             f"{type(config).__name__}")
        kinds = {"ProductQuantizer": ProductQuantizer, "RSPQ": RSPQ}
        kind = config.pop("kind", None)
        if kind not in kinds:
            raise ValueError(f"load: {directory / _CONFIG} names an unknown kind {kind!r}, "
                             f"expected one of {sorted(kinds)}")
        if kind == "ProductQuantizer":
            config.pop("repetitions", None)
        try:
            quantizer = kinds[kind](**config)
        except TypeError as error:
            raise ValueError(f"load: {directory / _CONFIG} does not describe a {kind} "
                             f"({error})") from None
        tensors = load_tensors(directory / _WEIGHTS)
        expected = {"codebooks"} | ({"perm"} if quantizer.perm is not None else set())
        if not expected <= set(tensors):
            raise ValueError(f"load: {directory / _WEIGHTS} must hold {sorted(expected)}, got "
                             f"{sorted(tensors)}")
        if tuple(tensors["codebooks"].shape) != tuple(quantizer.codebooks.shape):
            raise ValueError(
                f"load: codebooks in {directory / _WEIGHTS} have shape "
                f"{tuple(tensors['codebooks'].shape)}, the config expects "
                f"{tuple(quantizer.codebooks.shape)}"
            )
        quantizer.codebooks.copy_(tensors["codebooks"])
        if quantizer.perm is not None:
            if tensors["perm"].shape != quantizer.perm.shape:
                raise ValueError(f"load: perm in {directory / _WEIGHTS} has shape "
                                 f"{tuple(tensors['perm'].shape)}, the config expects "
                                 f"{tuple(quantizer.perm.shape)}")
            quantizer.perm.copy_(tensors["perm"])
        quantizer.fitted.fill_(True)
        return quantizer.to(map_location)

    # ---- checks
    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError(
                f"{type(self).__name__} is not trained: call fit(x) or load(directory) first"
            )

    def _check_vectors(self, name: str, x) -> None:
        cls = type(self).__name__
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{cls}: {name} must have shape [N, {self.dim}], got {shape}")
        if x.device != self.codebooks.device:
            raise ValueError(
                f"{cls}: {name} is on {x.device} but the codebooks are on "
                f"{self.codebooks.device}; move one with .to()"
            )

    def _check_codes(self, codes) -> None:
        cls = type(self).__name__
        if not isinstance(codes, torch.Tensor) or codes.dim() != 2 or (
            codes.shape[1] != self.num_subspaces
        ):
            shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(f"{cls}: codes must have shape [B, {self.num_subspaces}], got {shape}")
        if codes.is_floating_point() or codes.is_complex():
            raise TypeError(f"{cls}: codes must be an integer tensor, got {codes.dtype}")
        check_ids(cls, "codes must be", codes, self.num_centroids)


class RSPQ(ProductQuantizer):
    """Random-sample PQ: ``repetitions`` PQs, each on its own random permutation of the
    dimensions (seeded), giving R*M codes per vector; decode averages the repetitions."""

    def __init__(
        self,
        dim: int,
        num_subvectors: int,
        num_centroids: int = 256,
        repetitions: int = 4,
        seed: int = 0,
    ):
        nn.Module.__init__(self)
        self._init(dim, num_subvectors, num_centroids, repetitions, seed)

    def _make_perm(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.stack(
            [torch.randperm(self.dim, generator=generator) for _ in range(self.repetitions)]
        )
