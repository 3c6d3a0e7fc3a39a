"""Settings for every ``hatchway`` command from a TOML file and the environment.

Built from the click commands' own options, so that every flag (today's and tomorrow's) gets a
file key and an environment variable with no code of its own (docs/configuration.md):

* the file key is the long flag without its dashes, in the command's table:
  ``--data-dir`` of ``hatchway server`` is ``data-dir`` in ``[server]``
  (``[sessions.list]`` for ``hatchway sessions list``);
* the environment variable is ``HATCHWAY_<COMMAND>_<FLAG>``: ``HATCHWAY_SERVER_DATA_DIR``
  (an option that names its own variable, such as ``HATCHWAY_ACTIVATION_CODE``, keeps it);
* precedence: command line > environment > file > defaults (click's own order, the file
  feeding the context's ``default_map``).

The file is ``--config FILE``, else ``$HATCHWAY_CONFIG``, else the first of :func:`search_path`
that exists. Every table, key and value of the file, and every variable set for the command
run, is checked before the command starts: a bad one is one line naming where it is and what
was expected, exit status 2.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click

CONFIG_ENV = "HATCHWAY_CONFIG"
ENV_PREFIX = "HATCHWAY"
DEFAULT_COMMANDS = ("server", "agent", "up")
MASK = "********"

#: Settings read from the environment only (not flags), shown by ``config show``.
ENV_ONLY: dict[str, tuple[str, ...]] = {
    "server": ("HATCHWAY_ADMIN_ACCESS_KEY_ID", "HATCHWAY_ADMIN_SECRET_ACCESS_KEY"),
    "agent": ("HATCHWAY_DENIED_PORT_FORWARDING_IPS",),
    "up": ("HATCHWAY_ADMIN_ACCESS_KEY_ID", "HATCHWAY_ADMIN_SECRET_ACCESS_KEY"),
}

_SECRET = re.compile(r"secret|key|code|password|passphrase|token", re.IGNORECASE)
_VALUES = (str, int, float, bool, Path, tuple, list)
_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


class ConfigError(click.ClickException):
    """A bad config file, key, value or environment variable: exit status 2, one line."""

    exit_code = 2


def search_path() -> list[Path]:
    """Where the config file is looked for when neither ``--config`` nor ``$HATCHWAY_CONFIG``
    names one: the first that exists is used."""
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return [
        Path("hatchway.toml"),
        Path(xdg) / "hatchway" / "hatchway.toml",
        Path("/etc/hatchway/hatchway.toml"),
    ]


# -- the commands' options ---------------------------------------------------------------------


def option_key(opt: click.Option) -> str:
    """``--data-dir`` → ``data-dir``: the option's file key (its first long flag)."""
    longs = [o for o in opt.opts if o.startswith("--")]
    return (longs[0] if longs else opt.opts[0]).lstrip("-")


def options(cmd: click.Command) -> dict[str, click.Option]:
    """The options of ``cmd`` that settings may give, by file key."""
    out: dict[str, click.Option] = {}
    for p in cmd.params:
        if isinstance(p, click.Option) and p.expose_value and not p.is_eager and p.name:
            out[option_key(p)] = p
    return out


def env_name(path: tuple[str, ...], key: str) -> str:
    """``("server",), "data-dir"`` → ``HATCHWAY_SERVER_DATA_DIR``."""
    return "_".join((ENV_PREFIX, *path, key)).upper().replace("-", "_")


def env_names(opt: click.Option) -> list[str]:
    if opt.envvar is None:
        return []
    return [opt.envvar] if isinstance(opt.envvar, str) else list(opt.envvar)


def install(root: click.Group) -> None:
    """Give every command under ``root`` that takes options its ``--config`` option and an
    environment variable for each option that has none."""

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, (*path, name))
            return
        opts = options(cmd)
        if not opts or any("--config" in p.opts for p in cmd.params):
            return
        for key, opt in opts.items():
            if opt.envvar is None:
                opt.envvar = env_name(path, key)
            opt.show_envvar = True
        cmd.params.append(
            click.Option(
                ["--config"],
                type=click.Path(dir_okay=False, path_type=Path),
                envvar=CONFIG_ENV,
                show_envvar=True,
                is_eager=True,
                expose_value=False,
                callback=_apply,
                help="Settings file (TOML; default: ./hatchway.toml, "
                "$XDG_CONFIG_HOME/hatchway/hatchway.toml, /etc/hatchway/hatchway.toml). "
                "Its [" + ".".join(path) + "] table gives this command's options.",
            )
        )

    walk(root, ())


def command_path(ctx: click.Context) -> tuple[str, ...]:
    parts: list[str] = []
    c: click.Context | None = ctx
    while c is not None and c.parent is not None:
        parts.insert(0, c.command.name or c.info_name or "")
        c = c.parent
    return tuple(parts)


# -- the file --------------------------------------------------------------------------------


@dataclass
class ConfigFile:
    path: Path | None
    origin: str  # "--config", "$HATCHWAY_CONFIG", "search path", "none found"
    data: dict[str, Any]

    def table(self, path: tuple[str, ...]) -> dict[str, Any]:
        node: Any = self.data
        for part in path:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node if isinstance(node, dict) else {}


def locate(value: Path | None, origin: str) -> ConfigFile:
    """The config file named by ``--config`` / ``$HATCHWAY_CONFIG`` (``value``, which must
    exist), else the first of the search path that exists, else none; read and parsed."""
    if value is not None:
        return ConfigFile(value, origin, _read(value, origin))
    for candidate in search_path():
        if candidate.is_file():
            return ConfigFile(candidate, "search path", _read(candidate, "search path"))
    return ConfigFile(None, "none found", {})


def _read(path: Path, origin: str) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file (from {origin})") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file (from {origin})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (a TOML file is)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def check_file(root: click.Group, cfg: ConfigFile) -> None:
    """Every table, key and value of the file against the commands' options."""

    def walk(cmd: click.Command, table: dict[str, Any], path: tuple[str, ...]) -> None:
        if isinstance(cmd, click.Group):
            for name, value in table.items():
                sub = cmd.commands.get(name)
                where = ".".join((*path, name))
                if sub is None or (not isinstance(sub, click.Group) and not options(sub)):
                    known = sorted(
                        n
                        for n, c in cmd.commands.items()
                        if isinstance(c, click.Group) or options(c)
                    )
                    hint = _suggest(name, known)
                    if isinstance(value, dict):
                        raise ConfigError(
                            f"{cfg.path}: unknown table [{where}]: no such command{hint}"
                        )
                    raise ConfigError(
                        f"{cfg.path}: unknown key {where!r} (settings go in a command's "
                        "table, e.g. [server])"
                    )
                if not isinstance(value, dict):
                    raise ConfigError(
                        f"{cfg.path}: {where} must be a table ([{where}]), got {_show(value)}"
                    )
                walk(sub, value, (*path, name))
            return
        opts = options(cmd)
        ctx = click.Context(cmd, info_name=path[-1] if path else None)
        for key, value in table.items():
            opt = opts.get(key)
            if opt is None:
                hint = _suggest(key.replace("_", "-"), list(opts))
                raise ConfigError(f"{cfg.path}: [{'.'.join(path)}] unknown key {key!r}{hint}")
            check_value(ctx, opt, value, f"{cfg.path}: [{'.'.join(path)}] {key}", from_file=True)

    walk(root, cfg.data, ())


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known: {', '.join(known)})" if known else ""


# -- values ----------------------------------------------------------------------------------


def describe(opt: click.Option) -> str:
    """What a value of ``opt`` must be, for error messages."""
    if opt.is_flag and opt.is_bool_flag:
        return "a boolean (true or false)"
    noun = _describe_type(opt.type)
    if opt.multiple:
        return f"an array of {noun}"
    return noun


def _describe_type(kind: click.ParamType[Any]) -> str:
    if isinstance(kind, click.IntRange):
        return f"an integer in {_range(kind)}"
    if isinstance(kind, click.FloatRange):
        return f"a number in {_range(kind)}"
    if kind is click.INT or isinstance(kind, click.types.IntParamType):
        return "an integer"
    if kind is click.FLOAT or isinstance(kind, click.types.FloatParamType):
        return "a number"
    if isinstance(kind, click.types.BoolParamType):
        return "a boolean (true or false)"
    if isinstance(kind, click.Choice):
        return "one of " + ", ".join(json.dumps(str(c)) for c in kind.choices)
    if isinstance(kind, click.Path | click.File):
        return "a path (a string)"
    return "a string"


def _range(kind: click.IntRange | click.FloatRange) -> str:
    lo = "" if kind.min is None else f"{kind.min}{'<' if kind.min_open else '<='}"
    hi = "" if kind.max is None else f"{'<' if kind.max_open else '<='}{kind.max}"
    return f"{lo}x{hi}"


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _toml_type_ok(opt: click.Option, value: Any) -> bool:
    """A TOML value of the type the option takes (no strings for numbers, no numbers for
    strings: the file has types, and a quoted number is a mistake worth naming)."""
    if opt.is_flag and opt.is_bool_flag:
        return isinstance(value, bool)
    if opt.multiple:
        return isinstance(value, list) and all(_scalar_ok(opt.type, v) for v in value)
    return _scalar_ok(opt.type, value)


def _scalar_ok(kind: click.ParamType[Any], value: Any) -> bool:
    if isinstance(value, bool):
        return isinstance(kind, click.types.BoolParamType)
    if isinstance(kind, click.types.IntParamType):
        return isinstance(value, int)
    if isinstance(kind, click.types.FloatParamType):
        return isinstance(value, int | float)
    if isinstance(kind, click.types.BoolParamType):
        return False
    return isinstance(value, str)


def check_value(
    ctx: click.Context, opt: click.Option, value: Any, where: str, *, from_file: bool
) -> Any:
    """``value`` converted the way click will convert it (type, range, the option's callback);
    a :class:`ConfigError` naming ``where`` and what was expected otherwise."""
    expected = describe(opt)
    if from_file and not _toml_type_ok(opt, value):
        raise ConfigError(f"{where}: expected {expected}, got {_show(value)}")
    if not from_file:
        if opt.is_flag and opt.is_bool_flag:
            word = str(value).strip().lower()
            if word not in _TRUE | _FALSE:
                raise ConfigError(f"{where}: expected {expected}, got {_show(value)}")
            return word in _TRUE
        if opt.multiple:
            value = opt.type.split_envvar_value(str(value))
    if opt.is_flag and opt.is_bool_flag:
        return value
    try:
        converted = opt.type_cast_value(ctx, value)
    except click.BadParameter:
        raise ConfigError(f"{where}: expected {expected}, got {_show(value)}") from None
    if opt.callback is not None:
        try:
            converted = opt.callback(ctx, opt, converted)
        except click.BadParameter as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
    return converted


def check_environment(ctx: click.Context, cmd: click.Command) -> None:
    """The variables set for ``cmd``'s options: the first set one of each option counts."""
    for opt in options(cmd).values():
        for name in env_names(opt):
            raw = os.environ.get(name)
            if raw:
                check_value(ctx, opt, raw, f"environment variable {name}", from_file=False)
                break


def _apply(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """``--config``'s callback (eager: before every other option): check the file and the
    environment, and hand the command's table to click as the context's ``default_map``."""
    if ctx.resilient_parsing:  # shell completion
        return
    source = ctx.get_parameter_source(param.name or "config")
    origin = "--config" if source is click.core.ParameterSource.COMMANDLINE else f"${CONFIG_ENV}"
    cfg = locate(value, origin)
    root = ctx.find_root().command
    if isinstance(root, click.Group):
        check_file(root, cfg)
    path = command_path(ctx)
    check_environment(ctx, ctx.command)
    table = cfg.table(path)
    opts = options(ctx.command)
    defaults = dict(ctx.default_map or {})
    for key, val in table.items():
        name = opts[key].name
        if name:
            defaults[name] = val
    ctx.default_map = defaults
    _warn_if_exposed(cfg, table, opts)


def _warn_if_exposed(cfg: ConfigFile, table: dict[str, Any], opts: dict[str, click.Option]) -> None:
    """A file holding a secret (an activation code, a database password) should be readable by
    its owner only: say so, once, on standard error."""
    if cfg.path is None:
        return
    secrets = [k for k in table if is_secret(k, opts[k]) and table[k]]
    secrets += [k for k in table if k.endswith("database-url") and urlsplit(str(table[k])).password]
    if not secrets:
        return
    try:
        mode = cfg.path.stat().st_mode
    except OSError:
        return
    if mode & 0o077:
        click.echo(
            f"warning: {cfg.path} holds {', '.join(sorted(set(secrets)))} but is readable by "
            f"others than its owner (chmod 600 {cfg.path})",
            err=True,
        )


# -- show ------------------------------------------------------------------------------------


def is_secret(key: str, opt: click.Option) -> bool:
    """A value to mask: an option named like a secret whose value is text (not a path to a
    file holding one, not a number such as ``session-token-ttl``, not a choice)."""
    if not _SECRET.search(key):
        return False
    kind = opt.type
    return not isinstance(
        kind,
        click.Path
        | click.File
        | click.Choice
        | click.types.IntParamType
        | click.types.FloatParamType
        | click.types.BoolParamType,
    )


def mask_url(url: str) -> str:
    """``postgresql://hw:pw@db/hatchway`` → ``postgresql://hw:********@db/hatchway``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))
    except ValueError:
        return MASK


def _masked(key: str, opt: click.Option | None, value: Any) -> Any:
    if value is None:
        return None
    if key.endswith("database-url") or key.endswith("url"):
        return mask_url(str(value)) if isinstance(value, str) else value
    if opt is None or is_secret(key, opt):
        return MASK
    return value


def _plain(value: Any) -> Any:
    """A value as TOML/JSON can show it."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if hasattr(value, "value") and not isinstance(value, str | int | float | bool):
        return _plain(value.value)  # enums
    return value


def effective(cmd: click.Command, path: tuple[str, ...], cfg: ConfigFile) -> dict[str, Any]:
    """Each option's value for ``cmd`` and where it comes from (masked where secret)."""
    ctx = click.Context(cmd, info_name=path[-1] if path else None)
    table = cfg.table(path)
    out: dict[str, Any] = {}
    for key, opt in options(cmd).items():
        entry: dict[str, Any] = {"env": env_names(opt)}
        value: Any = None
        for name in env_names(opt):
            raw = os.environ.get(name)
            if raw:
                value = check_value(ctx, opt, raw, f"environment variable {name}", from_file=False)
                entry["source"] = f"environment {name}"
                break
        else:
            if key in table:
                value = table[key]
                entry["source"] = f"file {cfg.path}"
            else:
                default = opt.get_default(ctx, call=True)
                # click's "no default" is a private sentinel, never a setting's value
                value = default if isinstance(default, _VALUES) else None
                if opt.is_flag and opt.is_bool_flag and value is None:
                    value = False
                entry["source"] = (
                    "default"
                    if value is not None
                    else ("unset (required)" if opt.required else "unset")
                )
        entry["value"] = _plain(_masked(key, opt, _plain(value)))
        out[key] = entry
    for name in ENV_ONLY.get(".".join(path), ()):
        raw = os.environ.get(name)
        key = name.removeprefix(ENV_PREFIX + "_").lower().replace("_", "-")
        out.setdefault(
            key,
            {
                "env": [name],
                "source": f"environment {name} (environment only)"
                if raw
                else "unset (environment only)",
                "value": (MASK if _SECRET.search(key) else raw) if raw else None,
            },
        )
    return out


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def find_command(root: click.Group, name: str) -> tuple[click.Command, tuple[str, ...]]:
    path = tuple(p for p in re.split(r"[\s.]+", name.strip()) if p)
    cmd: click.Command = root
    for part in path:
        sub = cmd.commands.get(part) if isinstance(cmd, click.Group) else None
        if sub is None:
            raise ConfigError(f"no command {name!r} (e.g. server, agent, up, 'sessions list')")
        cmd = sub
    if isinstance(cmd, click.Group) or not path:
        raise ConfigError(f"{name!r} is a group of commands: name one of them")
    return cmd, path


@click.group("config")
def config_group() -> None:
    """Settings: the config file, the environment, and what they add up to."""


@config_group.command("show")
@click.option(
    "--command",
    "commands",
    multiple=True,
    metavar="COMMAND",
    help="A command whose settings to show: server, agent, up, 'sessions list', … "
    "(repeatable; default: server, agent and up).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=CONFIG_ENV,
    show_envvar=True,
    help="Settings file (default: the search path, see docs/configuration.md).",
)
@click.option(
    "--output",
    type=click.Choice(["toml", "json"]),
    default="toml",
    show_default=True,
    help="TOML (with each value's source as a comment) or JSON.",
)
@click.pass_context
def show_cmd(
    ctx: click.Context, commands: tuple[str, ...], config_file: Path | None, output: str
) -> None:
    """Print the effective settings (flags aside) and where each comes from; secrets masked."""
    root = ctx.find_root().command
    assert isinstance(root, click.Group)
    source = ctx.get_parameter_source("config_file")
    origin = "--config" if source is click.core.ParameterSource.COMMANDLINE else f"${CONFIG_ENV}"
    cfg = locate(config_file, origin)
    check_file(root, cfg)
    result: dict[str, Any] = {}
    for name in commands or DEFAULT_COMMANDS:
        cmd, path = find_command(root, name)
        result[".".join(path)] = effective(cmd, path, cfg)
    file_info = {"path": str(cfg.path) if cfg.path else None, "origin": cfg.origin}
    if output == "json":
        click.echo(json.dumps({"config_file": file_info, "commands": result}, indent=2))
        return
    if cfg.path is None:
        searched = ", ".join(str(p) for p in search_path())
        click.echo(f"# config file: none (searched {searched})")
    else:
        click.echo(f"# config file: {cfg.path} (from {cfg.origin})")
    for table, settings in result.items():
        click.echo(f"\n[{table}]")
        for key, entry in settings.items():
            line = f"# {key} =" if entry["value"] is None else f"{key} = {_toml(entry['value'])}"
            click.echo(f"{line:<50} # {entry['source']}")


def main_error(exc: Exception) -> None:
    """One line on standard error and exit status 2 (for errors raised outside click)."""
    click.echo(f"Error: {exc}", err=True)
    sys.exit(2)
