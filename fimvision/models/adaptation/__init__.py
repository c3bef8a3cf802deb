"""Source training and source-free adaptation: the SHOT-style network (``network``), few-shot fine-tuning
(``finetune``: FT, LP, LP-FT) and source-free methods (``source_free``: SHOT, NRC, AaD). They pair with
:class:`fimvision.data.domains.DomainDataModule`, which serves what each method trains on."""

from fimvision.models.adaptation.finetune import FewShotFinetune
from fimvision.models.adaptation.network import AdaptedTask, SHOTNet, SourceModel, load_source
from fimvision.models.adaptation.source_free import NRC, SHOT, AaD, NeighbourBanks, SourceFreeTask

__all__ = ["AaD", "AdaptedTask", "FewShotFinetune", "NRC", "NeighbourBanks", "SHOT", "SHOTNet", "SourceFreeTask",
           "SourceModel", "load_source"]
