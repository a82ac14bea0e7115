"""boomerang's public Python API: one entry point per command, a typed request in, a result out.

The CLI is a thin layer over these same calls (it parses flags, builds the
request, calls, renders). Nothing here prints or exits: problems the caller can
fix raise :class:`BoomerangError` (one line naming the problem and the fix),
and long work reports through a :class:`Progress` (default: none). See
docs/api.md for a worked example.

=================  ==============================================  =========================
command            call                                            result
=================  ==============================================  =========================
``init-student``   ``make_student(StudentRequest(...))``           ``StudentRun``
``distill``        ``distill(DistillConfig(...))``                 ``DistillResult``
``family``         ``make_family(FamilyRequest(...))``             ``FamilyRun``
``eval``           ``run_eval(EvalRequest(...))``                  ``EvalReport``
``export``         ``run_export(ExportRequest(family, output))``   ``ExportResult``
``demo``           ``run_demo(DemoConfig(...))``                   ``DemoResult``
=================  ==============================================  =========================
"""

from __future__ import annotations

from .demo import DemoConfig, DemoResult, run_demo
from .distill.config import DistillConfig, DistillResult
from .distill.train import distill
from .distill.weights import LossWeights
from .errors import BoomerangError
from .evaluate.options import EvalOptions, EvalReport, Row
from .evaluate.run import EvalRequest, run_eval
from .export.request import ExportRequest
from .export.writer import ExportResult, export_family, run_export
from .family.run import FamilyRequest, FamilyRun, make_family
from .family.writer import FamilyResult
from .manifest import FamilyManifest
from .plan import Plan
from .progress import NULL, Progress, Task
from .refs import ModelRef, resolve
from .student import StudentRequest, StudentRun, StudentSummary, init_student, make_student

__all__ = [
    "BoomerangError",
    "DemoConfig",
    "DemoResult",
    "DistillConfig",
    "DistillResult",
    "EvalOptions",
    "EvalReport",
    "EvalRequest",
    "ExportRequest",
    "ExportResult",
    "FamilyManifest",
    "FamilyRequest",
    "FamilyResult",
    "FamilyRun",
    "LossWeights",
    "ModelRef",
    "NULL",
    "Plan",
    "Progress",
    "Row",
    "StudentRequest",
    "StudentRun",
    "StudentSummary",
    "Task",
    "distill",
    "export_family",
    "init_student",
    "make_family",
    "make_student",
    "resolve",
    "run_demo",
    "run_eval",
    "run_export",
]
