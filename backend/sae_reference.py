"""Build an SAE's reference words (`backend.label_reference`): embed the reference text in a scratch workspace and
keep, per feature, the words its top contexts there fire on most. Run once per SAE, by
`python -m backend reference-words --sae DIR`; the shipped SAEs' files were made so (docs/labels.md)."""
from __future__ import annotations

import tempfile
from pathlib import Path
import pandas as pd

from backend.builtin_data import reference_texts
from backend.config import DEFAULT_MODEL
from backend.feature_precompute import collect_contexts
from backend.jobs import ProgressCallback
from backend.label_reference import FILE_NAME, ReferenceConfig, from_firing_words, write
from backend.label_text import firing_words
from backend.labels import make_decoder
from backend.workspace import Workspace, WorkspaceSpec


def build_reference_words(sae: str | Path, model: str = DEFAULT_MODEL, texts: pd.DataFrame | None = None,
                          out: str | Path | None = None, cfg: ReferenceConfig = ReferenceConfig(),
                          progress: ProgressCallback | None = None) -> Path:
    """Write the reference words of the SAE in folder `sae` (read with `model`) to `out` (default: the SAE's folder).

    texts: a frame with a `text` column (default `builtin_data.reference_texts()`, 2,400 short documents, about
    two minutes on 2 CPU cores for the default SAE). Read in float32 on every machine: a bf16 forward (CUDA, native
    bf16 CPUs) rounds near-ties at the SAE's top k differently, and the shipped file should not depend on the CPU
    that wrote it."""
    texts = reference_texts() if texts is None else texts
    source = (f"{len(texts)} offline documents" + (f" ({', '.join(sorted(texts['source'].unique()))})"
                                                   if "source" in texts else ""))
    with tempfile.TemporaryDirectory() as tmp:
        spec = WorkspaceSpec(model=model, sae=str(sae), dtype="float32")  # the same words whatever the CPU
        ws = Workspace.create(Path(tmp) / "reference.duckdb", spec)
        try:
            ws.add_corpus("reference", texts[["text"]], "text")
            ws.embed("reference", progress=progress)
            ctx = collect_contexts(ws, ws.corpus("reference").corpus_id)
            skip = set(getattr(ws.reader.tokenizer, "all_special_ids", []) or [])
            words = firing_words(ctx, make_decoder(ws.reader.tokenizer), skip)
            ref = from_firing_words(words, ws.settings.sae_sha256 or "", len(texts), source, cfg)
        finally:
            ws.close()
    return write(Path(out) if out else Path(sae) / FILE_NAME, ref)
