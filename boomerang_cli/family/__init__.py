"""``boomerang family``: pick members, check the pair, stream members to disk, write the manifest.

SPEC sections 1 and 4. A family is teacher + student + plan + the members
built + ``family.json``. The parts, bottom up: :mod:`.select` (which members
exist and which the flags pick), :mod:`.card` (how a member is described) and
:mod:`.writer` (members to disk, resume). The pair itself is :mod:`boomerang_cli.pair`.
"""

from __future__ import annotations

from ..integrity import checksums, member_problem, sha256_file, verify_member
from ..pair import Pair, open_pair, shape_problems
from ..units import format_params
from .card import describe_blocks, member_card, member_summary
from .select import (
    Candidate,
    Pick,
    SizeTarget,
    achievable,
    candidates,
    check_selection_args,
    parse_size_targets,
    parse_sizes,
    select,
)
from .writer import FamilyResult, build_family, check_output, dry_run_json, member_entry

__all__ = [
    "SizeTarget",
    "parse_sizes",
    "parse_size_targets",
    "format_params",
    "Pair",
    "open_pair",
    "shape_problems",
    "Candidate",
    "achievable",
    "candidates",
    "Pick",
    "check_selection_args",
    "select",
    "build_family",
    "FamilyResult",
    "check_output",
    "verify_member",
    "member_problem",
    "checksums",
    "sha256_file",
    "dry_run_json",
    "describe_blocks",
    "member_card",
    "member_entry",
    "member_summary",
]
