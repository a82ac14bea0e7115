"""``boomerang eval``: perplexity (shared trunk), lm-eval tasks, pruning baselines, plots.

The forward passes themselves (token NLL on fixed blocks, the shared trunk) are
:mod:`boomerang_cli.forward`'s, which the calibrated orders use too.

- :mod:`.stacks`: perplexity of many stacks, through the shared trunk when it checks out.
- :mod:`.baselines`: ShortGPT block influence and plan-prune, training-free pruned teachers.
- :mod:`.lmeval`: lm-evaluation-harness on in-memory models (optional extra).
- :mod:`.plot`: parameters against perplexity and task scores.
- :mod:`.run`: what ``eval`` does end to end; :mod:`.results`: where results are written.
"""

from __future__ import annotations
