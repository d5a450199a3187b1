"""SAE embeddings toolkit: compute, storage and analysis; never imports Streamlit."""
from backend import config as _config  # noqa: F401  (sets offline env defaults first)
