"""CHAI, clustered head attention (experimental, ViTs): heads whose attention maps agree share one.

Per layer, the attention maps (softmax scores) of every head on a calibration batch are recorded and the
heads clustered by k-means on those maps; the number of clusters is the elbow of the inertia curve
(k = 1..heads; the k farthest below the chord from the first to the last point). At inference each
cluster computes q k^T and softmax once, for its representative head (the member nearest the centroid),
and every member applies those scores to its own values. Saved: the q k^T MACs of the non-representative
heads, ``(heads - k) * N^2 * head_dim`` per layer and image (the softmax work shrinks likewise; the
attention-times-values product is unchanged).

The model is the LightningModule (``module(x)``: logits of a classifier); its attention modules are found
anywhere inside it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import nn

from fimvision.efficiency.attention import SdpaInterceptor, attention_modules
from fimvision.efficiency.summary import format_table, show
from fimvision.efficiency.target import images_of
from fimvision.errors import ConfigError, FimvisionError


def _probs(q: torch.Tensor, k: torch.Tensor, scale: float | None) -> torch.Tensor:
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return ((q.float() * scale) @ k.float().transpose(-2, -1)).softmax(-1)


def record_attention(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The attention maps (batch, heads, N, N) of every attention layer of ``net`` on ``x``."""
    maps: dict[str, torch.Tensor] = {}

    def handler(name, module, q, k, v, kwargs):
        if kwargs.get("attn_mask") is not None or kwargs.get("is_causal"):
            raise FimvisionError("CHAI here supports unmasked self-attention (ViTs) only.")
        probs = _probs(q, k, kwargs.get("scale"))
        maps[name] = probs.detach().cpu()
        return (probs @ v.float()).to(v.dtype)

    with torch.no_grad(), SdpaInterceptor(net, handler):
        net.eval()(x)
    return maps


def elbow(inertias: list[float]) -> int:
    """The number of clusters (1-based) at the elbow: largest distance below the chord from first to last."""
    y = np.asarray(inertias, dtype=float)
    if len(y) <= 2 or y[0] <= y[-1]:
        return 1
    x = np.linspace(0, 1, len(y))
    yn = (y - y[-1]) / (y[0] - y[-1])
    gap = (1 - x) - yn  # chord minus curve
    return int(np.argmax(gap)) + 1 if gap.max() > 1e-9 else 1


@dataclass
class LayerClusters:
    """The clustering of one layer's heads."""

    labels: list[int]           # cluster of each head
    representatives: list[int]  # representative head of each cluster (index = cluster id)
    inertias: list[float]       # k-means inertia for k = 1..heads

    @property
    def k(self) -> int:
        return len(self.representatives)


def cluster_heads(maps: torch.Tensor, k: int | None = None, seed: int = 0) -> LayerClusters:
    """Cluster the heads of one layer's maps (batch, heads, N, N); ``k=None`` picks it by the elbow."""
    heads = maps.shape[1]
    features = maps.transpose(0, 1).reshape(heads, -1).double().numpy()
    inertias = [float(KMeans(n, n_init=4, random_state=seed).fit(features).inertia_) for n in range(1, heads + 1)]
    k = elbow(inertias) if k is None else min(k, heads)
    km = KMeans(k, n_init=4, random_state=seed).fit(features)
    reps = []
    for c in range(k):
        members = np.flatnonzero(km.labels_ == c)
        dist = ((features[members] - km.cluster_centers_[c]) ** 2).sum(1)
        reps.append(int(members[np.argmin(dist)]))
    return LayerClusters([int(c) for c in km.labels_], reps, inertias)


class ClusteredAttention(SdpaInterceptor):
    """Run ``net`` with each layer's clustered heads sharing their representative's attention scores."""

    def __init__(self, net: nn.Module, plan: dict[str, LayerClusters]) -> None:
        self.plan = plan
        super().__init__(net, self._attend)

    def _attend(self, name, module, q, k, v, kwargs):
        layer = self.plan[name]
        reps = torch.tensor(layer.representatives, device=q.device)
        probs = _probs(q[:, reps], k[:, reps], kwargs.get("scale"))  # (B, k, N, N)
        shared = probs[:, torch.tensor(layer.labels, device=q.device)]  # each head gets its cluster's scores
        return (shared @ v.float()).to(v.dtype)


def attention_macs(plan: dict[str, LayerClusters], maps: dict[str, torch.Tensor], head_dim: dict[str, int]) -> dict:
    """Attention MACs per image (q k^T plus scores x values) without and with clustering."""
    full = clustered = 0
    for name, layer in plan.items():
        n, heads, d = maps[name].shape[-1], maps[name].shape[1], head_dim[name]
        full += 2 * heads * n * n * d
        clustered += (layer.k + heads) * n * n * d
    return {"attention_macs": full, "attention_macs_chai": clustered, "attention_macs_saved": full - clustered,
            "attention_macs_saved_share": (full - clustered) / full if full else 0.0}


def build_plan(net: nn.Module, x: torch.Tensor, k: int | None = None, seed: int = 0):
    """Record maps on calibration input ``x`` and cluster every layer; returns (plan, maps)."""
    if not attention_modules(net):
        raise FimvisionError(f"{type(net).__name__} has no timm attention modules: CHAI applies to ViTs.")
    maps = record_attention(net, x)
    return {name: cluster_heads(m, k, seed) for name, m in maps.items()}, maps


def evaluate(net: nn.Module, plan: dict[str, LayerClusters], batches) -> dict:
    """Top-1 agreement of the clustered with the unclustered model, and both accuracies where targets exist."""
    net = net.eval()
    agree = total = correct = correct_chai = labelled = 0
    with torch.no_grad():
        for x, y in batches:
            base = net(x).argmax(1)
            with ClusteredAttention(net, plan):
                chai = net(x).argmax(1)
            agree += (base == chai).sum().item()
            total += len(x)
            if y is not None:
                ok = y >= 0
                correct += (base[ok] == y[ok]).sum().item()
                correct_chai += (chai[ok] == y[ok]).sum().item()
                labelled += ok.sum().item()
    return {"images": total, "top1_agreement": agree / total if total else float("nan"),
            "accuracy": correct / labelled if labelled else None,
            "accuracy_chai": correct_chai / labelled if labelled else None}


@dataclass
class ChaiSettings:
    """Options of `chai`.

    Args:
        batch_size: batch size of calibration and evaluation.
        calibration_batches: batches whose attention maps are clustered (training images, or synthetic).
        eval_batches: at most this many validation batches are evaluated.
        clusters: fixed clusters per layer (default: the elbow of each layer's k-means inertia).
        seed: k-means seed.
    """

    batch_size: int = 16
    calibration_batches: int = 1
    eval_batches: int = 20
    clusters: int | None = None
    seed: int = 0


def run_chai(target, s: ChaiSettings, device: str, out: Path) -> dict:
    """`fimvision-efficiency chai`: cluster the heads on calibration images, evaluate; ``chai_layers.csv`` and tables."""
    if getattr(target.module, "train_on", None) == "views":
        raise ConfigError(f"CHAI scores a classifier's predictions, and {type(target.module).__name__} is a "
                          "self-supervised model without one: run it on a fine-tuned or linear-probe config.")
    net = target.module.to(device).float().eval()
    calib = torch.cat([images_of(target.batch(s.batch_size, seed=1000 + i)) for i in range(s.calibration_batches)])
    loader = None
    if target.datamodule is not None:  # the labelled validation loader
        target.datamodule.hparams.batch_size = s.batch_size
        loaders = target.datamodule.val_dataloader()
        loader = (loaders or [None])[-1] if isinstance(loaders, list) else loaders
    if loader is not None:
        batches = [(b["image"].to(device), b["target"].to(device)) for b in itertools.islice(loader, s.eval_batches)]
        note = "validation split of the dataset"
    else:
        batches = [(images_of(target.batch(s.batch_size, seed=2000 + i)).to(device), None)
                   for i in range(min(s.eval_batches, 4))]
        note = "synthetic input (no dataset): accuracy needs --data.init_args.root of a dataset"
    plan, maps = build_plan(net, calib.to(device), s.clusters, s.seed)
    head_dim = {name: m.head_dim for name, m in attention_modules(net)}
    macs = attention_macs(plan, maps, head_dim)
    scores = evaluate(net, plan, batches)
    layers = [{"layer": name, "heads": len(p.labels), "clusters": p.k, "representatives": p.representatives,
               "labels": p.labels} for name, p in plan.items()]
    summary = {**macs, **scores, "evaluated_on": note}
    show(f"CHAI on {target.name} ({device}), evaluated on {note}", layers, ["layer", "heads", "clusters", "representatives"],
         csv=out / "chai_layers.csv")
    print(format_table([{k: v for k, v in summary.items() if k != "evaluated_on"}]))
    return {"model": target.name, "summary": summary, "layers": layers}
