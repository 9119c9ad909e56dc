"""The Trainer's section of the pipeline config: its choices and defaults, in one place.

``pipelines/config.py`` holds it as ``PipelineConfig.trainer`` (and validates it with the rest of
the config); the pipeline hands it to TFX's Trainer as ``custom_config["trainer"]`` (``to_json``)
and ``run_fn`` reads it back typed (``from_json``). No TensorFlow here: reading a config needs none.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Optional, Union

# The choices of the Trainer. tests/pipelines/test_config.py checks them against
# components.models.MODELS, optim.create (via components.training.make_optimizer) and
# components.training.distribution_strategy.
MODELS = ("dnn", "deepfm", "wide_deep", "dcn")
OPTIMIZERS = ("group_adam", "group_adagrad", "group_momentum", "group_amsgrad", "adam")
DISTRIBUTIONS = ("auto", "none", "mirrored", "multi_worker", "parameter_server")
# The sparsity controller sets l21 between batches; Keras runs no batch-level callback on a
# ParameterServerStrategy coordinator. Refused by the config check and, for "auto", by the Trainer.
PS_TARGET_ERROR = ("a sparsity or size target cannot be used with parameter_server training (Keras runs no "
                   "per-batch callbacks under ParameterServerStrategy); use multi_worker or a fixed l21")


@dataclasses.dataclass
class TrainerConfig:
    model: str = "dnn"  # one of MODELS
    embedding_dim: int = 8
    embedding_dims: Dict[str, int] = dataclasses.field(default_factory=dict)  # per-field override
    # A vocabulary value's row is added to its field's OOV row (`models.RelativeEmbedding`): a value
    # whose row is zero scores like an unseen one, so the pruned export drops it from the vocabulary
    # too. Off: each row is the value's whole embedding.
    rows_relative_to_oov: bool = False
    hidden_units: List[int] = dataclasses.field(default_factory=lambda: [64, 32])
    optimizer: str = "group_adam"  # one of OPTIMIZERS
    learning_rate: float = 0.005
    l1: float = 0.0
    l2: float = 0.0
    l21: float = 1e-3
    batch_size: int = 256
    epochs: int = 4
    # Keep the epoch with the best eval-split AUC (weights and optimizer state); stop after
    # early_stopping_patience epochs without a better one.
    early_stopping: bool = True
    early_stopping_patience: int = 1
    # Ask for a sparsity or a size instead of an l21: the Trainer then sets l21 itself while it trains
    # (components/sparsity_target.py), starting from `l21`. target_sparsity: fraction of embedding rows
    # that are zero, in (0, 1); max_embedding_bytes: bytes of the non-zero rows (rows x width x 4).
    # One of the two for all tables, and/or either per table ({C1: 0.9}); a named table gets its own
    # l21, the other tables share one. None/{} = train at the fixed `l21`.
    target_sparsity: Optional[float] = None
    max_embedding_bytes: Optional[int] = None
    target_sparsity_per_table: Dict[str, float] = dataclasses.field(default_factory=dict)
    max_embedding_bytes_per_table: Dict[str, int] = dataclasses.field(default_factory=dict)
    train_steps: Optional[int] = None  # None = epochs over the train split
    eval_steps: Optional[int] = None
    # Training steps per call into TensorFlow (Keras' steps_per_execution): each call costs 1-2 ms of
    # Python and dispatch, as much as a whole step of a small model on CPU
    # (benchmarks/results/trainer_cpu_steps_per_execution.txt).
    # Keras needs an epoch's length for it: the Trainer counts the splits' records first. Per-batch
    # callbacks (the NaN stop) see every call's last batch; the sparsity controller limits it to its
    # interval; several replicas or parameter servers run one step per call (components/training.py).
    steps_per_execution: int = 32
    jit_compile: Union[bool, str] = "auto"  # true, false or "auto" (resolve_jit_compile)
    distribution: str = "auto"  # one of DISTRIBUTIONS (components.training.distribution_strategy)
    seed: int = 42
    warm_start: bool = True

    def resolve_jit_compile(self, has_gpu: bool) -> bool:
        """Whether to compile the train step with XLA: `jit_compile`, where "auto" is on with a GPU and
        off without. On CPU the compiled Group Adam step trained no faster than the uncompiled one in
        any cell of benchmarks/results/trainer_cpu.txt (0.56-0.84x) and its first epoch took 5-9 s more."""
        return has_gpu if self.jit_compile == "auto" else bool(self.jit_compile)

    def to_json(self) -> str:
        """What travels to the Trainer as ``custom_config["trainer"]``."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainerConfig":
        """The section back from ``to_json``. A key the JSON lacks (written before the key existed)
        takes its default here; an unknown key is an error (a misspelt setting must not be ignored)."""
        values = json.loads(text)
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown trainer config keys {unknown} (known: {', '.join(sorted(known))})")
        return cls(**values)
