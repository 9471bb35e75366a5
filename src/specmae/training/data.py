"""Pre-training data, by the names other code imports: reading corpora and crops (corpus.py),
preparing them (prepare.py), the audio files they are prepared from (sources.py)."""

from .corpus import Corpus, CropBatches, corpus_from_waves, is_prepared, load_corpus
from .prepare import MAX_CLIP_SECONDS, prepare_corpus

__all__ = ["Corpus", "CropBatches", "MAX_CLIP_SECONDS", "corpus_from_waves", "is_prepared", "load_corpus",
           "prepare_corpus"]
