"""Typed experiment config: YAML file + dotted `key=value` overrides -> `ExperimentConfig`.

    cfg = load_config("configs/demo/cifar10-resnet20-resnet8.yaml", ["train.epochs=1", "seeds=[0,1]"])

Every mistake is refused before any work starts, as a `ConfigError` whose message is one line that names the key
and, for a typo, the closest valid key. Configs are data: `yaml.safe_load`, never eval. `schema.py` holds the
models and their checks, `load.py` the file and override handling.
"""
from leankd.config.load import build_config, load_config, parse_overrides, save_config
from leankd.config.schema import (
                                  FEATURE_LOSSES,
                                  ArmConfig,
                                  CacheConfig,
                                  CheckpointConfig,
                                  DataConfig,
                                  ExperimentConfig,
                                  GuardConfig,
                                  LayerRef,
                                  MeteringConfig,
                                  OptimConfig,
                                  PairSpec,
                                  RankingConfig,
                                  StudentConfig,
                                  TeacherConfig,
                                  config_hash,
)
from leankd.config.speed import SpeedConfig
from leankd.errors import ConfigError

__all__ = ["build_config", "load_config", "parse_overrides", "save_config", "FEATURE_LOSSES", "ArmConfig",
           "CacheConfig", "CheckpointConfig", "DataConfig", "ExperimentConfig", "GuardConfig", "LayerRef",
           "MeteringConfig", "OptimConfig", "PairSpec", "RankingConfig", "SpeedConfig", "StudentConfig",
           "TeacherConfig", "config_hash", "ConfigError"]
