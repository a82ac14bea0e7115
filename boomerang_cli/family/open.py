"""A written family opened again from its manifest: its teacher and student found and checked,
its members named, any member built in memory (nothing written).

Used by ``eval`` and ``export``, and by anyone serving members from a family
directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..arch import ModelInfo
from ..errors import BoomerangError, PairMismatchError
from ..integrity import identity_problem
from ..manifest import MANIFEST_NAME, FamilyManifest, MemberEntry
from ..member import Member
from ..models import load_member


def member_from_entry(manifest: FamilyManifest, entry: MemberEntry) -> Member:
    return Member.of(manifest.plan, entry.teacher_blocks)


def load_family_models(manifest: FamilyManifest, manifest_dir: Path) -> dict[str, ModelInfo]:
    """Teacher and student of a manifest, resolved from their recorded paths."""
    from ..refs import resolve

    out = {}
    for role, entry in (("teacher", manifest.teacher), ("student", manifest.student)):
        path = Path(entry.path)
        if not path.is_absolute():
            path = Path(manifest_dir) / path
        out[role] = ModelInfo.load(path if path.exists() else resolve(entry.ref).path)
    return out


def manifest_file(path: Path | str) -> Path:
    """``family.json`` itself, or the one in directory ``path``."""
    path = Path(path).expanduser()
    return path / MANIFEST_NAME if path.is_dir() else path


def read_complete_manifest(path: Path | str) -> tuple[Path, FamilyManifest]:
    """The manifest at ``path`` (file or directory), refused while the family is incomplete."""
    mpath = manifest_file(path)
    manifest = FamilyManifest.read(mpath)
    if not manifest.complete:
        raise BoomerangError(
            f"{mpath}: the family is incomplete (`boomerang family` was interrupted or is still running); "
            "rerun `boomerang family` to finish it"
        )
    return mpath, manifest


def select_names(manifest: FamilyManifest, members: Sequence[str] | None) -> list[str]:
    """``--members`` checked against the family, in family order (student, members by size, teacher);
    all of them when ``members`` is empty."""
    every = ["student"] + [m.name for m in manifest.members] + ["teacher"]
    if not members:
        return every
    names = list(dict.fromkeys(members))
    for name in names:
        if name not in every:
            raise BoomerangError(f"no member {name!r} in this family; members: {', '.join(every)}")
    return [n for n in every if n in names]


def member_of(manifest: FamilyManifest, name: str) -> Member:
    """The member called ``name`` in a manifest; ``teacher`` and ``student`` name the pair itself."""
    n = manifest.plan.num_student_layers
    if name == "teacher":
        return Member(manifest.plan, frozenset(range(n)))
    if name == "student":
        return Member(manifest.plan, frozenset())
    entry = manifest.member(name)
    member = member_from_entry(manifest, entry)
    if [ls.to_json() for ls in member.layers] != [list(x) for x in entry.layers]:
        raise BoomerangError(
            f"manifest entry {name!r} lists layers that its teacher_blocks do not give; rebuild the family"
        )
    for what, said, real in (
        ("embed_from", entry.embed_from, member.embed_from),
        ("head_from", entry.head_from, member.head_from),
    ):
        if said != real:
            raise BoomerangError(
                f"manifest entry {name!r} has {what} {said!r}, but its teacher_blocks take it "
                f"from the {real}; rebuild the family with `boomerang family`"
            )
    return member


def check_family_models(manifest: FamilyManifest, models: Mapping[str, ModelInfo]) -> None:
    """The teacher and student found now are the ones the family was built from."""
    from ..compose import fingerprint

    for role, entry in (("teacher", manifest.teacher), ("student", manifest.student)):
        why = identity_problem(models[role].path, entry.identity) if entry.identity else None
        if why is None and entry.fingerprint and fingerprint(models[role]) != entry.fingerprint:
            why = "fingerprint differs"
        if why is not None:  # by recorded per-file digests where the manifest has them
            raise PairMismatchError(
                f"the {role} at {models[role].path} is not the one this family was built from "
                f"({why}); restore it or rebuild the family with `boomerang family`"
            )


def load_member_from_manifest(
    manifest_path: Path | str,
    name: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    models: Mapping[str, ModelInfo] | None = None,
) -> Any:
    """Member ``name`` of a family, built in memory from teacher + student (nothing written).

    ``manifest_path`` is ``family.json`` or its directory. Pass ``models`` (from
    :func:`load_family_models`) to load many members without re-reading headers;
    otherwise the recorded teacher and student are found and their fingerprints
    checked against the manifest.
    """
    path = manifest_file(manifest_path)
    manifest = FamilyManifest.read(path)
    member = member_of(manifest, name)
    if models is None:
        models = load_family_models(manifest, path.parent)
        check_family_models(manifest, models)
    return load_member(member, models, dtype, device)
