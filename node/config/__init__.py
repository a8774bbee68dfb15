"""Configuration: pydantic models of the YAML file; the only code that reads config."""

from node.config.loader import DEFAULT_CONFIG_PATH, load_config, resolve_config_path
from node.config.model import (
    ApiSettings,
    ApiToken,
    ClientTls,
    CompletenessQuery,
    CompletionSettings,
    DeidentificationSettings,
    DeliverySettings,
    Destination,
    DestinationAuth,
    LoggingSettings,
    NodeConfig,
    NodeSettings,
    Route,
    ServerTls,
    Source,
    StorageSettings,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ApiSettings",
    "ApiToken",
    "ClientTls",
    "CompletenessQuery",
    "CompletionSettings",
    "DeidentificationSettings",
    "DeliverySettings",
    "Destination",
    "DestinationAuth",
    "LoggingSettings",
    "NodeConfig",
    "NodeSettings",
    "Route",
    "ServerTls",
    "Source",
    "StorageSettings",
    "load_config",
    "resolve_config_path",
]
