"""Public data sets the configs use and a user fetches once into ``datasets/`` (not part of the repository).

Each file has a pinned source address and a SHA-256 checksum; a copy that does not match is refused.
Without network, point ``copy_from`` at a folder that already holds the files.
"""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fimvision.errors import DataError
from fimvision.files import write_atomically

JPDA = "https://raw.githubusercontent.com/chamwen/JPDA/dba993a3212708c5df60229494560ebaae6081e7/data"


@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    sha256: str


DATASETS: dict[str, tuple[str, list[RemoteFile]]] = {
    "domain-adaptation": (
        "MNIST (2,000) vs USPS (1,800) digits and COIL-20 in two domains, 16x16 / 32x32 grey, MATLAB v7.3 "
        "(from github.com/chamwen/JPDA, public research data)",
        [RemoteFile("MNIST_vs_USPS.mat", f"{JPDA}/MNIST_vs_USPS.mat",
                    "7fbb67f14af7236e18a38dc8a0a836142361e9e720e4b763a5e2db511d306d6c"),
         RemoteFile("COIL1_vs_COIL2.mat", f"{JPDA}/COIL1_vs_COIL2.mat",
                    "8579073db70b133ce9f4c7a0c76ca1d9c54e6d398a955a087ca5a60e3063a316")],
    ),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(dataset: str, out: str | Path, *, copy_from: str | Path | None = None, timeout: float = 60.0) -> list[Path]:
    """Put the files of ``dataset`` into ``out`` (skipping those already there and intact); returns their paths."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset '{dataset}'; known: {sorted(DATASETS)}.")
    out = Path(out)
    written = []
    for remote in DATASETS[dataset][1]:
        target = out / remote.name
        if target.is_file() and sha256_of(target) == remote.sha256:
            written.append(target)
            continue
        if copy_from is not None:
            source = Path(copy_from) / remote.name
            if not source.is_file():
                raise DataError(f"{source} does not exist; --from must be a folder holding {remote.name}.")
            write_atomically(target, lambda tmp, s=source: shutil.copyfile(s, tmp))
        else:
            try:
                with urllib.request.urlopen(remote.url, timeout=timeout) as response:
                    data = response.read()
            except (urllib.error.URLError, TimeoutError, OSError) as err:
                raise DataError(f"cannot download {remote.url} ({getattr(err, 'reason', err)}). Without network, "
                                f"copy {remote.name} into {out} by hand, or pass --from DIR of a folder that has "
                                "it.") from err
            write_atomically(target, lambda tmp, d=data: tmp.write_bytes(d))
        if sha256_of(target) != remote.sha256:
            target.unlink()
            raise DataError(f"{remote.name}: checksum does not match the published file (expected sha256 "
                            f"{remote.sha256}); the copy was removed. Fetch it again.")
        written.append(target)
    return written
