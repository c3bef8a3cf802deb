"""Domain-adaptation data: domain readers (``readers``), the few-shot protocol (``protocol``) and the
data module (``datamodule``). Docs: docs/sfda.md."""

from fimvision.data.domains.datamodule import DomainDataModule, make_train_transform, shift_transform
from fimvision.data.domains.protocol import (
    TargetSplit,
    label_shift_keep,
    rng_for,
    split_target,
    stratified_split,
)
from fimvision.data.domains.readers import (
    Domain,
    load_domain,
    mat_domain_names,
    native_channels,
    parse_manifest_spec,
    read_folder_domain,
    read_manifest_domain,
    read_mat_domain,
    root_kind,
)

__all__ = ["Domain", "DomainDataModule", "TargetSplit", "label_shift_keep", "load_domain", "make_train_transform",
           "mat_domain_names", "native_channels", "parse_manifest_spec", "read_folder_domain", "read_manifest_domain",
           "read_mat_domain", "rng_for", "root_kind", "shift_transform", "split_target", "stratified_split"]
