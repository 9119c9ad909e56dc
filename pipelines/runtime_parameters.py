"""The per-run settings of the compiled (Kubeflow) pipeline: their names, types and config keys.

``create_pipeline(..., runtime_parameters=True)`` makes these settings TFX RuntimeParameters whose
defaults are the config's values (written into the compiled spec, so a run needs none); a run
overrides them with ``--param NAME=VALUE``. No TFX here: the KFP client side (submit, schedule)
checks the names and values without it.
"""
DATA_ROOT = "data_root"  # str: ClickLogExampleGen's input_base (folder of the click logs / spans)
SPAN_WINDOW = "span_window"  # int: newest N spans ingested per run
MAX_BAD_FRACTION = "max_bad_fraction"  # float: ExampleGen's quarantine threshold
TRAINER_CONFIG = "trainer_custom_config"  # str: the Trainer's custom_config JSON (TrainerConfig, dataset spec)

TYPES = {DATA_ROOT: str, SPAN_WINDOW: int, MAX_BAD_FRACTION: float, TRAINER_CONFIG: str}
NAMES = tuple(TYPES)
