"""Benchmark: export a whole family to GGUF at once vs member by member; llama.cpp's perplexity vs boomerang's.

    python bench/gguf_export.py [--family DIR] [--teacher smollm2-135m] [--type q8_0]
                                [--members member-17L,member-23L] [--max-tokens 4096] [--seq-len 512]
                                [--convert-script llama.cpp/convert_hf_to_gguf.py] [--no-install] [--no-timing]
                                [--keep-output]

1. The family: ``--family`` (a family.json or its directory), else one built
   here: ``init-student`` of ``--teacher`` with the paper's flags (no training
   is needed to time an export) and ``boomerang family --all``.
2. Export time, each in a fresh process: ``boomerang export FAMILY --type T``
   once for the whole family, then ``boomerang export --members NAME`` once per
   member (every member converted on its own), and, with ``--convert-script``,
   llama.cpp's own ``convert_hf_to_gguf.py --outtype T`` on the directory of
   each of the same files (student, members, teacher: what users run today,
   once per model; it needs ``sentencepiece`` importable, even for BPE).
3. Perplexity of two members (``--members``, default the smallest and the
   largest member) on the same tokens: llama.cpp (``llama-cpp-python``, built
   from its source package by pip with cmake when not installed; slow) on the
   exported files, next to what ``boomerang eval`` computes for the HF member
   (``model_nll`` on ``load_eval_data``'s blocks: the held-out ``stdlib``
   split by default) and transformers reading the same GGUF file. llama.cpp
   is fed the blocks' token ids (no BOS added); its own tokenizer, read from
   the file, is compared with the HF one on the first blocks' text.

Prints one JSON object (and writes it to ``--out`` if given). Everything is
written under a temporary directory that is deleted unless ``--keep-output``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run(*args: str, env: dict | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, *args], check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, out.stdout


def boomerang(*args: str) -> tuple[float, str]:
    env = dict(os.environ, BOOMERANG_PROGRESS="0", PYTHONPATH=str(REPO))
    return run("-m", "boomerang_cli", *args, env=env)


def build_family(root: Path, teacher: str) -> Path:
    from boomerang_cli.arch import ModelInfo
    from boomerang_cli.plan import Plan
    from boomerang_cli.refs import resolve
    from boomerang_cli.student import init_student

    ref = resolve(teacher)
    layers = ModelInfo.load(ref.path).arch.num_layers
    init_student(ref, Plan.from_paper_flags(layers), root / "student")
    boomerang("family", teacher, str(root / "student"), "--all", "-o", str(root / "family"), "--json")
    return root / "family" / "family.json"


def llama_cpp():
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return None
    import llama_cpp

    return llama_cpp


def install_llama_cpp() -> None:
    """pip builds llama-cpp-python from its sdist with cmake (several minutes on 16 cores)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-binary", "llama-cpp-python", "llama-cpp-python"], check=True
    )


def llama_cpp_nll(path: Path, data, threads: int) -> dict:
    """Mean NLL of llama.cpp on ``data``'s blocks: one evaluation per block, logits of every position."""
    import numpy as np

    from boomerang_cli.data import IGNORE

    lc = llama_cpp()
    llm = lc.Llama(
        model_path=str(path),
        n_ctx=data.seq_len,
        logits_all=True,
        n_threads=threads,
        n_batch=data.seq_len,
        verbose=False,
    )
    total, count = 0.0, 0
    for ids, labels, mask in data.batches(1):
        n = int(mask[0].sum())
        llm.reset()
        llm.eval(ids[0, :n].tolist())  # the block's ids as they are: no BOS added, no retokenizing
        scores = np.asarray(llm.scores[:n], dtype=np.float64)
        lab = labels[0, :n].numpy()  # already shifted: lab[t] is what position t predicts
        keep = lab != IGNORE
        top = scores.max(-1)
        logz = np.log(np.exp(scores - top[:, None]).sum(-1)) + top
        total += float((logz[keep] - scores[keep, lab[keep]]).sum())
        count += int(keep.sum())
    return {"nll": total / count, "ppl": math.exp(total / count), "tokens": count}


def same_tokenization(path: Path, tokenizer, data) -> dict:
    """llama.cpp's tokenizer (from the GGUF's tokenizer.* keys) against the HF one, on the text of
    the first blocks: the perplexities use token ids directly, so this is the only tokenizer check."""
    lc = llama_cpp()
    llm = lc.Llama(model_path=str(path), vocab_only=True, verbose=False)
    text = tokenizer.decode(data.input_ids[:4].reshape(-1)[data.mask[:4].reshape(-1)].tolist())
    hf = tokenizer.encode(text, add_special_tokens=False)
    cpp = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    first = next((i for i, (a, b) in enumerate(zip(hf, cpp)) if a != b), None)
    if first is None and len(hf) != len(cpp):
        first = min(len(hf), len(cpp))
    return {"tokens": len(hf), "identical": hf == cpp, "first_difference": first}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("llama-cpp-python", "gguf", "torch", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", type=Path, default=None)
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--type", default="q8_0")
    ap.add_argument("--members", default=None, help="two members to score (default: smallest and largest)")
    ap.add_argument("--data", default="stdlib")
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--convert-script", type=Path, default=None, help="llama.cpp's convert_hf_to_gguf.py")
    ap.add_argument("--no-install", action="store_true", help="skip perplexity if llama-cpp-python is missing")
    ap.add_argument(
        "--no-timing",
        action="store_true",
        help="export only the scored members and skip the export timings (perplexity only)",
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--keep-output", action="store_true")
    args = ap.parse_args()

    import torch

    from boomerang_cli.cli.common import quiet_libraries
    from boomerang_cli.manifest import FamilyManifest

    quiet_libraries()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="gguf-bench-"))
    report: dict = {"type": args.type, "threads": args.threads, "versions": versions()}
    try:
        t0 = time.perf_counter()
        fam = args.family if args.family is not None else build_family(root, args.teacher)
        fam = fam / "family.json" if fam.is_dir() else fam
        report["family"] = str(fam)
        report["family_build_s"] = time.perf_counter() - t0 if args.family is None else None
        manifest = FamilyManifest.read(fam)
        names = ["student"] + [m.name for m in manifest.members] + ["teacher"]

        members = args.members.split(",") if args.members else [manifest.members[0].name, manifest.members[-1].name]

        # -- export time -------------------------------------------------------------------
        only = ["--members", ",".join(members)] if args.no_timing else []
        secs, out = boomerang("export", str(fam), "-o", str(root / "all"), "--type", args.type, "--json", *only)
        whole = json.loads(out)
        report["whole_family" if not only else "scored_members"] = {
            "files": len(whole["files"]),
            "wall_s": secs,
            "bytes": sum(f["size"] for f in whole["files"]),
            **whole["conversions"],
            "seconds": whole["seconds"],
        }
        separate = {"wall_s": 0.0, "unique_tensors": 0, "convert_s": 0.0, "per_file_s": {}}
        for name in [] if args.no_timing else names:
            secs, out = boomerang(
                "export", str(fam), "-o", str(root / "one" / name), "--type", args.type, "--members", name, "--json"
            )
            one = json.loads(out)
            separate["wall_s"] += secs
            separate["per_file_s"][name] = secs
            separate["unique_tensors"] += one["conversions"]["unique_tensors"]
            separate["convert_s"] += one["conversions"]["seconds"]
            shutil.rmtree(root / "one" / name)
        if not args.no_timing:
            report["member_by_member"] = separate
        if args.convert_script is not None and not args.no_timing:  # the same files: student, every member, teacher
            from boomerang_cli.family.open import load_family_models

            roles = load_family_models(manifest, fam.parent)
            dirs = {
                "student": Path(roles["student"].path),
                "teacher": Path(roles["teacher"].path),
                **{m.name: fam.parent / m.path for m in manifest.members},
            }
            per = {}
            for name in names:
                per[name], _ = run(
                    str(args.convert_script),
                    str(dirs[name]),
                    "--outtype",
                    args.type,
                    "--outfile",
                    str(root / "convert.gguf"),
                )
                os.unlink(root / "convert.gguf")
            report["llama_cpp_convert"] = {"files": len(per), "wall_s": sum(per.values()), "per_file_s": per}

        # -- perplexity --------------------------------------------------------------------
        if llama_cpp() is None and not args.no_install:
            t0 = time.perf_counter()
            install_llama_cpp()
            report["llama_cpp_install_s"] = time.perf_counter() - t0
        report["versions"] = versions()  # again: llama-cpp-python may have been installed meanwhile
        from boomerang_cli.forward.perplexity import load_eval_data, model_nll
        from boomerang_cli.models import load_tokenizer
        from boomerang_cli.family.open import load_family_models, load_member_from_manifest

        models = load_family_models(manifest, fam.parent)
        tokenizer = load_tokenizer(models["teacher"].path)
        data = load_eval_data([args.data], "validation", tokenizer, args.seq_len, args.max_tokens)
        report["data"] = data.describe()
        rows = []
        from transformers import AutoModelForCausalLM

        for name in members:
            path = root / "all" / f"{name}.gguf"
            hf = model_nll(load_member_from_manifest(fam, name, models=models), data, 4)
            reread = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=torch.float32
            ).eval()
            row = {
                "member": name,
                "boomerang_eval_ppl": hf.ppl,
                "transformers_gguf_ppl": model_nll(reread, data, 4).ppl,
            }
            if llama_cpp() is not None:
                row["llama_cpp"] = llama_cpp_nll(path, data, args.threads)
                row["llama_cpp_tokenizer"] = same_tokenization(path, tokenizer, data)
            rows.append(row)
        report["perplexity"] = rows
    finally:
        if args.keep_output:
            report["output"] = str(root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
