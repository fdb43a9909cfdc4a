"""The PyTorch tabular model: preprocessing (imputation, signed log, standardisation) inside the network,
an embedding per categorical feature, and an MLP head that returns the logit of the positive class.

Preprocessing lives in the module so that the exported program takes raw numeric values: the statistics
are buffers, exported with the weights, and serving cannot drift from training.
"""

from __future__ import annotations

import torch
from torch import nn


class TabularNet(nn.Module):
    # buffers (register_buffer), declared for type checkers
    means: torch.Tensor
    stds: torch.Tensor

    def __init__(
        self,
        means: torch.Tensor,
        stds: torch.Tensor,
        cardinalities: list[int],
        embedding_dim: int = 8,
        hidden: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.register_buffer("means", means.to(torch.float32))
        self.register_buffer("stds", stds.to(torch.float32).clamp_min(1e-6))
        self.n_numeric = int(means.numel())
        # One row per category plus row 0 for unseen or missing values.
        embeddings = [nn.Embedding(c + 1, min(embedding_dim, c + 1)) for c in cardinalities]
        self.embeddings = nn.ModuleList(embeddings)
        width = self.n_numeric + sum(e.embedding_dim for e in embeddings)
        self.head = nn.Sequential(
            nn.Linear(max(width, 1), hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, 1),
        )

    @staticmethod
    def transform(numeric: torch.Tensor) -> torch.Tensor:
        """Signed log: tames heavy tails (amounts, distances) without knowing the units."""
        return torch.sign(numeric) * torch.log1p(torch.abs(numeric))

    def standardize(self, numeric: torch.Tensor) -> torch.Tensor:
        """Raw numeric values -> signed log, missing imputed with the training mean, standardised."""
        x = self.transform(numeric)
        x = torch.where(torch.isnan(x), self.means, x)  # missing -> training mean
        return (x - self.means) / self.stds

    def from_standardized(self, standardized: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The logit from already standardised numerics (training standardises its data once, not per batch)."""
        parts = [standardized] if self.n_numeric else []
        for j, emb in enumerate(self.embeddings):
            parts.append(emb(codes[:, j]))
        if not parts:
            raise ValueError("the model has no inputs")
        return self.head(torch.cat(parts, dim=1)).squeeze(1)

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return self.from_standardized(self.standardize(numeric) if self.n_numeric else numeric, codes)


class StandardizedInputs(nn.Module):
    """Training's view of a TabularNet: takes standardised numerics (the same parameters, so DDP can wrap it)."""

    def __init__(self, net: TabularNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, standardized: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return self.net.from_standardized(standardized, codes)


class ScoringProgram(nn.Module):
    """What the bundle exports: raw numeric values and category codes in, probability of the positive class out."""

    def __init__(self, net: TabularNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(numeric, codes))


class LogisticProgram(nn.Module):
    """A logistic regression in the bundle contract: raw numeric values and category codes in, probability out.

    The numeric preprocessing is TabularNet's (signed log, training-mean imputation, standardisation) and each
    categorical feature is one-hot over its codes (code 0 = unseen or missing), so the weights of a fitted
    scikit-learn LogisticRegression on that design matrix carry over exactly: the cheap model can win the
    selection and be served like any other family.
    """

    means: torch.Tensor
    stds: torch.Tensor
    numeric_weights: torch.Tensor
    bias: torch.Tensor

    def __init__(
        self, means: torch.Tensor, stds: torch.Tensor, numeric_weights: torch.Tensor, code_weights: list[torch.Tensor], bias: float
    ) -> None:
        super().__init__()
        self.register_buffer("means", means.to(torch.float32))
        self.register_buffer("stds", stds.to(torch.float32).clamp_min(1e-6))
        self.register_buffer("numeric_weights", numeric_weights.to(torch.float32))
        self.register_buffer("bias", torch.tensor(float(bias), dtype=torch.float32))
        self.n_numeric = int(means.numel())
        for j, weights in enumerate(code_weights):
            self.register_buffer(f"codes_{j}", weights.to(torch.float32))
        self.n_categorical = len(code_weights)

    def standardize(self, numeric: torch.Tensor) -> torch.Tensor:
        x = TabularNet.transform(numeric)
        x = torch.where(torch.isnan(x), self.means, x)
        return (x - self.means) / self.stds

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        logit = self.bias.expand(numeric.shape[0])
        if self.n_numeric:
            logit = logit + self.standardize(numeric) @ self.numeric_weights
        for j in range(self.n_categorical):
            table = getattr(self, f"codes_{j}")
            # Codes past the table (a vocabulary the program never saw) read as unseen, as in the network.
            safe = torch.where((codes[:, j] >= 0) & (codes[:, j] < table.shape[0]), codes[:, j], torch.zeros_like(codes[:, j]))
            logit = logit + table[safe]
        return torch.sigmoid(logit)


MAX_BATCH = 1_000_000  # rows per call an exported program accepts


def export_dynamic(program: nn.Module, n_numeric: int, n_categorical: int) -> torch.export.ExportedProgram:
    """The program as a bundle holds it: torch.export with a dynamic batch dimension (1 to MAX_BATCH rows)."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=MAX_BATCH)
    example = (torch.zeros(8, max(n_numeric, 1)), torch.zeros(8, max(n_categorical, 1), dtype=torch.int64))
    return torch.export.export(program, example, dynamic_shapes={"numeric": {0: batch}, "codes": {0: batch}})
