"""Forward passes that score models on fixed token blocks, below both of their users.

``eval`` (perplexity, baselines) and the calibrated orders (KL to the teacher,
:mod:`boomerang_cli.orders.kl`) run models the same way, so the machinery sits
here and both import it downward:

- :mod:`.perplexity`: the token blocks (``EvalData``) and one model's logits and NLL on them.
- :mod:`.trunk`: a family as a prefix tree of layer sequences, shared layers run once.
"""
