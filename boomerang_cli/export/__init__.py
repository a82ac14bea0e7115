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

The command's entry point is :func:`.writer.run_export` (an :class:`.request.ExportRequest`
in, an ``ExportResult`` out). Nothing is imported here, so that ``export.request`` (the
flags' defaults) imports no torch: import each name from its module.
"""
