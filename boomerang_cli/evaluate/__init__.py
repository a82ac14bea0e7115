"""``boomerang eval``: perplexity (shared trunk), lm-eval tasks, pruning baselines, plots.

- :mod:`.perplexity`: token NLL of one model on fixed token blocks.
- :mod:`.trunk`: a family as a prefix tree of layer sequences, shared layers run once.
- :mod:`.baselines`: ShortGPT block influence and plan-prune, training-free pruned teachers.
- :mod:`.lmeval`: lm-evaluation-harness on in-memory models (optional extra).
- :mod:`.plot`: parameters against perplexity and task scores.
- :mod:`.runner`: what ``eval`` does end to end, and where results are written.
"""

from __future__ import annotations
