"""Export a family as GGUF files for llama.cpp and Ollama, each unique source tensor converted once.

Every member is made of the teacher's and the student's tensors (a
:class:`~boomerang_cli.compose.Composition` is a list of references into their
safetensors). So the export converts and quantizes each distinct source tensor
once into a scratch file, then assembles every member's ``.gguf`` by writing its
header and metadata with the ``gguf`` package's ``GGUFWriter`` and streaming the
already-quantized bytes after it: a family of fifteen members costs about two
models' worth of quantization, not fifteen.

What llama.cpp reads is mapped with the ``gguf`` package itself: tensor names
from ``gguf.get_tensor_name_map``, quantization from ``gguf.quants.quantize``,
metadata keys from ``GGUFWriter``. Only llama.cpp's HF -> GGUF permutation of
llama's Q and K rows (``convert_hf_to_gguf.py``; transformers' GGUF loader
undoes it) and the choice of per-tensor types are written here. docs/export.md.
"""

from .convert import TensorCache, TensorSpec, permute_rows, tensor_specs, tensor_type
from .gguf_arch import ARCHITECTURES, FORMATS, REFUSED, TYPES, check_exportable, check_type, gguf_arch, llama3_rope_factors
from .metadata import Metadata, family_metadata, write_metadata
from .writer import EXPORT_FORMAT, EXPORT_MANIFEST, EXPORT_SCHEMA_VERSION, ExportedFile, ExportResult, export_family, plan_export

__all__ = [
    "ARCHITECTURES", "EXPORT_FORMAT", "EXPORT_MANIFEST", "EXPORT_SCHEMA_VERSION", "ExportResult", "ExportedFile",
    "FORMATS", "Metadata", "REFUSED", "TYPES", "TensorCache", "TensorSpec", "check_exportable", "check_type",
    "export_family", "family_metadata", "gguf_arch", "llama3_rope_factors", "permute_rows", "plan_export",
    "tensor_specs", "tensor_type", "write_metadata",
]
