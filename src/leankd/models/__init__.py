"""Models by name: `create_model("resnet20", num_classes=10)`; see `list_models()`. A user's own: an import path
(`create_model("models.py:tiny8", 10)`, models/user.py) or `@register_model`."""

from leankd.models import cifar_resnet  # noqa: F401  (importing it registers the ResNets)
from leankd.models.registry import (
    MODELS,
    count_params,
    create_model,
    list_models,
    model_size_mb,
    register_model,
    resolve_model,
)

__all__ = ["MODELS", "count_params", "create_model", "list_models", "model_size_mb", "register_model",
           "resolve_model"]
