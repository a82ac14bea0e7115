"""Patch orders: which blocks a member of each size takes from the teacher (docs/orders.md).

SPEC section 4: the fixed orders ``last-first`` and ``first-last`` reproduce the
reference code, hand-picked per model family. The calibrated orders choose the
blocks by their effect on the KL divergence to the teacher's next-token
distribution on calibration data (the follow-up work's KLPatch):

- ``kl-greedy``: from the student, at each step patch the one remaining block
  whose member has the lowest KL; continue to the teacher. One nested chain.
- ``beam``: keep the ``W`` lowest-KL sets of patched blocks at every depth
  instead of one; each size then gets its own best subset (not necessarily
  nested). ``W=1`` is kl-greedy; ``W >= C(B, B//2)`` is exhaustive.
- ``kl-dp``: each block's effect measured once from each end (the teacher with
  that block alone from the student, the student with that block alone from
  the teacher); with those additive costs the best subset of every size is one
  dynamic-programming pass over the blocks (SPEC section 6). Each size's two
  proposals (one per end) are scored and the lower KL kept: ``2B + 2 + 2S``
  members for ``S`` sizes instead of kl-greedy's ``B(B+1)/2 + 1``.
- ``auto``: per size, the lowest-KL member among kl-dp's proposals and the
  fixed orders' members (``first-last``, ``last-first``), so a calibrated
  family is never worse on the calibration data than either fixed order.

The modules, bottom up (all but :mod:`.kl` import no torch, so flags and
``--help`` read them freely):

- :mod:`.names`: the order names, their flag checks and the fixed orders.
- :mod:`.search`: the searches over an injected scorer (members -> KL), pure.
- :mod:`.cost`: members a search scores, and when a recorded search is reused.
- :mod:`.calibration`: which text calibrates an order (a plain record).
- :mod:`.kl`: the real scorer (KL on calibration data) and a pair's search.

Nothing is re-exported here: importing a name from its module keeps the
torch-free ones torch-free.
"""
