"""Text data for distillation and evaluation: sources, splits, tokenization, packing.

A *source* is what the user passes as ``--data``: a text file or directory
(``.txt``, ``.md``, ``.py``, ...), a ``.jsonl`` file (one JSON object per line,
text under ``--text-field``), a ``.parquet`` file (needs pyarrow), a Hugging
Face dataset id (streamed through ``datasets``, an optional extra), or a
builtin corpus: ``stdlib`` (the running Python's standard library sources)
and ``stdlib-docs`` (their English: each file's docstrings, split as the file
is, and pydoc's help topics, split by topic). Several sources are read one
after the other, or interleaved in set proportions and in a seeded order
(:mod:`.mix`, ``--data-weights``, ``--shuffle``).

**Split rule** (``SPLIT_RULE`` 2). A document is what the user gave as one: a
text file, a JSONL/Parquet row, a hub row, a stdlib file. It is never cut into
documents of its own. Rows and stdlib files have a stable *key* (``path:line``
for a JSONL row, ``path:row`` for a Parquet row, ``id:row`` for a hub row, the
path relative to the stdlib root); one belongs to ``validation`` when
``sha256(key)``'s first 8 bytes, as a big-endian integer, modulo 10000 is below
200 (2%), else to ``train``. The rule depends on nothing but the key, so every
process, run and machine sees the same split, and a row never moves between
splits when others are added.

A text file given in ``--data`` (alone or in a directory, whatever the number
of files) holds out its own tail: ``validation`` is the part from the start of
the line that holds the point 2% of its characters (trailing whitespace not
counted) before its end (after the last space for a one-line text), ``train``
the part before it (:func:`~.sources.split_text`). Both are contiguous natural
text and ``train + validation`` is the file; the head gets the tokenizer's BOS
and no EOS, the tail an EOS and no BOS (:class:`~.sources.TextSpan`), so no
special token is put where the file has none. ``all`` is every document whole.
Split rule 1 (before schema 3) cut a text source of fewer than 50 files into
paragraphs instead; results and checkpoints record the rule (``split_rule``).

**Packing.** Each document is tokenized with the model's tokenizer
(``add_special_tokens=True``, so a BOS is added where the model expects one),
followed by EOS, and documents are concatenated into one stream that is cut
into blocks of ``seq_len`` tokens: no padding, and every token is an input
exactly once. A block's labels are the next tokens of the stream (the first
token of the next block for its last position); the label at each document's
EOS is ``-100`` (ignored), because the next document does not follow from it.
Only a final partial block (``pad_last=True``, for evaluation) has padding,
marked in ``mask`` and ignored by every loss.

**BOS at every block** (SPEC section 7). A model whose tokenizer adds a BOS
has only ever seen text behind one, so a block cut from the middle of a
document is put behind one too: the block is the BOS, then ``seq_len - 1``
tokens of the stream. The BOS position predicts nothing (label ``-100``), so
the labels are the same stream tokens as without it, each predicted once with
the context the block gives. A block that starts at a document's own BOS gets
no second one. :func:`block_bos` decides (``--bos auto|always|never``):
``auto`` follows the tokenizer (it adds a BOS when encoding, or says
``add_bos_token``); a config's ``bos_token_id`` alone is no evidence (GPT-2 and
SmolLM2 name one that their tokenizers never add).

Two modules: :mod:`.sources` (what ``--data`` names, read as documents, and
the split rule) and :mod:`.blocks` (tokenization, packing, BOS).
"""

from __future__ import annotations

from .blocks import (
    BOS_POLICIES,
    DEFAULT_BOS,
    IGNORE,
    Block,
    BlockStream,
    StreamPosition,
    block_bos,
    check_bos_policy,
    collate,
    encode_document,
    eos_id_of,
    iter_blocks,
    tokenizer_adds_bos,
)
from .mix import SHUFFLE_BUFFER, check_weights, mixed_documents, parse_weights
from .sources import (
    BUILTIN_SOURCES,
    SPLIT_RULE,
    SPLITS,
    STDLIB,
    STDLIB_DOCS,
    STDLIB_SKIP_DIRS,
    check_source,
    check_text,
    docstrings,
    is_builtin,
    load_all_documents,
    load_documents,
    public_source,
    public_sources,
    split_of,
    stdlib_files,
    stdlib_root,
    TextSpan,
    split_text,
    holdout_start,
)

__all__ = [
    "BOS_POLICIES",
    "DEFAULT_BOS",
    "IGNORE",
    "Block",
    "BlockStream",
    "StreamPosition",
    "block_bos",
    "check_bos_policy",
    "collate",
    "encode_document",
    "eos_id_of",
    "iter_blocks",
    "tokenizer_adds_bos",
    "SHUFFLE_BUFFER",
    "check_weights",
    "mixed_documents",
    "parse_weights",
    "BUILTIN_SOURCES",
    "STDLIB_DOCS",
    "docstrings",
    "is_builtin",
    "SPLIT_RULE",
    "SPLITS",
    "TextSpan",
    "split_text",
    "holdout_start",
    "STDLIB",
    "STDLIB_SKIP_DIRS",
    "check_source",
    "check_text",
    "load_all_documents",
    "load_documents",
    "public_source",
    "public_sources",
    "split_of",
    "stdlib_files",
    "stdlib_root",
]
