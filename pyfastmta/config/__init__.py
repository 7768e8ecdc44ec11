"""pyfastmta's configuration: main.cf and master.cf in Postfix syntax, and the parameter table."""
from pyfastmta.config.configuration import Config, default_config, load_config
from pyfastmta.config.errors import ConfigError
from pyfastmta.config.mastercf import Service
from pyfastmta.config.parameters import PARAMETERS, Parameter

__all__ = ["Config", "ConfigError", "PARAMETERS", "Parameter", "Service", "default_config", "load_config"]
