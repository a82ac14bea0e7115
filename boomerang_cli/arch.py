"""The architecture map: a model's layer layout, discovered rather than hand-written.

From a config and the checkpoint's tensor names we find the decoder-layer list,
the tensors before it (embeddings), after it (final norm, head), whether the
head is tied to the embeddings, and every config field that describes layers
one by one. The discovery instantiates the model on the ``meta`` device (no
memory) so that module order, tied weights and embedding modules come from
transformers itself; what is left as data is the short table of
*pattern* fields below, whose meaning no generic rule can guess.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, cast

import torch

from .errors import UnsupportedArchitectureError
from .model_config import load_config, require_causal_lm
from .tensors import ModelWeights

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class PatternField:
    """A config field that encodes a per-layer property as a rule, not a list.

    ``flag(value, layer)`` says whether ``layer`` has the property in a model with
    that field value; ``encode(flags)`` gives back a field value describing a
    sequence of flags, or ``None`` when the rule cannot express that sequence (the
    explicit per-layer list then carries the truth, e.g. ``layer_types``).
    """

    flag: Callable[[Any, int], bool]
    encode: Callable[[Sequence[bool]], Any]


def _prefix_encode(flags: Sequence[bool]) -> int | None:
    n = sum(flags)
    return n if all(flags[:n]) and not any(flags[n:]) else None


def _period_encode(flags: Sequence[bool]) -> int | None:
    for p in range(1, len(flags) + 2):
        if all(f == ((i + 1) % p == 0) for i, f in enumerate(flags)):
            return p
    return None


def _every_n_encode(flags: Sequence[bool]) -> int | None:
    for n in range(1, len(flags) + 1):
        if all(f == (i % n == 0) for i, f in enumerate(flags)):
            return n
    return None


#: Layer-pattern fields, by name. Data, not if-chains: add a row to support one more.
PATTERN_FIELDS: dict[str, PatternField] = {
    # Qwen2/Qwen3: layers below max_window_layers use full attention.
    "max_window_layers": PatternField(lambda v, i: i < v, _prefix_encode),
    # DeepSeek-style: the first k layers are dense, the rest MoE.
    "first_k_dense_replace": PatternField(lambda v, i: i < v, _prefix_encode),
    # Gemma2/3, Cohere2: every p-th layer is global.
    "sliding_window_pattern": PatternField(lambda v, i: (i + 1) % v == 0, _period_encode),
    "_sliding_window_pattern": PatternField(lambda v, i: (i + 1) % v == 0, _period_encode),
    "global_attn_every_n_layers": PatternField(lambda v, i: i % v == 0, _every_n_encode),
}

#: Config lists that never describe layers, even when their length equals the layer count.
NOT_PER_LAYER = frozenset(
    {
        "architectures",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "suppress_tokens",
        "begin_suppress_tokens",
        "bad_words_ids",
        "forced_decoder_ids",
    }
)

#: Config keys that name the layer count, first found wins.
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


@dataclass(frozen=True)
class ArchMap:
    """Where a model's tensors sit relative to its decoder layers.

    All tensor names are canonical: the names ``save_pretrained`` writes (the
    model's state-dict keys). ``rename`` maps a checkpoint's own names (e.g. the
    hub's ``gpt2`` without its ``transformer.`` prefix) to canonical ones.
    """

    model_type: str
    architecture: str
    num_layers: int
    layers_path: str  # module path of the decoder-layer ModuleList, e.g. "model.layers"
    layer_keys: tuple[str, ...]  # tensor names inside one layer, e.g. "mlp.up_proj.weight"
    pre: tuple[str, ...]  # tensors before the layers (embeddings)
    post: tuple[str, ...]  # tensors after the layers (final norm, head)
    embed: str  # canonical name of the input-embedding weight
    head: str  # canonical name of the LM-head weight (stored or not)
    head_stored: bool  # False when tied and saved once, as the embeddings
    tied: bool
    list_fields: tuple[str, ...]  # config lists with one entry per layer
    pattern_fields: tuple[str, ...]
    rename: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def layer_tensor(self, layer: int, key: str) -> str:
        return f"{self.layers_path}.{layer}.{key}"

    def checkpoint_name(self, canonical: str) -> str:
        """The name this checkpoint stores ``canonical`` under."""
        for ck, can in self.rename.items():
            if can == canonical:
                return ck
        return canonical

    def per_layer_config(self, config: Any) -> list[dict[str, Any]]:
        """Each layer's values of every per-layer field (lists and pattern fields)."""
        out: list[dict[str, Any]] = [{} for _ in range(self.num_layers)]
        for name in self.list_fields:
            values = getattr(config, name)
            for i in range(self.num_layers):
                out[i][name] = copy.deepcopy(values[i])
        for name in self.pattern_fields:
            value = getattr(config, name)
            for i in range(self.num_layers):
                out[i][name] = PATTERN_FIELDS[name].flag(value, i)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "architecture": self.architecture,
            "num_layers": self.num_layers,
            "layers_path": self.layers_path,
            "embed": self.embed,
            "head": self.head,
            "head_stored": self.head_stored,
            "tied": self.tied,
            "pre": list(self.pre),
            "post": list(self.post),
            "per_layer_fields": list(self.list_fields) + list(self.pattern_fields),
        }


def text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


#: Config fields that bound the sequence length, in the order architectures use them.
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def max_positions(config: Any) -> int | None:
    """The longest sequence the model's positions allow, or None when the config sets no bound."""
    tc = text_config(config)
    for key in POSITION_KEYS:
        value = getattr(tc, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def meta_model(config: Any, trust_remote_code: bool = False) -> PreTrainedModel:
    """The model with no storage: module order and tying, for free."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise UnsupportedArchitectureError(
            f"model type {getattr(config, 'model_type', '?')!r} is not a causal language model "
            f"transformers knows ({str(exc).splitlines()[0][:120]}); boomerang needs a decoder-only LM"
        ) from None


def _renamings(model: PreTrainedModel) -> list[tuple[str, str]]:
    """transformers' checkpoint->model key renamings for this model (regex pairs)."""
    try:
        from transformers.conversion_mapping import WeightRenaming, get_model_conversion_mapping

        transforms = get_model_conversion_mapping(model)
    except Exception:  # older transformers: no renamings to honour
        return []
    pairs: list[tuple[str, str]] = []
    for t in transforms:
        if isinstance(t, WeightRenaming):
            for src, tgt in zip(t.source_patterns, t.target_patterns):
                pairs.append((src, tgt))
    return pairs


def _find_layers(model: torch.nn.Module, n: int) -> str:
    candidates = [
        name
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n and len({type(m) for m in mod}) == 1
    ]
    if not candidates:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}: found no list of {n} decoder layers among its modules"
        )
    # The outermost list of the right length is the decoder stack.
    return min(candidates, key=lambda s: s.count("."))


def decoder_layers(model: torch.nn.Module, layers_path: str) -> torch.nn.ModuleList:
    """The decoder layers at ``layers_path`` (an ``ArchMap``'s, a ModuleList by :func:`_find_layers`), typed
    as such where ``get_submodule`` says only Module."""
    return cast(torch.nn.ModuleList, model.get_submodule(layers_path))


def _checkpoint_renames(model: Any, weight_names: Sequence[str], state_keys: list[str]) -> dict[str, str]:
    """Checkpoint names that are not state-dict keys, mapped onto them (every other name is one)."""
    key_set = set(state_keys)
    # Map checkpoint names onto canonical state-dict keys: transformers' own
    # renamings first (e.g. gpt_neox saves lm_head as embed_out), then a suffix
    # match for a missing base-model prefix (the hub's original gpt2).
    renamings = _renamings(model)
    rename: dict[str, str] = {}
    unknown: list[str] = []
    for name in weight_names:
        if name in key_set:
            continue
        renamed = name
        for pattern, target in renamings:
            renamed = re.sub(pattern, target, renamed)
        matches = [renamed] if renamed in key_set else [k for k in state_keys if k.endswith("." + name)]
        if len(matches) == 1:
            rename[name] = matches[0]
        elif not re.search(r"\.(attn\.(masked_)?bias|rotary_emb\.inv_freq)$", name):
            unknown.append(name)
    if unknown:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}: checkpoint tensors not understood: "
            + ", ".join(unknown[:5])
            + (" ..." if len(unknown) > 5 else "")
        )
    return rename


def _layer_layout(
    model: Any, state_keys: list[str], present: set[str], layers_path: str, n: int
) -> tuple[list[str], list[str], list[str]]:
    """Tensor names inside one layer, before the layers and after them; every layer alike, nothing missing."""
    layer_prefix = layers_path + "."
    layer_re = re.compile(re.escape(layer_prefix) + r"(\d+)\.(.+)$")
    layer_keys: list[str] = []
    pre: list[str] = []
    post: list[str] = []
    seen_layer = False
    for k in state_keys:
        m = layer_re.match(k)
        if m:
            seen_layer = True
            if m.group(1) == "0" and k in present:
                layer_keys.append(m.group(2))
            continue
        if k not in present:
            continue
        (post if seen_layer else pre).append(k)
    per_layer: dict[int, set[str]] = {i: set() for i in range(n)}
    for k in present:
        m = layer_re.match(k)
        if m and int(m.group(1)) < n:
            per_layer[int(m.group(1))].add(m.group(2))
    for i in range(n):
        missing = [k for k in layer_keys if k not in per_layer[i]]
        extra = sorted(per_layer[i] - set(layer_keys))
        if missing or extra:
            what = f"lacks tensors {missing[:3]}" if missing else f"has extra tensors {extra[:3]}"
            raise UnsupportedArchitectureError(
                f"layer {i} of {type(model).__name__} {what} compared with layer 0; "
                "layers with different structure are not supported"
            )
    absent = [k for k, _ in model.named_parameters() if k not in present]
    if absent:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}: checkpoint lacks tensors "
            + ", ".join(absent[:5])
            + (" ..." if len(absent) > 5 else "")
            + "; does config.json match the weights?"
        )
    return layer_keys, pre, post


def build_arch_map(config: Any, weight_names: Sequence[str], trust_remote_code: bool = False) -> ArchMap:
    """Discover the layout of the model described by ``config`` stored under ``weight_names``."""
    tcfg = text_config(config)
    n = getattr(tcfg, "num_hidden_layers", None)
    if not isinstance(n, int) or n < 1:
        raise UnsupportedArchitectureError(
            f"config of type {getattr(config, 'model_type', '?')!r} has no num_hidden_layers"
        )
    require_causal_lm(config, trust_remote_code)
    model = meta_model(config, trust_remote_code)
    layers_path = _find_layers(model, n)
    state_keys = list(model.state_dict().keys())
    rename = _checkpoint_renames(model, weight_names, state_keys)
    present = {rename.get(w, w) for w in weight_names} & set(state_keys)
    layer_keys, pre, post = _layer_layout(model, state_keys, present, layers_path, n)

    modules = {id(mod): name for name, mod in model.named_modules()}
    ie, oe = model.get_input_embeddings(), model.get_output_embeddings()
    embed = f"{modules[id(ie)]}.weight"
    if oe is None:
        raise UnsupportedArchitectureError(f"{type(model).__name__}: has no output embeddings (LM head)")
    head = f"{modules[id(oe)]}.weight"
    if embed not in pre:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}: input embeddings {embed} are not stored before the layers"
        )
    tied = oe is not None and oe.weight is ie.weight
    head_stored = head in present
    if not head_stored and not tied:
        raise UnsupportedArchitectureError(f"{type(model).__name__}: head {head} missing from checkpoint")

    list_fields = tuple(
        k
        for k, v in tcfg.to_dict().items()
        if isinstance(v, (list, tuple)) and len(v) == n and n > 1 and k not in NOT_PER_LAYER
    )
    stored = tcfg.to_dict()
    pattern_fields = tuple(
        k
        for k in PATTERN_FIELDS
        if isinstance(stored.get(k), int) and not isinstance(stored[k], bool) and stored[k] > 0
    )
    archs = getattr(config, "architectures", None) or [type(model).__name__]
    return ArchMap(
        model_type=str(getattr(config, "model_type", "")),
        architecture=archs[0],
        num_layers=n,
        layers_path=layers_path,
        layer_keys=tuple(layer_keys),
        pre=tuple(pre),
        post=tuple(post),
        embed=embed,
        head=head,
        head_stored=head_stored,
        tied=tied,
        list_fields=list_fields,
        pattern_fields=pattern_fields,
        rename=rename,
    )


@dataclass
class ModelInfo:
    """A resolved model's config, lazy weights and layout, loaded once."""

    path: Path
    config: Any
    weights: ModelWeights
    arch: ArchMap

    @classmethod
    def load(cls, path: Path, trust_remote_code: bool = False) -> "ModelInfo":
        config = load_config(path, trust_remote_code)
        weights = ModelWeights(path)
        arch = build_arch_map(config, weights.keys(), trust_remote_code)
        return cls(Path(path), config, weights, arch)

    def tensor(self, canonical: str) -> str:
        """Checkpoint name of a canonical tensor name."""
        return self.arch.checkpoint_name(canonical)

    def layer_params(self, layer: int) -> int:
        return sum(self.weights.info(self.tensor(self.arch.layer_tensor(layer, k))).numel for k in self.arch.layer_keys)

    def count_params(self, names: Sequence[str]) -> int:
        return sum(self.weights.info(self.tensor(k)).numel for k in names)


def _set_pattern(config: Any, name: str, value: int | None) -> None:
    try:
        setattr(config, name, value)
    except AttributeError:  # a read-only alias of another field
        pass
    except Exception as exc:  # huggingface_hub's strict dataclasses refuse None for an int field
        if value is not None or "Validation" not in type(exc).__name__:
            raise
        config.__dict__.pop(name, None)


def derived_config(
    base_config: Any,
    arch: ArchMap,
    layers: Sequence[dict[str, Any]],
    *,
    tied: bool,
    dtype: torch.dtype | None = None,
) -> Any:
    """A copy of ``base_config`` describing a model whose layers carry ``layers``'
    per-layer values (from :meth:`ArchMap.per_layer_config` of each layer's source).

    Every pattern field is re-encoded from the layers, or cleared (``null``)
    when no value of its rule describes them, so it never contradicts the
    explicit list (``layer_types``) that other readers (llama.cpp's converter,
    vLLM, older transformers) may not look at. A field the config class types
    as an integer cannot be null and is removed instead; it cannot be
    undescribable for boomerang's own students and members, whose layers keep
    the teacher's order."""
    cfg = copy.deepcopy(base_config)
    tcfg = text_config(cfg)
    tcfg.num_hidden_layers = len(layers)
    for name in arch.list_fields:
        setattr(tcfg, name, [copy.deepcopy(l[name]) for l in layers])
    for name in arch.pattern_fields:
        # A layer whose source has no such rule (its own field was cleared) leaves nothing to encode.
        enc = PATTERN_FIELDS[name].encode([bool(l[name]) for l in layers]) if all(name in l for l in layers) else None
        _set_pattern(tcfg, name, enc)
    # Tying is decided by content, so an untied base may give a tied output too.
    tcfg.tie_word_embeddings = tied
    if tcfg is not cfg and hasattr(cfg, "tie_word_embeddings"):
        cfg.tie_word_embeddings = tied
    if dtype is not None:
        cfg.dtype = dtype
    return cfg
