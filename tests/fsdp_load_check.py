"""Run under ``torchrun --nproc_per_node 2``: a sharded load (meta, then each rank's rows) equals a full
load then sharded, shard for shard, buffers (rotary ``inv_freq``) included, tied weights tied, and gives
the same first-step loss (the teacher's KL target and the student's CE + KL + cosine) to 1e-6; for a
tied teacher (its student's head frozen, the same bytes) the embedding matrix is one whole tensor on
every rank, outside FSDP, that teacher and student share (KL reads it as the student's own head); a
whole directory as the student (``--student DIR``) loads by rows the same.

``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/fsdp_load_check.py TEACHER_DIR...``;
rank 0 prints one JSON line of what it compared (tests/test_fsdp.py reads it).
"""

from __future__ import annotations

import contextlib
import json
import sys

import torch
import torch.distributed as dist

from boomerang_cli.arch import ModelInfo
from boomerang_cli.distill import fsdp, sharded_load
from boomerang_cli.distill.model import DistillStudent, Teacher
from boomerang_cli.distill.step import forward_backward
from boomerang_cli.distill.setup import freeze_embeddings
from boomerang_cli.models import load_model, student_from_plan
from boomerang_cli.plan import Plan


class _Acc:  # what forward_backward asks of an Accelerator, for a sharded student
    def __init__(self, rank: int, world: int) -> None:
        self.process_index, self.num_processes, self.device = rank, world, torch.device("cpu")

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:  # FSDP reduces in backward
        return contextlib.nullcontext()

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def _build(info: ModelInfo, plan: Plan, sharded: bool) -> tuple[DistillStudent, Teacher, fsdp.Sharding]:
    sh = fsdp.Sharding.create("student,teacher", dist.get_world_size(), torch.device("cpu"), False)
    path = info.arch.layers_path
    t = sharded_load.teacher(sh, info, torch.float32) if sharded else load_model(info.path)
    teacher_model = sh.shard_teacher(t, path)
    s = sharded_load.student(sh, info, plan, None) if sharded else student_from_plan(info, plan)
    if info.arch.tied:  # as distill does: a tied teacher's student keeps its embeddings (and head)
        freeze_embeddings(s)
    teacher = Teacher(teacher_model, path, plan.aligned_teacher_hidden(), keep_hidden=True)
    student = DistillStudent(
        s, path, ce_weight=1.0, kl_weight=1.0, cos_weight=1.0, temperature=2.0, teacher_head=teacher.head, chunk=None
    )
    return sh.shard_student(student, path), teacher, sh


def check(teacher_dir: str) -> dict:
    torch.manual_seed(0)
    info = ModelInfo.load(teacher_dir)
    plan = Plan.from_flags(info.arch.num_layers, None, 1, 2, 2)
    (full, t_full, _), (part, t_part, _) = _build(info, plan, False), _build(info, plan, True)
    shards = 0
    for a, b in ((full, part), (t_full.model, t_part.model)):
        pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
        assert pa.keys() == pb.keys(), sorted(set(pa) ^ set(pb))
        for k in pa:
            assert hasattr(pa[k], "to_local") == hasattr(pb[k], "to_local"), k
            if hasattr(pa[k], "to_local"):
                assert pa[k].placements == pb[k].placements, k
                assert torch.equal(pa[k].to_local(), pb[k].to_local()), k
                shards += 1
            else:  # kept whole on every rank (a tied teacher's embedding)
                assert torch.equal(pa[k], pb[k]), k
        ba, bb = dict(a.named_buffers()), dict(b.named_buffers())
        assert ba.keys() == bb.keys() and all(torch.equal(ba[k], bb[k]) for k in ba), sorted(ba)
    tied = part.model.get_output_embeddings().weight is part.model.get_input_embeddings().weight
    shared = _shared_embedding(part, t_part) and _shared_embedding(full, t_full)
    # --student DIR: a whole directory as the student (here the teacher's own), read by rows likewise.
    sh = fsdp.Sharding.create("student", dist.get_world_size(), torch.device("cpu"), False)
    path = info.arch.layers_path
    pairs = [
        DistillStudent(m, path, ce_weight=1.0, kl_weight=0.0, cos_weight=0.0, temperature=1.0, teacher_head=None)
        for m in (load_model(info.path), sharded_load.student(sh, info, plan, info.path))
    ]
    da, db = (dict(sh.shard_student(m, path).named_parameters()) for m in pairs)
    assert da.keys() == db.keys() and all(torch.equal(da[k].to_local(), db[k].to_local()) for k in da)
    shards += len(da)
    ids = torch.randint(0, info.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids, dtype=torch.bool)
    acc = _Acc(dist.get_rank(), dist.get_world_size())
    losses = [
        [float(v) for v in forward_backward(m, t, acc, ids, ids.clone(), mask, 1, 1, True)]
        for m, t in ((full, t_full), (part, t_part))
    ]
    for x, y in zip(*losses):
        assert abs(x - y) <= 1e-6 * max(1.0, abs(x)), losses
    return {
        "shards": shards,
        "buffers": sorted(dict(part.named_buffers())),
        "tied": tied,
        "losses": losses,
        "head_is_own": [full.teacher_head_is_own, part.teacher_head_is_own],
        "shared_embedding": shared,
    }


def _shared_embedding(student: DistillStudent, teacher: Teacher) -> bool:
    """A tied teacher's embedding is one whole matrix on this rank, outside every FSDP unit, and the
    student's frozen embeddings and head are that very tensor (nothing of it is gathered)."""
    from torch.distributed.fsdp import FSDPModule

    t_emb = teacher.model.get_input_embeddings().weight
    s = student.model
    if hasattr(t_emb, "to_local"):
        return False
    assert t_emb.shape == (teacher.model.config.vocab_size, teacher.model.config.hidden_size)
    managed = {
        id(p.sharded_param)
        for m in (*student.modules(), *teacher.model.modules())
        if isinstance(m, FSDPModule)
        for g in [m._get_fsdp_state()._fsdp_param_group]
        if g is not None
        for p in g.fsdp_params
    }
    assert id(t_emb) not in managed
    return s.get_input_embeddings().weight is t_emb and s.get_output_embeddings().weight is t_emb


def main() -> None:
    dist.init_process_group("gloo")
    out = {d: check(d) for d in sys.argv[1:]}
    if dist.get_rank() == 0:
        print(json.dumps(out))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
