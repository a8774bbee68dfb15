"""Configuration: pydantic models of the YAML file; the only code that reads config."""

from node.config.loader import DEFAULT_CONFIG_PATH, load_config, resolve_config_path
from node.config.model import (
    ApiSettings,
    ApiToken,
    CompletenessQuery,
    CompletionSettings,
    DeliverySettings,
    Destination,
    DestinationAuth,
    LoggingSettings,
    NodeConfig,
    NodeSettings,
    Route,
    Source,
    StorageSettings,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ApiSettings",
    "ApiToken",
    "CompletenessQuery",
    "CompletionSettings",
    "DeliverySettings",
    "Destination",
    "DestinationAuth",
    "LoggingSettings",
    "NodeConfig",
    "NodeSettings",
    "Route",
    "Source",
    "StorageSettings",
    "load_config",
    "resolve_config_path",
]
