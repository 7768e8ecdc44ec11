"""A loaded configuration: main.cf values expanded and typed once, master.cf services."""
from __future__ import annotations

import os
from collections.abc import Iterable

from pyfastmta.config import interfaces
from pyfastmta.config.errors import ConfigError, ExpansionError
from pyfastmta.config.expansion import expand, referenced_names
from pyfastmta.config.maincf import Setting, read_main_cf
from pyfastmta.config.mastercf import Service, listen_addresses, parse_master_cf
from pyfastmta.config.parameters import PARAMETERS, RAW
from pyfastmta.config.valuetypes import BadValue

EMBEDDED_DIRECTORY = os.path.dirname(os.path.abspath(__file__))
# Postfix gives up at this depth of $name inside $name.
MAX_NESTING = 100


class _Evaluation:
    """Expands every parameter of one set of settings; the expansion Resolver and DefaultContext."""

    def __init__(self, settings: dict[str, Setting], config_dir: str | None, fallback_path: str | None):
        self.settings = settings
        self.config_dir = config_dir
        self.fallback_path = fallback_path
        self.expanded_values: dict[str, str | None] = {}
        self.default_texts: dict[str, str] = {}
        self.stack: list[str] = []
        self.undefined_references: dict[tuple[str, str], None] = {}

    # DefaultContext
    def is_set(self, name: str) -> bool:
        return name in self.settings

    def expanded(self, name: str) -> str:
        return self.expanded_value(name) or ""

    def default_text(self, name: str) -> str:
        text = self.default_texts.get(name)
        if text is None:
            text = self.default_texts[name] = PARAMETERS[name].default_text(self)
        return text

    # Resolver
    def raw_value(self, name: str) -> str | None:
        setting = self.settings.get(name)
        if setting is not None:
            return setting.value
        if name in PARAMETERS:
            return self.default_text(name)
        return None

    def expanded_value(self, name: str) -> str | None:
        if name in self.expanded_values:
            return self.expanded_values[name]
        if name in self.stack:
            loop = " -> ".join(self.stack[self.stack.index(name):] + [name])
            raise ExpansionError(f"parameter refers to itself: {loop}")
        if len(self.stack) >= MAX_NESTING:
            raise ExpansionError(f"$name references nested more than {MAX_NESTING} deep")
        raw = self.raw_value(name)
        if raw is None:
            return None
        self.stack.append(name)
        try:
            value = expand(raw, self)
        except ExpansionError as error:
            setting = self.settings.get(name)
            if setting is not None and setting.path is not None:
                raise ConfigError(setting.path, setting.line, f"cannot expand {name}: {error}") from None
            raise
        finally:
            self.stack.pop()
        self.expanded_values[name] = value
        return value

    def undefined(self, name: str) -> None:
        owner = self.stack[-1] if self.stack else ""
        self.undefined_references[owner, name] = None

    def where(self, name: str) -> tuple[str | None, int | None]:
        setting = self.settings.get(name)
        if setting is not None and setting.path is not None:
            return setting.path, setting.line
        return self.fallback_path, None


class Config:
    """Typed, expanded parameter values; `get` is one dict lookup."""

    __slots__ = (
        "config_dir", "main_cf_path", "master_cf_path", "services", "warnings",
        "_values", "_expanded", "_settings", "_texts", "_service_configs", "_stressed",
    )

    def __init__(
        self,
        settings: dict[str, Setting],
        config_dir: str | None,
        main_cf_path: str | None,
        master_cf_path: str | None,
    ):
        self.config_dir = config_dir
        self.main_cf_path = main_cf_path
        self.master_cf_path = master_cf_path
        self.services: list[Service] = []
        self.warnings: list[str] = []
        self._settings = settings
        self._service_configs: dict[tuple[str, str], Config] = {}
        self._stressed: Config | None = None
        evaluation = _Evaluation(settings, config_dir, main_cf_path)
        self._values: dict[str, object] = {}
        self._expanded: dict[str, str] = {}
        self._texts: dict[str, str] = {}
        for name in [*PARAMETERS, *settings]:
            if name in self._expanded:
                continue
            try:
                parameter = PARAMETERS.get(name)
                if parameter is not None and parameter.kind == RAW:
                    text = evaluation.raw_value(name) or ""
                else:
                    text = evaluation.expanded(name)
            except ExpansionError as error:
                raise ConfigError(*evaluation.where(name), f"cannot expand {name}: {error}") from None
            self._expanded[name] = text
            self._texts[name] = evaluation.raw_value(name) or ""
            parameter = PARAMETERS.get(name)
            if parameter is None:
                self._values[name] = text
                continue
            try:
                self._values[name] = parameter.convert(text)
            except BadValue as error:
                raise ConfigError(*evaluation.where(name), str(error)) from None
        queue_directory = self._values["queue_directory"]
        self._values["queue_directory"] = os.path.abspath(queue_directory)  # type: ignore[arg-type]
        for (owner, name) in evaluation.undefined_references:
            path, line = evaluation.where(owner) if owner else (main_cf_path, None)
            location = f"{path}:{line}: " if line is not None else f"{path}: " if path else ""
            self.warnings.append(f"{location}{owner or 'a value'} refers to ${name}, which is not defined; "
                                 "it expands to nothing")

    def get(self, name: str) -> object:
        """The typed, expanded value; KeyError for a name neither known nor set in main.cf."""
        return self._values[name]

    def raw(self, name: str) -> str | None:
        """The value as written in main.cf (or a master.cf -o override); None when not set there."""
        setting = self._settings.get(name)
        return None if setting is None else setting.value

    def text(self, name: str) -> str:
        """The value as written, or the default as `postconf -d` writes it; KeyError if unknown."""
        return self._texts[name]

    def expanded(self, name: str) -> str:
        """The value with every $name expanded, before type conversion; KeyError if unknown."""
        return self._expanded[name]

    def is_set(self, name: str) -> bool:
        return name in self._settings

    def names(self) -> list[str]:
        """Every known parameter and every name set in main.cf, sorted."""
        return sorted(self._values)

    def user_names(self) -> list[str]:
        """Names set in main.cf that are not in the parameter table."""
        return sorted(name for name in self._settings if name not in PARAMETERS)

    def unused_user_names(self) -> list[str]:
        """User-defined names that no known parameter refers to, directly or through others."""
        pending: list[str] = [self._texts[name] for name in PARAMETERS]
        pending += [value for service in self.services for value in service.overrides.values()]
        used: set[str] = set()
        # Restriction classes are parameters of the administrator's naming.
        for name in self._expanded["smtpd_restriction_classes"].replace(",", " ").split():
            if name in self._settings and name not in PARAMETERS:
                used.add(name)
                pending.append(self._settings[name].value)
        while pending:
            for name in referenced_names(pending.pop()):
                if name not in used and name in self._settings and name not in PARAMETERS:
                    used.add(name)
                    pending.append(self._settings[name].value)
        return [name for name in self.user_names() if name not in used]

    def smtpd_services(self) -> list[Service]:
        """The inet services whose command is smtpd: the ones pyfastmta runs."""
        return [service for service in self.services if service.type == "inet" and service.command == "smtpd"]

    def under_stress(self) -> Config:
        """This configuration as an overloaded worker's new sessions see it: stress = yes."""
        if self._stressed is None:
            settings = dict(self._settings)
            settings["stress"] = Setting("stress", "yes", None, None)
            self._stressed = Config(settings, self.config_dir, self.main_cf_path, self.master_cf_path)
            self._stressed.services = self.services
        return self._stressed

    def for_service(self, service: Service) -> Config:
        """This configuration with the service's -o overrides applied."""
        return self._service_configs.get((service.name, service.type), self)

    def _attach_services(self, services: Iterable[Service]) -> None:
        ipv6_available = interfaces.ipv6_supported()
        for service in services:
            if service.override_settings:
                settings = dict(self._settings)
                settings.update(service.override_settings)
                service_config = Config(settings, self.config_dir, self.main_cf_path, self.master_cf_path)
                service_config.services = self.services
                self._service_configs[service.name, service.type] = service_config
            else:
                service_config = self
            if service.type == "inet":
                service.listen = listen_addresses(
                    service,
                    service_config.get("inet_interfaces"),  # type: ignore[arg-type]
                    service_config.get("inet_protocols"),  # type: ignore[arg-type]
                    ipv6_available,
                )
            self.services.append(service)
        for service_config in self._service_configs.values():
            service_config._service_configs = self._service_configs
        unused = [self._settings[name] for name in self.unused_user_names()]
        for service in self.services:
            service_unused = self.for_service(service).unused_user_names() if service.override_settings else []
            unused += [service.override_settings[name] for name in service_unused
                       if name in service.override_settings]
        for setting in sorted(unused, key=lambda setting: (setting.path != self.main_cf_path, setting.line)):
            self.warnings.append(
                f"{setting.path}:{setting.line}: {setting.name} is not a pyfastmta parameter and no "
                "parameter refers to it; it is ignored"
            )


def default_config() -> Config:
    """The table's defaults alone, as `postconf -d` shows them."""
    return Config({}, None, None, None)


def load_config(config_dir: str | None) -> Config:
    """Read main.cf and master.cf from config_dir (None: the embedded default configuration)."""
    directory = EMBEDDED_DIRECTORY if config_dir is None else os.path.abspath(config_dir)
    if config_dir is not None and not os.path.isdir(directory):
        raise ConfigError(directory, None, "configuration directory not found")
    main_cf_path = os.path.join(directory, "main.cf")
    master_cf_path = os.path.join(directory, "master.cf")
    warnings: list[str] = []
    settings = read_main_cf(main_cf_path, warnings)
    config = Config(settings, None if config_dir is None else directory, main_cf_path, master_cf_path)
    services = parse_master_cf(master_cf_path, config.get("default_process_limit"))  # type: ignore[arg-type]
    config._attach_services(services)
    config.warnings[:0] = warnings
    return config
