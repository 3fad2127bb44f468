"""What a fine-tuning run trains and how: one typed config, checked once with every problem listed."""

from dataclasses import asdict, dataclass, fields

from ..errors import ConfigError

TRAIN_ENCODERS = ("none", "lora", "full")
PROMPT_FORMATS = ("eval", "raw")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
DEFAULT_LORA_TARGETS = ("q_proj", "v_proj")
LORA_LR, FULL_LR = 2e-4, 2e-5


@dataclass
class FinetuneConfig:
    """One fine-tuning run.

    Attributes:
        lora_r: LoRA rank of the LLM's (and with ``train_encoders="lora"`` the encoders') adapters.
        lora_alpha: LoRA scaling numerator; default ``2 * lora_r``.
        lora_dropout: dropout on the LoRA branch.
        lora_targets: last names of the LLM's linear layers that get LoRA (``q_proj``...), matched
            inside the language model only, so the encoders' own ``q_proj`` are not hit;
            ``("all-linear",)`` means every linear layer of the LLM except the output head.
        full: full fine-tuning of the LLM (no LoRA) instead of LoRA.
        train_encoders: ``none`` (frozen, default), ``lora`` (every linear layer of every encoder)
            or ``full``.
        train_fusion: train the fusion/projector fully (default); with LoRA it is saved with the
            adapter (peft ``modules_to_save``).
        max_steps: optimizer steps; ``None`` trains ``epochs`` epochs.
        epochs: epochs when ``max_steps`` is ``None``.
        lr: peak learning rate; default 2e-4 with LoRA, 2e-5 with ``full``.
        batch_size: samples per device per micro-step.
        grad_accum: micro-steps per optimizer step.
        warmup_ratio: share of the steps with a linear warm-up.
        scheduler: learning-rate schedule after the warm-up.
        weight_decay: AdamW weight decay.
        encoder_dropout: probability of masking each encoder slot (removal-consistent mask);
            per sample for fusion classes A1/A2, one mask set per batch for B/C.
        cache_features: compute the frozen encoders' features once and train from them (used
            only when it is valid: encoders frozen, no image augmentation).
        prompt_format: ``eval`` (the evaluation harness's prompt: options, hint, instruction) or
            ``raw`` (the question as it is, e.g. LLaVA conversation turns).
        deepspeed: a DeepSpeed JSON file (ZeRO-2/3), or ``None``.
        bf16: train in bfloat16 mixed precision (GPUs).
        merge: fold the LoRA adapter into the weights and write a plain model folder.
        seed: seeds LoRA initialisation, data order and encoder dropout.
        save_steps: checkpoint every this many steps (for ``resume``).
        resume: continue from the latest checkpoint of an interrupted run of the same output.
        progress: show a progress bar; ``None``: only on a terminal.
        feature_batch_size: batch size of the one-off feature computation.
        distill_from: the full model folder to distil from (:mod:`encslim.finetune.distill`), or ``None``.
        distill_temperature: softmax temperature ``T`` of teacher and student in the KL term.
        distill_weight: ``a`` in ``loss = (1 - a) * CE + a * T^2 * KL``; 1 trains on the teacher alone.
        distill_hidden_weight: weight of the MSE between the fused image tokens of student and
            teacher (0: off; skipped where the shapes differ).
        distill_top_k: answer-token log-probabilities kept per position: ``None`` = the whole
            vocabulary up to 4096 tokens, else the top 64 plus a renormalised tail bin; 0 = whole.
        distill_memory_gb: the most host memory the cached teacher targets may take.
    """

    lora_r: int = 8
    lora_alpha: float = None
    lora_dropout: float = 0.05
    lora_targets: tuple = DEFAULT_LORA_TARGETS
    full: bool = False
    train_encoders: str = "none"
    train_fusion: bool = True
    max_steps: int = None
    epochs: float = 1.0
    lr: float = None
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    weight_decay: float = 0.0
    encoder_dropout: float = 0.0
    cache_features: bool = True
    prompt_format: str = "eval"
    deepspeed: str = None
    bf16: bool = False
    merge: bool = False
    seed: int = 0
    save_steps: int = 100
    resume: bool = False
    progress: bool = None
    feature_batch_size: int = 32
    distill_from: str = None
    distill_temperature: float = 2.0
    distill_weight: float = 0.5
    distill_hidden_weight: float = 0.0
    distill_top_k: int = None
    distill_memory_gb: float = 4.0

    def __post_init__(self):
        if isinstance(self.lora_targets, str):
            self.lora_targets = tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())
        self.lora_targets = tuple(self.lora_targets)
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def uses_lora(self):
        """Whether an adapter is trained (LoRA on the LLM, or on the encoders)."""
        return not self.full or self.train_encoders == "lora"

    @property
    def learning_rate(self):
        return self.lr if self.lr is not None else (FULL_LR if self.full else LORA_LR)

    @property
    def alpha(self):
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_r

    @property
    def features_cacheable(self):
        """Caching is valid only for frozen encoders (no image augmentation exists here)."""
        return self.cache_features and self.train_encoders == "none"

    def problems(self):
        """Every cross-field problem, one phrase each naming the fix."""
        out = []
        if self.train_encoders not in TRAIN_ENCODERS:
            out.append(f"train_encoders '{self.train_encoders}' unknown; use one of {', '.join(TRAIN_ENCODERS)}")
        if self.prompt_format not in PROMPT_FORMATS:
            out.append(f"prompt format '{self.prompt_format}' unknown; use one of {', '.join(PROMPT_FORMATS)}")
        if self.scheduler not in SCHEDULERS:
            out.append(f"scheduler '{self.scheduler}' unknown; use one of {', '.join(SCHEDULERS)}")
        if not self.full and (not isinstance(self.lora_r, int) or self.lora_r < 1):
            out.append(f"--lora-r must be a positive integer, got {self.lora_r}")
        if not self.full and not self.lora_targets:
            out.append("--lora-targets is empty; name the LLM's linear layers, e.g. q_proj,v_proj")
        if self.full and self.train_encoders == "lora":
            out.append("--full with --train-encoders lora mixes full and adapter training; use --train-encoders "
                       "full or none with --full")
        if self.merge and not self.uses_lora:
            out.append("--merge folds a LoRA adapter, but --full trains no adapter and already writes plain "
                       "weights; drop --merge")
        if not 0.0 <= self.encoder_dropout < 1.0:
            out.append(f"--encoder-dropout must be in [0, 1), got {self.encoder_dropout}")
        for name in ("batch_size", "grad_accum", "save_steps", "feature_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                out.append(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            out.append(f"--max-steps must be a positive integer, got {self.max_steps}")
        if self.max_steps is None and not self.epochs > 0:
            out.append(f"--epochs must be positive, got {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            out.append(f"--lr must be positive, got {self.lr}")
        if not self.distill_temperature > 0:
            out.append(f"--distill-temperature must be positive, got {self.distill_temperature}")
        if not 0.0 <= self.distill_weight <= 1.0:
            out.append(f"--distill-weight must be in [0, 1], got {self.distill_weight}")
        if not self.distill_hidden_weight >= 0:
            out.append(f"--distill-hidden-weight must be >= 0, got {self.distill_hidden_weight}")
        if self.distill_top_k is not None and (not isinstance(self.distill_top_k, int) or self.distill_top_k < 0):
            out.append(f"--distill-top-k must be a whole number >= 0, got {self.distill_top_k}")
        if not self.distill_memory_gb > 0:
            out.append(f"--distill-memory-gb must be positive, got {self.distill_memory_gb}")
        if not self.distill_from and (self.distill_hidden_weight or self.distill_top_k is not None):
            out.append("--distill-hidden-weight/--distill-top-k need --distill-from FULL_MODEL")
        if not 0.0 <= self.warmup_ratio < 1.0:
            out.append(f"warmup ratio must be in [0, 1), got {self.warmup_ratio}")
        return out

    def to_dict(self):
        data = asdict(self)
        data["lora_targets"] = list(self.lora_targets)
        data["learning_rate"] = self.learning_rate
        data["lora_alpha"] = self.alpha
        if data["distill_from"] is not None:
            data["distill_from"] = str(data["distill_from"])
        return data

    @classmethod
    def from_dict(cls, data):
        """Build from a dict (e.g. a recipe section); unknown keys are rejected with the known ones.

        Raises:
            ConfigError: an unknown key or an invalid value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"learning_rate"})
        if unknown:
            raise ConfigError(f"unknown finetune option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in data.items() if k in known})
