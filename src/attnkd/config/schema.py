"""Typed configuration. YAML files are the serialised form of :class:`DistillConfig`.

At most three levels deep: ``DistillConfig`` -> section dataclass -> (list of) loss terms.
Every field has a default, so ``DistillConfig()`` is the default recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TeacherConfig:
    """The frozen teacher."""

    name: str = "sentence-transformers/all-MiniLM-L6-v2"
    """Hub id, local folder, or packaged alias (resolved offline first)."""
    attn_implementation: str = "sdpa"
    """'sdpa' (fused) or 'eager'. q/k/v capture works on both."""
    recipe: str = ""
    """image_classification, sequence_classification: a recipe that trains this teacher, run
    first when ``name`` (the folder it exports to) does not exist yet; '' means never."""
    cache: str = ""
    """causal_lm: a teacher cache folder (``attnkd cache-teacher``); training then reads the
    teacher's top-k targets from it and never runs the teacher ('' = run the teacher)."""


@dataclass
class StudentConfig:
    """How the student is built."""

    init: str = "teacher"
    """'teacher' (cut layers from the teacher) or a model name/path to start from."""
    layers: list[int] | None = None
    """Teacher layers to keep when init='teacher' (give this or `layer_rule`, not both)."""
    layer_rule: str = ""
    """Alternative to `layers`: 'every:k', 'first:n' or 'last:n'."""
    hidden_size: int | None = None
    """Narrower width than the teacher (fresh init where shapes change); None keeps it."""
    num_heads: int | None = None
    intermediate_size: int | None = None
    attn_implementation: str = "sdpa"
    freeze: list[str] = field(default_factory=list)
    """Parameter-name prefixes of the student kept frozen (e.g. 'embeddings',
    'encoder.layer.0'); each must match at least one parameter. Per stage in a staged run."""


@dataclass
class LossTermConfig:
    """One weighted loss term; see ``attnkd ls losses`` for names and their options."""

    name: str = "relation"
    weight: float = 1.0
    teacher_layer: int = -1
    """Teacher layer index (negative counts from the end)."""
    student_layer: int = -1
    relation_heads: int | None = None
    """Relation heads (MiniLMv2); None means the teacher's head count."""
    relations: list[str] = field(default_factory=lambda: ["qq", "kk", "vv"])
    temperature: float = 1.0
    kind: str = "fkl"
    """Vocabulary divergence of the 'logits' term: 'fkl', 'rkl', 'jsd' (with ``beta``), 'tvd'."""
    beta: float = 0.5
    top_k: int | None = None
    """'logits' term: keep only the teacher's k most likely tokens (biased: the teacher's mass
    outside them is dropped; see ``attnkd.losses.token_divergence``). With ``teacher.cache``
    it must equal the cache's k, and the teacher's remaining mass is kept as one tail bucket
    (``attnkd.losses.topk``)."""
    gamma: float = 1.0
    """'cls_ofa': OFA-KD target-enhancement exponent (1 = plain soft cross-entropy)."""
    projector: bool = False
    """Learn a linear map student width -> teacher width (hidden/embedding terms)."""
    impl: str = "auto"
    """'auto', 'naive' or 'chunked' for attention/relation/vocabulary losses."""
    gt_weight: float = 0.0
    """'mixed_kd': weight ξ of the true label in the target ξ·y + (1−ξ)·p_T (self-distillation
    with ground-truth mixing); 'exit_kd': weight of the exit's own cross-entropy;
    'sentence_pair_rank' (cached sentence teachers): weight ξ of each STS-B training pair's gold
    score / 5 in the ranking target ξ·gold + (1−ξ)·teacher similarity."""


@dataclass
class TeacherEntry:
    """One member of a teacher set (``teachers:``); see docs/teachers.md."""

    name: str = ""
    """Hub id, local folder, packaged alias, or image builder / exported image-model folder."""
    label: str = ""
    """Short id used in loss labels and results; '' means 't0', 't1', ... by position."""
    weight: float = 1.0
    """Weight of this teacher in the ensemble targets (normalised over the set)."""
    losses: list[LossTermConfig] = field(default_factory=list)
    """Loss terms against this teacher alone (Hybrid Distill: relations from one teacher, logits
    from another); the top-level ``losses`` are against the ensemble of all teachers."""
    random_init: bool = False
    """Re-initialise this teacher's weights at random (seeded by train.seed + position): a random
    teacher (Sarnthein et al.) still teaches useful features."""
    recipe: str = ""
    """image_classification: the recipe that trains this teacher when ``name`` does not exist."""
    attn_implementation: str = "sdpa"


@dataclass
class StrategyConfig:
    """Who teaches, beyond one frozen teacher (docs/teachers.md)."""

    generations: int = 1
    """Self-distillation generations: generation g >= 1 is a fresh run (``<name>-gen<g>``)
    whose only teacher is generation g-1's exported student; generation 0 is the recipe as
    written. 1 = no extra generations."""
    peer: str = ""
    """Mutual distillation: a second model (image builder or folder) trained together with the
    student, each learning from the other's detached outputs through the recipe's loss terms
    (Deep Mutual Learning, Trans-Encoder, CoMD); '' = off."""
    partitions: int = 1
    """Several students, each owning one of ``partitions`` disjoint parts of the training data
    (runs ``<name>-part<j>``); 1 = off."""
    part: int | None = None
    """The part this run trains on (set per run by the partitions loop); None = all data."""


@dataclass
class DataConfig:
    data_dir: str | None = None
    """Benchmark data folder; None means $ATTNKD_DATA_DIR, then ../shared/data."""
    train_sources: list[str] = field(
        default_factory=lambda: ["stsb:train", "sst2:train", "mrpc:train", "rte:train", "wikitext2"]
    )
    """Unlabeled sentence sources: 'stsb:train', 'sst2:train', 'mrpc:train', 'rte:train',
    'wikitext2', 'tinyshakespeare', or 'file:PATH' (one sentence per line / tsv / jsonl)."""
    max_sentences: int | None = None
    """Cap on the training sentences (seeded choice; sequence_classification: labelled rows)."""
    eval_task: str = "stsb:dev"
    """Final evaluation split: 'stsb:dev' or 'stsb:val' (a held-out part of STS-B train);
    sequence_classification: 'sst2:heldout', 'mrpc:dev' or 'rte:dev'."""
    select_task: str = "stsb:val"
    """Split evaluated every train.eval_every steps to pick the best checkpoint; keeping it apart
    from eval_task means the reported figure is not tuned on (sequence_classification: 'sst2:val',
    'mrpc:val' or 'rte:val', held out of the data set's train file)."""
    unlabeled_sources: list[str] = field(default_factory=list)
    """sequence_classification: unlabeled sentence sources (train_sources syntax) added to the
    labelled rows with no label, so only the teacher's soft labels teach them (SSLD)."""
    max_unlabeled: int | None = None
    """Cap on the unlabeled sentences (seeded choice); None keeps them all."""
    exclude_files: list[str] = field(default_factory=list)
    """Sentence task: files whose sentences must never be trained on (e.g. a test set you will
    score on later). Each is a plain path, read like 'file:PATH', or a source spec
    'file:PATH[#COLUMNS]' (the train_sources syntax; a named source such as 'rte:dev' works too).
    Matching ignores case, punctuation, spacing and tokenisation, as for the evaluation splits."""
    pair_batches: bool = False
    """Sentence task with cached ``teachers:``: build each batch from whole training pairs of the
    pair sources (stsb/mrpc/rte), so related sentences meet in the similarity matrix."""
    mined_pairs: int = 0
    """Pair batches: also pair every training sentence with its k nearest other training
    sentences by the teachers' cached embeddings (teacher-mined related pairs); 0 = off."""
    val_fraction: float = 0.1
    """Share held out for checkpoint selection (of STS-B train, or of the LM token blocks)."""
    eval_fraction: float = 0.1
    """causal_lm: share of the token blocks (the last ones) held out for the final evaluation."""
    max_length: int = 128
    """Longest tokenised sentence (sentence task), or the block length in tokens (causal_lm)."""
    max_images: int | None = None
    """image_classification: keep only this many of the training images left after the
    validation cut (a class-balanced choice seeded by train.seed: the data-limited regime);
    None keeps them all."""
    image_dir: str | None = None
    """image_classification: the Fashion-MNIST idx folder; None means $ATTNKD_FMNIST_DIR, then
    /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist)."""
    bad_rows: str = "error"
    """'error' stops at the first malformed row (naming file and line); 'skip' counts and skips."""
    on_policy: float = 0.0
    """causal_lm: fraction λ of each batch's rows replaced by the student's own continuation
    after ``on_policy_prefix`` tokens, scored by the teacher (GKD / DistillSpec); 0 = off."""
    on_policy_prefix: int = 32
    """causal_lm on-policy rows: data tokens kept as the prompt before the student samples."""
    mask_ratio: float = 0.0
    """sequence_classification: share of each row's real non-special tokens replaced by the mask
    token in the student's input only (DMAE; the teacher sees the whole row); 0 = off."""
    mixture: str = ""
    """sequence_classification: '' (every row alike) or 'ddk': each domain (the labelled rows,
    each unlabeled source) is sampled by its teacher-student loss gap, updated during training."""
    mixture_every: int = 50
    """'ddk': optimizer steps between updates of the domain weights (the first is at step 0)."""
    mixture_smooth: float = 0.5
    """'ddk': weight of the previous smoothed gap in each update (0 = the latest gap alone)."""
    mixture_floor: float = 0.1
    """'ddk': share of every batch spread evenly over the domains, so none is starved."""
    mixture_probe: int = 64
    """'ddk': rows per domain held out of training to measure the gap."""


@dataclass
class TrainConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    clip_norm: float = 1.0
    eval_every: int = 250
    save_every: int = 250
    log_every: int = 10
    bf16: bool = False
    """Deprecated: same as ``precision: bf16``."""
    seed: int = 0
    max_minutes: float | None = None
    """Stop (cleanly, with a checkpoint) once this much wall time has passed."""
    freeze_embeddings: bool = False
    select_metric: str = ""
    """Checkpoint criterion; '' = the task's own (causal_lm: lowest perplexity). causal_lm also
    takes 'alpha' (highest teacher-forced speculative acceptance 1 - TVD on the selection
    split, for drafts) or 'alpha_greedy' (argmax agreement)."""
    eval_at_start: bool = False
    """Evaluate the starting weights (step 0) too, so the best checkpoint is never worse than
    the initial student on the selection split (useful when starting from a trained model)."""
    nonfinite: str = "abort"
    """A non-finite loss or gradient: 'abort' (stop with an error naming the loss terms and the
    batch) or 'skip' (drop that step's update; counted and logged). Checked every step."""
    keep_checkpoints: int = 2
    """Step checkpoints kept (``checkpoints/step-00000250/``; ``checkpoints/last`` points at the
    newest); ``--resume`` takes the newest valid one, skipping a corrupt one with a warning."""
    device: str = "auto"
    """'auto' (CUDA, then MPS, then CPU), or 'cpu', 'cuda', 'cuda:1', 'mps'."""
    precision: str = "fp32"
    """'fp32', 'bf16' or 'fp16': autocast of the student and teacher forwards (losses stay
    float32; fp16 uses a gradient scaler). Replaces the deprecated ``bf16: true``."""
    teacher_dtype: str | None = None
    """Hold the frozen teacher in 'bf16' or 'fp16' (half the memory); null keeps float32."""
    distributed: str = "ddp"
    """Under torchrun with WORLD_SIZE > 1: 'ddp' (replicated student, averaged gradients) or
    'fsdp' (FSDP2 fully_shard: student, gradients and optimizer state sharded). batch_size is
    then per rank: each optimizer step sees world_size * batch_size * grad_accum items."""
    shard_teacher: bool = False
    """Under torchrun: shard the frozen teacher with FSDP2 (``fully_shard`` per block, weights
    gathered one block at a time for its forward), for teachers too large for one device. It
    stays outside what the optimizer sees and gets no gradients; the final teacher score is
    taken on rank 0 from an unsharded copy loaded afresh."""


@dataclass
class LoraConfig:
    """LoRA adapters for conversion stage 3 (``convert.lora``; PEFT, the ``lm`` extra)."""

    rank: int = 0
    """Adapter rank; 0 = no adapters (stage 3 fine-tunes as ``e2e_params`` says)."""
    alpha: float = 16.0
    """Scale of the adapters' update: ``alpha / rank``."""
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Linear layers of the converted blocks that get adapters: a module name or the end of
    one (e.g. 'o_proj', 'attention.output.dense')."""


@dataclass
class ConvertConfig:
    """Attention conversion (``attnkd convert``, METHODS.md section 5); ``kind`` '' = none."""

    kind: str = ""
    """'linear' (Hedgehog), 'window' (sliding window), 'hybrid' (LoLCATs window + linear),
    'shared' (EchoAtt: reuse an earlier layer's attention) or 'sparse' (SEA: top-k keys)."""
    layers: list[int] | None = None
    """Layers whose attention is converted; None = all."""
    window: int = 64
    chunk: int | None = None
    """Rows per chunk of the parallel form; None = the window (64 for linear)."""
    share: dict[int, int] | None = None
    """'shared': sharing layer -> source layer, e.g. {4: 3, 5: 3}."""
    topk: int = 32
    """'sparse': keys kept per query."""
    rank: int = 8
    """'sparse': dimensions of the score estimate."""
    terrace: bool = False
    """'window'/'hybrid', causal models: window in tiles of ``window`` keys, each query seeing
    its own tile and the one before by softmax (LoLCATs' terracing; needs chunk = window)."""
    sinks: int = 0
    """'window'/'hybrid', causal models: the first ``sinks`` positions stay softmax keys of
    every query (StreamingLLM's attention sinks; at most the chunk)."""
    loss: str = "mse"
    """Stage 1 (attention transfer): 'mse' (attention outputs), 'ce' (attention weights,
    linear only), 'ce+mse', or 'kl' (sparse: estimated attention vs the teacher's)."""
    stages: list[str] = field(default_factory=lambda: ["transfer"])
    """Conversion stages in order: 'transfer' (stage 1, new parameters on attention), 'align'
    (stage 2, MOHAWK: each converted block's output given the teacher's block input) and 'e2e'
    (stage 3, end-to-end KD of the whole model); each runs ``train`` (steps, minutes) once."""
    e2e_params: str = "attention"
    """What stages 2-3 train besides the new parameters: 'attention' (q/k/v/o of converted
    layers) or 'mixer' (the new parameters only)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Stage 3 (e2e) through LoRA adapters instead (``lora.rank`` >= 1): the adapters and the
    new parameters train, every inherited weight stays frozen; the adapters are merged into
    the weights before the model is saved."""


STAGE_SECTIONS = ("teacher", "student", "data", "train", "convert", "dpo")
"""The sections a stage may override key by key (``losses`` and ``teachers`` it replaces
whole)."""


@dataclass
class StageConfig:
    """One stage of a staged run (``stages:``; see :mod:`attnkd.config.stages`).

    The stage's sections are merged key by key over the recipe's top level (a key the stage
    does not give keeps the top-level value, so ``key=value`` overrides of the top level reach
    every stage that does not set that key); ``losses`` and ``teachers``, when given, replace
    the top level's lists whole.
    """

    name: str = ""
    """Short name (letters, digits, '-', '_'); the stage runs in ``runs/NAME/stages/NN-<name>``."""
    kind: str = "distill"
    """Stage runner ('distill'; ``attnkd ls stages`` lists the registered kinds)."""
    carry: str = "student"
    """What this stage takes from the one before: 'student' (continue training its exported
    student), 'teacher' (its exported student is this stage's teacher: assistant chains) or
    'none'. Ignored by the first stage."""
    teacher: dict[str, Any] = field(default_factory=dict)
    teachers: list[TeacherEntry] | None = None
    """The stage's teacher set, replacing the top level's whole (None keeps it)."""
    student: dict[str, Any] = field(default_factory=dict)
    losses: list[LossTermConfig] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    convert: dict[str, Any] = field(default_factory=dict)
    dpo: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChainConfig:
    """Teacher-assistant chain (TAKD; MiniLM): teacher -> assistant -> student as two stages."""

    assistant: dict[str, Any] | None = None
    """None: no chain. Otherwise the assistant's ``student`` keys merged over the top-level
    ``student`` (cut from the teacher); ``layers`` may be a number n (n teacher layers evenly
    spread, first and last kept); ``{}`` picks n halfway between teacher and student depth. The
    top-level ``student`` is then cut from the assistant (its ``layers`` index the assistant's)."""
    assistant_train: dict[str, Any] = field(default_factory=dict)
    """``train`` keys of the assistant stage (e.g. more steps), merged over the top level."""


@dataclass
class DPOConfig:
    """Preference stage (``attnkd dpo``): DPO on student samples ranked by the teacher."""

    beta: float = 0.1
    """Implicit-reward scale of DPO (higher: stay closer to the reference)."""
    reference: str = "teacher"
    """'teacher' (LLaVA-MoD: the large model is the reference) or 'student' (the student as
    the stage starts, as in the original DPO)."""
    prompts: int = 48
    """Training prompts: the first ``prompt_tokens`` of training blocks drawn with train.seed."""
    samples_per_prompt: int = 4
    """Student samples per prompt; the teacher's most and least likely form the pair."""
    prompt_tokens: int = 32
    new_tokens: int = 32
    temperature: float = 1.0
    min_margin: float = 0.0
    """Keep a pair only if the teacher's mean log-likelihood per token differs by more."""
    steps: int = 24
    batch_size: int = 8
    """Pairs per optimizer step."""
    lr: float = 1.0e-5
    eval_prompts: int = 32
    """Held-out prompts (from the eval blocks) for the teacher-judged win rate."""
    eval_blocks: int = 0
    """Held-out blocks for perplexity before/after (0 = every eval block)."""


@dataclass
class DistillConfig:
    """A whole distillation run."""

    name: str = "minilm-sentence"
    output_dir: str = "runs"
    task: str = "sentence"
    """'sentence' (embeddings, STS Spearman), 'causal_lm' (next-token perplexity) or
    'image_classification' (Fashion-MNIST accuracy; CNN/ViT builders, see attnkd.vision) or
    'sequence_classification' (SST-2/MRPC/RTE accuracy and F1, see attnkd.tasks)."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    teachers: list[TeacherEntry] = field(default_factory=list)
    """A teacher set replacing ``teacher`` when non-empty (leave ``teacher`` unset then). On the
    sentence task a set whose terms are all sentence-level runs from cached teacher embeddings,
    each teacher tokenising for itself (:mod:`attnkd.tasks.sentence_teachers`)."""
    student: StudentConfig = field(default_factory=StudentConfig)
    losses: list[LossTermConfig] = field(default_factory=lambda: [LossTermConfig()])
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    stages: list[StageConfig] = field(default_factory=list)
    """Empty: one stage (this config). Otherwise the run is these stages in order, each this
    config with the stage's overrides merged over it; the student carries from stage to stage."""
    chain: ChainConfig = field(default_factory=ChainConfig)


def default_recipe() -> DistillConfig:
    """The default recipe (``attnkd distill`` with no file; same as recipes/minilm-sentence.yaml):
    all-MiniLM-L6-v2 -> 3-layer cut {0, 2, 5}; MiniLMv2 relations + last-layer hidden MSE +
    sentence-embedding MSE; 900 steps (about 16 minutes of training on 2 quiet CPU cores)."""
    return DistillConfig(
        name="minilm-sentence",
        student=StudentConfig(layers=[0, 2, 5]),
        losses=[
            LossTermConfig(name="relation", relation_heads=12, relations=["qq", "kk", "vv"]),
            LossTermConfig(name="hidden_mse"),
            LossTermConfig(name="sentence_mse", weight=384.0),
        ],
        train=TrainConfig(
            lr=1e-4,
            batch_size=32,
            max_steps=900,
            warmup_ratio=0.02,
            eval_every=150,
            save_every=150,
            log_every=20,
            freeze_embeddings=True,
            seed=0,
        ),  # fmt: skip
    )
