"""Language-model data made by the teacher ahead of training, and the preference stage.

- :mod:`attnkd.lm.cache` / :mod:`attnkd.lm.cache_run`: the offline teacher cache (top-k
  log-probs + tail mass per token; ``attnkd cache-teacher``, ``teacher.cache``);
- :mod:`attnkd.lm.seqkd`: sequence-level KD data (teacher samples stored as a ``seqkd:PATH``
  source with their generation settings; ``attnkd generate-data``);
- :mod:`attnkd.lm.dpo_stage`: DPO after mimic distillation (pairs ranked by the teacher, the
  teacher as reference; ``attnkd dpo``);
- :mod:`attnkd.lm.fingerprint`: the fingerprints that tie these artifacts to their makers.
"""

from attnkd.lm.cache import CachedLMBatches, CacheError, TeacherCache, teacher_targets, write_cache
from attnkd.lm.fingerprint import (
    ids_fingerprint,
    model_fingerprint,
    text_fingerprint,
    tokenizer_fingerprint,
)

__all__ = [
    "CacheError",
    "CachedLMBatches",
    "TeacherCache",
    "ids_fingerprint",
    "model_fingerprint",
    "teacher_targets",
    "text_fingerprint",
    "tokenizer_fingerprint",
    "write_cache",
]
