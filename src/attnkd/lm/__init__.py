"""Language-model data made by the teacher ahead of training, and the preference stage.

- :mod:`attnkd.lm.cache_run`: ``attnkd cache-teacher`` (the offline teacher cache; its format,
  reader and run matching live in :mod:`attnkd.data.teacher_cache` and
  :mod:`attnkd.data.cache_match`; training reads it through ``teacher.cache``);
- :mod:`attnkd.lm.seqkd`: sequence-level KD data (teacher samples stored with their generation
  settings; ``attnkd generate-data``; read back as the ``seqkd:FOLDER`` source,
  :mod:`attnkd.data.seqkd`);
- :mod:`attnkd.lm.dpo_stage`: DPO after mimic distillation (pairs ranked by the teacher, the
  teacher as reference; ``attnkd dpo``, stage kind ``dpo``);
- :mod:`attnkd.lm.sampling`: batched KV-cached sampling and scoring of continuations.
"""

from attnkd.lm.cache_run import default_cache_dir, run_cache_teacher
from attnkd.lm.dpo_stage import PreferencePairs, build_pairs, run_dpo_stage, win_rate
from attnkd.lm.sampling import continuation_logprobs, sample_continuations
from attnkd.lm.seqkd import GenerationSettings, run_generate_data

__all__ = [
    "GenerationSettings",
    "PreferencePairs",
    "build_pairs",
    "continuation_logprobs",
    "default_cache_dir",
    "run_cache_teacher",
    "run_dpo_stage",
    "run_generate_data",
    "sample_continuations",
    "win_rate",
]
