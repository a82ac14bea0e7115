"""Shared-trunk evaluation: a family as a prefix tree of layer sequences.

Every model of a family computes ``head(layers(embed(x)))`` where the embedding
comes from one source model, each layer from (source model, layer index) and the
final norm + head from one source model. Members that start with the same
embeddings and the same leading layers compute identical activations up to the
point where they differ, so the family is walked as a prefix tree (one root per
embedding source), depth first, holding only the activations on the current
path; each member's final norm and head run at its leaf.

Running single decoder layers generically: each source model runs once per batch
with its decoder layers replaced by *stubs* that record the positional and
keyword arguments the model's own forward hands each layer (attention mask for
that layer's type, rotary position embeddings, position ids, ...) and pass the
hidden states through untouched; the input of stub 0 is the embedding stage's
output (gemma's scaling, gpt2's position embeddings included). A real layer is
then called with exactly the arguments it would get inside its own model: those
depend on positions, padding and the layer's type, not on the layers before it,
and a member's per-layer config follows each layer's source (SPEC section 4).
The head stage is the model's own causal-LM forward with stub 0 *injecting* the
trunk's hidden states and the other stubs passing them on, so the final norm,
LM head and any logit post-processing (softcapping, scaling) are the model's own.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn as nn

from ..compose import LayerSource, Stack
from ..errors import UnsupportedArchitectureError


# -- running one model's stages --------------------------------------------------------


class _Stub(nn.Module):
    """Stands in for decoder layer ``index``: records its arguments, passes hidden states on."""

    def __init__(self, index: int, real: nn.Module, session: "_Session") -> None:
        super().__init__()
        self.index = index
        object.__setattr__(self, "_real", real)  # not a submodule: no parameters, no hooks
        object.__setattr__(self, "_session", session)

    def __getattr__(self, name: str) -> Any:
        # Some model loops read layer attributes (e.g. ``decoder_layer.attention_type``).
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_real"), name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        s: _Session = object.__getattribute__(self, "_session")
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        s.calls[self.index] = (rest, kwargs)
        if self.index == 0:
            s.embedded = hidden
            if s.inject is not None:
                return s.inject
        return hidden


@dataclass
class _Session:
    calls: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=dict)
    embedded: torch.Tensor | None = None
    inject: torch.Tensor | None = None


@dataclass
class Capture:
    """One batch as a source model sees it: its embedding output and each layer's arguments."""

    embedded: torch.Tensor
    calls: dict[int, tuple[tuple[Any, ...], dict[str, Any]]]


def _module(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


class LayerRunner:
    """Runs a loaded causal LM stage by stage: embeddings, one decoder layer, final norm + head."""

    def __init__(self, model: nn.Module, layers_path: str) -> None:
        self.model = model
        parent_path, _, self.attr = layers_path.rpartition(".")
        self.parent = _module(model, parent_path) if parent_path else model
        self.layers = getattr(self.parent, self.attr)
        if not isinstance(self.layers, nn.ModuleList):
            raise UnsupportedArchitectureError(f"{layers_path} of {type(model).__name__} is not a layer list")
        self.num_layers = len(self.layers)
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        self._keep_arg = "logits_to_keep" in params

    @contextlib.contextmanager
    def _stubbed(self, inject: torch.Tensor | None = None) -> Iterator[_Session]:
        session = _Session(inject=inject)
        stubs = nn.ModuleList([_Stub(i, layer, session) for i, layer in enumerate(self.layers)])
        self.parent._modules[self.attr] = stubs
        try:
            yield session
        finally:
            self.parent._modules[self.attr] = self.layers

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor | None, **kw: Any) -> Any:
        return self.model(
            input_ids=ids.to(self.device),
            attention_mask=None if mask is None else mask.to(self.device),
            use_cache=False,
            **kw,
        )

    def capture(self, ids: torch.Tensor, mask: torch.Tensor | None) -> Capture:
        """Embedding output and per-layer arguments for this batch; no layer computes."""
        with torch.no_grad(), self._stubbed() as s:
            if self._keep_arg:  # the causal LM's own forward, head on one position only
                self._forward(ids, mask, logits_to_keep=1)
            else:  # the base model (parent of the layer list): no head at all
                self.parent(
                    input_ids=ids.to(self.device),
                    attention_mask=None if mask is None else mask.to(self.device),
                    use_cache=False,
                )
        missing = [i for i in range(self.num_layers) if i not in s.calls]
        if s.embedded is None or missing:
            raise UnsupportedArchitectureError(
                f"{type(self.model).__name__}: its forward did not call decoder layers {missing[:3]} "
                "one after the other; shared-trunk evaluation cannot run its layers alone"
            )
        return Capture(s.embedded, dict(s.calls))

    def layer(self, index: int, hidden: torch.Tensor, cap: Capture) -> torch.Tensor:
        args, kwargs = cap.calls[index]
        with torch.no_grad():
            out = self.layers[index](hidden, *args, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out

    def logits(self, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Final norm, head and logit post-processing of this model applied to ``hidden``."""
        with torch.no_grad(), self._stubbed(inject=hidden):
            return self._forward(ids, mask).logits


# -- the prefix tree --------------------------------------------------------------------


@dataclass
class Node:
    """A layer-sequence prefix: its children by next layer and the stacks that end here."""

    children: dict[LayerSource, "Node"] = field(default_factory=dict)
    ends: list[tuple[str, str]] = field(default_factory=list)  # (key, head_from)


def prefix_tree(stacks: Mapping[str, Stack]) -> dict[str, Node]:
    """One tree per embedding source; stacks sharing embeddings and leading layers share nodes."""
    roots: dict[str, Node] = {}
    for key, stack in stacks.items():
        node = roots.setdefault(stack.embed_from, Node())
        for ls in stack.layers:
            node = node.children.setdefault(ls, Node())
        node.ends.append((key, stack.head_from))
    return roots


def tree_layer_passes(roots: Mapping[str, Node]) -> int:
    """Decoder-layer evaluations one walk of the tree costs (edges of the tree)."""
    todo = list(roots.values())
    n = 0
    while todo:
        node = todo.pop()
        n += len(node.children)
        todo.extend(node.children.values())
    return n


def flat_layer_passes(stacks: Mapping[str, Stack]) -> int:
    """Decoder-layer evaluations of the same stacks run one by one."""
    return sum(len(s.layers) for s in stacks.values())


def walk(
    roots: Mapping[str, Node],
    runners: Mapping[str, LayerRunner],
    captures: Mapping[str, Capture],
    on_leaf: Callable[[str, torch.Tensor], None],
    head: Callable[[str, torch.Tensor], torch.Tensor],
    on_layer: Callable[[], None] | None = None,
) -> None:
    """Depth-first walk; ``on_leaf(key, logits)`` for every stack ending at a node.

    The stack holds ``(node, parent activations)`` and a child's activations are
    computed only when it is visited, so at any time the live activations are
    those of the current path (a branch point's stay alive until its last child).
    """
    for embed, root in roots.items():
        pending: list[tuple[LayerSource | None, Node, torch.Tensor]] = [(None, root, captures[embed].embedded)]
        while pending:
            source, node, hidden = pending.pop()
            if source is not None:
                hidden = runners[source.model].layer(source.layer, hidden, captures[source.model])
                if on_layer is not None:
                    on_layer()
            for key, head_from in node.ends:
                on_leaf(key, head(head_from, hidden))
            for child_source, child in reversed(list(node.children.items())):
                pending.append((child_source, child, hidden))
            del hidden


class TrunkEvaluator:
    """Logits of many stacks for one batch, sharing every common prefix."""

    def __init__(self, runners: Mapping[str, LayerRunner], stacks: Mapping[str, Stack]) -> None:
        used = set().union(*(s.sources for s in stacks.values())) if stacks else set()
        missing = used - set(runners)
        if missing:
            raise ValueError(f"no runner for source model(s) {sorted(missing)}")
        for key, s in stacks.items():
            for ls in s.layers:
                if not 0 <= ls.layer < runners[ls.model].num_layers:
                    raise ValueError(f"{key}: layer {ls.layer} of {ls.model} does not exist")
        self.runners = {k: r for k, r in runners.items() if k in used}
        self.stacks = dict(stacks)
        self.roots = prefix_tree(self.stacks)
        self.layer_passes = tree_layer_passes(self.roots)
        self.flat_passes = flat_layer_passes(self.stacks)

    def run(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor | None,
        on_leaf: Callable[[str, torch.Tensor], None],
        on_layer: Callable[[], None] | None = None,
    ) -> None:
        captures = {name: r.capture(ids, mask) for name, r in self.runners.items()}
        walk(
            self.roots,
            self.runners,
            captures,
            on_leaf,
            lambda head_from, hidden: self.runners[head_from].logits(hidden, ids, mask),
            on_layer,
        )
