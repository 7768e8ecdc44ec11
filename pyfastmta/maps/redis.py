"""redis:/path/to/redis.cf — a table kept in a Redis server.

Postfix has no Redis table; this one is configured like Postfix's network tables (mysql_table(5),
ldap_table(5)): a file of `name = value` lines.

    hosts = 127.0.0.1:6379 [::1]:6380 unix:/run/redis.sock    tried in order (default localhost)
    url = redis://user:secret@host:6379/0                     instead of hosts (rediss:, unix:)
    db = 0
    username =
    password =
    timeout = 10                    connect and reply timeout per server, in seconds
    query = GET                     or: HGET hashname (a field of one fixed hash)
    key_format = %s                 the Redis key (or hash field) made from the lookup key
    domain =                        only user@domain keys whose domain is listed are looked up

key_format expands as Postfix's query templates do: %s the whole key, %u its local part (the
whole key when it has no "@"), %d its domain, %1 ... %9 the domain's labels counted from the right
(%1 = com in user@mail.example.com), %% a "%"; upper-case %S %U %D mean the same. A key that
lacks a part the template needs (no domain for %d, an empty local part for %u, too few labels)
is not looked up. Keys fold to lower case before expansion, as for every fixed table; an empty
value counts as not found. A server that is down or too slow is a TableTemporaryError.
"""

from __future__ import annotations

from pyfastmta.maps.registry import open_table
from pyfastmta.maps.source import fold_key, logical_lines, read_source
from pyfastmta.maps.table import FileSignature, Table, TableError, TableTemporaryError

PARAMETERS = {"hosts", "url", "db", "username", "password", "timeout", "query", "key_format",
              "domain"}
DEFAULT_TIMEOUT = 10.0
DEFAULT_PORT = 6379


def read_config(path: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    for number, text in logical_lines(read_source(path), path):
        name, equals, value = text.partition("=")
        name = name.strip()
        if not equals or not name:
            raise TableError(f'{path}:{number}: expected "name = value", found "{text}"')
        if name not in PARAMETERS:
            raise TableError(f"{path}:{number}: unknown parameter \"{name}\" "
                             f"(known: {', '.join(sorted(PARAMETERS))})")
        settings[name] = value.strip()
    return settings


class KeyFormat:
    """A query template, checked when the table opens."""

    def __init__(self, template: str, where: str) -> None:
        self.template = template
        self.needs_domain = self.needs_user = False
        self.labels = 0
        position = 0
        while position < len(template):
            if template[position] == "%":
                code = template[position + 1:position + 2]
                if code in ("u", "U"):
                    self.needs_user = True
                elif code in ("d", "D"):
                    self.needs_domain = True
                elif code.isdigit() and code != "0":
                    self.needs_domain = True
                    self.labels = max(self.labels, int(code))
                elif code not in ("s", "S", "%"):
                    raise TableError(f'{where}: invalid key_format "{template}": '
                                     f'"%{code}" (use %s %u %d %1-%9 %%)')
                position += 2
            else:
                position += 1

    def expand(self, key: str) -> str | None:
        """The key made from `key`, or None when `key` lacks a part the template uses."""
        if not key:
            return None
        at = key.rfind("@")
        user, domain = (key[:at], key[at + 1:]) if at >= 0 else (key, None)
        if self.needs_domain and not domain:
            return None
        if self.needs_user and at == 0:
            return None
        labels = [label for label in domain.split(".") if label] if self.labels else []
        if len(labels) < self.labels:
            return None
        out: list[str] = []
        position = 0
        template = self.template
        while position < len(template):
            char = template[position]
            if char != "%":
                out.append(char)
                position += 1
                continue
            code = template[position + 1]
            position += 2
            if code in ("s", "S"):
                out.append(key)
            elif code in ("u", "U"):
                out.append(user)
            elif code in ("d", "D"):
                out.append(domain)
            elif code == "%":
                out.append("%")
            else:
                out.append(labels[-int(code)])
        return "".join(out)


def parse_host(text: str) -> dict:
    """redis-py connection arguments of one `hosts` entry."""
    if text.startswith("unix:"):
        return {"unix_socket_path": text[5:]}
    text = text.removeprefix("inet:")
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f'bad host "{text}"; expected [address]:port')
        port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if port and not port.isdigit():
        raise ValueError(f'bad port in "{text}"')
    return {"host": host or "localhost", "port": int(port) if port else DEFAULT_PORT}


class RedisTable(Table):
    kind = "redis"

    def __init__(self, name: str, settings: dict[str, str], options,
                 signature: FileSignature) -> None:
        import redis  # only a process with a redis: table loads the client
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        super().__init__(name)
        self._redis = redis
        self._signature = signature
        self._smtputf8_enable = options.smtputf8_enable
        self._domains: list[tuple[bool, object]] = []
        try:
            timeout = float(settings.get("timeout", DEFAULT_TIMEOUT))
            if timeout <= 0:
                raise ValueError
        except ValueError:
            raise TableError(f'{name}: timeout must be a positive number of seconds, '
                             f'not "{settings["timeout"]}"') from None
        try:
            db = int(settings.get("db", "0"))
        except ValueError:
            raise TableError(f'{name}: db must be a number, not "{settings["db"]}"') from None

        query = settings.get("query", "GET").split()
        if query and query[0].upper() == "GET" and len(query) == 1:
            self._hash = None
        elif query and query[0].upper() == "HGET" and len(query) == 2:
            self._hash = query[1]
        else:
            raise TableError(f'{name}: query must be "GET" or "HGET hashname", '
                             f'not "{settings.get("query")}"')
        self._format = KeyFormat(settings.get("key_format", "%s"), name)

        for item in settings.get("domain", "").replace(",", " ").split():
            negated = item.startswith("!")
            item = item[1:] if negated else item
            if ":" in item:
                self._domains.append((negated, open_table(item, options)))
            else:
                self._domains.append((negated, fold_key(item, self._smtputf8_enable)))

        # One retry on a broken connection (a restarted server), none on a timeout: a lookup
        # takes at most about one timeout per server.
        common = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                  "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
                  "decode_responses": False}
        if settings.get("url") and settings.get("hosts"):
            raise TableError(f"{name}: give either url or hosts, not both")
        try:
            if settings.get("url"):
                self._clients = [redis.Redis.from_url(settings["url"], **common)]
            else:
                credentials = {"db": db, "username": settings.get("username") or None,
                               "password": settings.get("password") or None}
                hosts = settings.get("hosts", "localhost").replace(",", " ").split()
                if not hosts:
                    raise ValueError("hosts is empty")
                self._clients = [redis.Redis(**parse_host(host), **credentials, **common)
                                 for host in hosts]
        except ValueError as error:
            raise TableError(f"{name}: {error}") from None
        self._next = 0  # the server that answered last is asked first

    def changed(self) -> bool:
        return self._signature.changed()

    def close(self) -> None:
        for client in self._clients:
            client.close()
        for _, domain in self._domains:
            if isinstance(domain, Table):
                domain.close()

    def _domain_allowed(self, key: str) -> bool:
        at = key.rfind("@")
        if at <= 0:
            return False
        domain = key[at + 1:]
        for negated, match in self._domains:
            found = domain == match if isinstance(match, str) else match.get(domain) is not None
            if found:
                return not negated
        return False

    def get(self, key: str) -> str | None:
        key = fold_key(key, self._smtputf8_enable)
        if self._domains and not self._domain_allowed(key):
            return None
        redis_key = self._format.expand(key)
        if redis_key is None:
            return None
        encoded = redis_key.encode("utf-8", "surrogateescape")
        failures = []
        count = len(self._clients)
        for offset in range(count):
            index = (self._next + offset) % count
            client = self._clients[index]
            try:
                if self._hash is None:
                    value = client.get(encoded)
                else:
                    value = client.hget(self._hash, encoded)
            except (self._redis.ConnectionError, self._redis.TimeoutError) as error:
                failures.append(f"{self._describe(client)}: {error}")
                continue
            except self._redis.RedisError as error:
                raise TableError(f"{self.spec}: {self._describe(client)}: {error}") from None
            self._next = index
            return self._decode(value) if value else None
        raise TableTemporaryError(f"{self.spec}: no Redis server answered: {'; '.join(failures)}")

    @staticmethod
    def _describe(client) -> str:
        kwargs = client.connection_pool.connection_kwargs
        if kwargs.get("path"):
            return f"unix:{kwargs['path']}"
        return f"{kwargs.get('host')}:{kwargs.get('port')}"

    def _decode(self, value: bytes) -> str:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            if self._smtputf8_enable:
                raise TableError(f"{self.spec}: value is not UTF-8: {value[:200]!r}") from None
            return value.decode("utf-8", "surrogateescape")


def open_redis(name: str, options) -> RedisTable:
    signature = FileSignature(name)  # before reading: an edit during the read shows as a change
    settings = read_config(name)
    return RedisTable(name, settings, options, signature)
