from relative_performer.models.config import ModelConfig
from relative_performer.models.registry import MODELS, count_parameters, create_model, model_names

__all__ = ["MODELS", "ModelConfig", "count_parameters", "create_model", "model_names"]
