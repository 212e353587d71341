"""The one typed configuration of the service.

Precedence, highest first: explicit CLI overrides (``--set section.key=value``) > environment
(``COLDSTREAM_<SECTION>__<KEY>``, e.g. ``COLDSTREAM_REDIS__URL``) > TOML file (``--config``) >
defaults defined here. Unknown keys and bad values fail at start-up with the offending key named.

This is the only module that reads the environment or configuration files. Every key is documented
in ``deploy/coldstream.example.toml``; ``tests/streamer/test_config.py`` checks the two agree.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from streamer.errors import StreamerError

log = logging.getLogger(__name__)

ENV_PREFIX = "COLDSTREAM_"


class ConfigError(StreamerError):
    """The configuration cannot be used; the message names the key."""


class _Section(BaseModel):
    # inf would pass every "> 0" bound and mean "never" (no drain timeout, no stall, no state save)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# A stream selection: "NET_STA" (wildcards ? and *), optionally ":SELECTORS", space-separated
# SeedLink v3 selectors [!][LL]CCC[.T] (? wildcards, "-" for a blank location, "!" excludes).
STATION_PATTERN_RE = re.compile(r"[A-Za-z0-9*?]+_[A-Za-z0-9*?]+")
SELECTOR_RE = re.compile(r"!?(?:(?:[A-Za-z0-9?-]{2})?[A-Za-z0-9?]{3}(?:\.[A-Za-z?])?|\.[A-Za-z?])")


def split_stream_spec(spec: str) -> tuple[str, tuple[str, ...]]:
    """``"NC_*"``, ``"BK_CMB:HH? EH?"`` or ``"NC_* :HH?"`` -> ``(station pattern, selectors)``;
    ``ValueError`` naming the part that is wrong (``"XX.DEM01"``, ``"XX DEM01"``, ``"XX_A:HHZZ"``)."""
    station, _, selector_text = spec.partition(":")
    station = station.strip()
    if not STATION_PATTERN_RE.fullmatch(station):
        raise ValueError(
            f"stream {spec!r}: the station must look like NET_STA (network, underscore, station; wildcards ? and *), "
            "optionally followed by ':' and SeedLink selectors, e.g. 'XX_DEM01' or 'XX_*:HH?'"
        )
    selectors = tuple(selector_text.split())
    bad = [sel for sel in selectors if not SELECTOR_RE.fullmatch(sel)]
    if bad:
        raise ValueError(f"stream {spec!r}: selector {bad[0]!r} is not [!][LL]CCC[.T] (? wildcards, - for a blank location)")
    if ":" in spec and not selectors:
        raise ValueError(f"stream {spec!r}: ':' without selectors")
    return station.upper(), selectors


class SeedLinkServer(_Section):
    """One SeedLink server and what to ask it for."""

    host: str = "127.0.0.1"
    port: int = Field(18000, ge=1, le=65535)
    # Multi-station selection: "NET_STA" (wildcards ? and *), optionally ":SELECTORS" with
    # space-separated SeedLink v3 selectors, e.g. "NC_* :HH? EH?" or "BK_CMB:HH?".
    streams: list[str] = Field(default_factory=lambda: ["*_*"])
    tls: bool = False

    @field_validator("streams")
    @classmethod
    def _stream_syntax(cls, v: list[str]) -> list[str]:
        # One entry per station pattern: on resume the client asks for a station by name with one
        # entry's selectors, while a first connection sends every entry (and servers differ in
        # what a repeated STATION means), so a pattern listed twice would change what is received
        # across a restart. A pattern and an exact station that overlap ("XX_*" and "XX_A") are
        # fine: the exact entry carries the station's selectors on every connection.
        seen: dict[str, str] = {}
        for spec in v:
            station, _ = split_stream_spec(spec)
            if station in seen:
                raise ValueError(
                    f"station {station} is listed twice ({seen[station]!r} and {spec!r}); give it once, "
                    "with all its selectors in one entry, e.g. 'XX_A:HH? EH?'"
                )
            seen[station] = spec
        return v


class SeedLinkSettings(_Section):
    servers: list[SeedLinkServer] = Field(default_factory=lambda: [SeedLinkServer()])
    state_file: Path = Path("coldstream-seedlink.state")
    state_save_interval_s: float = Field(5.0, gt=0)
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(60.0, gt=0)
    reconnect_fast_max_s: float = Field(
        2.0, gt=0, description="back-off cap while a server that was delivering data is away (quick return after its restart)"
    )
    reconnect_fast_for_s: float = Field(
        300.0, ge=0, description="how long into such an outage the short cap holds; then the exponential back-off"
    )
    data_timeout_s: float = Field(60.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _backoff_order(self) -> "SeedLinkSettings":
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self


class BufferSettings(_Section):
    horizon_s: float = Field(180.0, gt=0, description="ring buffer length per station")
    max_zero_fill_gap_s: float = Field(1.0, ge=0, description="gaps up to this are zero-filled and masked")
    resample: bool = Field(True, description="resample other rates to the model rate; false = reject")
    single_component: Literal["skip", "zero_fill"] = "zero_fill"
    max_future_s: float = Field(30.0, gt=0, description="reject samples later than now + this")
    max_clock_jump_s: float = Field(
        3600.0, gt=0,
        description="a jump larger than this resets the buffer: at once after as long an outage, "
        "else once one window of data confirms it",
    )


class WindowSettings(_Section):
    stride_s: float = Field(10.0, gt=0)
    min_valid_fraction: float = Field(0.5, ge=0, le=1, description="windows with less valid data are skipped")
    late_grace_s: float = Field(
        3.0, ge=0, le=60,
        description="a late window with missing data waits this long (wall time) for the other components",
    )


class WorkerSettings(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(32, ge=1)
    max_wait_ms: float = Field(200.0, ge=0)
    budget_ms: float = Field(2000.0, gt=0, description="time allowed for one batch")
    max_steps: int | None = Field(
        None, ge=1,
        description="sampler steps at most; unset: the weights' recommended steps (v2: 1, as `coldstream denoise` runs)",
    )
    min_steps: int = Field(1, ge=1)
    queue_max_windows: int = Field(4000, ge=1)
    torch_threads: int | None = Field(None, ge=1)
    mixed_precision: bool = True
    shed_age_strides: float = Field(3.0, ge=0, description="queued windows older than this many strides are shed; 0 = never")
    reclaim_idle_s: float = Field(60.0, gt=0, description="scale-out: take over windows pending this long on another worker")
    scaleout_max_out_of_order: int = Field(6, ge=0, description="scale-out: strides a late worker result may lag behind")
    target_latency_s: float | None = Field(None, gt=0, description="end-to-end latency target; tightens budget_ms per batch")
    pad_batch_multiple: int = Field(
        8, ge=1, description="run batches padded up to a multiple of this (few shapes, bounded torch caches); 1 = off"
    )

    @model_validator(mode="after")
    def _steps_order(self) -> "WorkerSettings":
        if self.max_steps is not None and self.min_steps > self.max_steps:
            raise ValueError("min_steps must be <= max_steps")
        return self


class ModelSettings(_Section):
    weights: Path | None = Field(None, description="None = the weights shipped in models/weights")
    sha256: str | None = None
    residual_mix: float | None = Field(
        None, ge=0, lt=1, description="share of the removed part kept in the output; None = the weights' own"
    )
    residual_mix_band_hz: tuple[float, float] | None = Field(
        None, description="[lo, hi] Hz: the band in which the removed part is kept; [0, 50] = every frequency; "
        "None = the weights' own",
    )

    @field_validator("residual_mix_band_hz")
    @classmethod
    def _band_is_ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 <= v[0] < v[1]:
            raise ValueError(f"residual_mix_band_hz must be [lo, hi] Hz with 0 <= lo < hi, got {list(v)}")
        return v


class PickerSettings(_Section):
    enabled: bool = True
    model: Literal["phasenet", "phasenetlight"] = "phasenet"
    weights_name: str = "original"
    p_threshold: float = Field(0.3, gt=0, lt=1, description="P threshold on the raw input (and the default)")
    s_threshold: float = Field(0.3, gt=0, lt=1)
    unconfirmed_p_threshold: float | None = Field(
        None, gt=0, le=1,
        description="P probability a pick on the denoised output needs where PhaseNet on the raw input does not "
        "reach p_threshold within 0.5 s; unset: the weights' (v2: 0.45, see the model card); at or below "
        "p_threshold: no confirmation",
    )
    raw_comparison: bool = False
    seisbench_cache: Path | None = Field(None, description="SeisBench cache root; None = SeisBench default")


_URL_CREDENTIALS_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*@)(.*)$", re.DOTALL)


def mask_url(url: str) -> str:
    """``url`` with any user name or password replaced by ``***`` (for reprs, logs, ``coldstream config``)."""
    m = _URL_CREDENTIALS_RE.match(url)
    return url if m is None else f"{m.group(1)}***@{m.group(3)}"


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    embedded: bool = Field(False, description="reserved: the service always connects to url; true is refused")
    password: SecretStr | None = None
    password_file: Path | None = None
    tls_ca_file: Path | None = None
    stream_prefix: str = "coldstream"
    maxlen: int = Field(100_000, ge=1, description="approximate MAXLEN per stream")
    work_queue_maxlen: int = Field(
        20_000, ge=100, description="scale-out: approximate MAXLEN of the windows and results work streams"
    )
    backlog_max_entries: int = Field(50_000, ge=1)
    retry_max_s: float = Field(30.0, gt=0)

    @field_validator("embedded")
    @classmethod
    def _no_embedded(cls, v: bool) -> bool:
        if v:
            raise ValueError(
                "the service does not start a redis-server; start one and set redis.url "
                "(coldstream demo brings its own)"
            )
        return v

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    def __repr_args__(self) -> Any:
        # reprs and str() show the URL without its user name and password
        for name, value in super().__repr_args__():
            yield name, (mask_url(value) if name == "url" and isinstance(value, str) else value)

    def resolved_password(self) -> str | None:
        """The password from ``password`` or ``password_file`` (never logged)."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return None


class MetricsSettings(_Section):
    enabled: bool = True
    bind_address: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


class StitchSettings(_Section):
    mode: Literal["overlap_add", "centre_crop"] = "overlap_add"


class EewSettings(_Section):
    """The early-warning fast path (``streamer.eew``, ``docs/eew-picks.md``)."""

    enabled: bool = Field(True, description="provisional picks within about a second of the onset (needs the picker)")
    stride_s: float = Field(1.0, ge=0.1, le=10, description="a trailing window per armed station this often")
    steps: int = Field(1, ge=1, le=8, description="sampler steps on the fast path (its cheapest setting)")
    p_threshold: float = Field(0.5, gt=0, lt=1)
    s_threshold: float = Field(0.5, gt=0, lt=1)
    min_post_onset_s: float = Field(0.5, gt=0, le=5, description="data after a maximum before it is a pick")
    sta_s: float = Field(0.5, gt=0)
    lta_s: float = Field(10.0, gt=0)
    trigger_ratio: float = Field(4.0, gt=1, description="STA/LTA ratio that arms a station")
    detrigger_ratio: float = Field(1.5, gt=0)
    armed_s: float = Field(6.0, gt=0, le=60, description="seconds of data after a trigger with trailing windows")
    trigger_window_s: float = Field(2.0, gt=0, description="a provisional P lies this close to a trigger")
    match_tolerance_s: float = Field(0.5, gt=0, le=2, description="a final pick this close confirms a provisional one")
    max_age_s: float = Field(3.0, gt=0, description="fast windows older than this are shed (too late to help)")
    queue_max_windows: int = Field(512, ge=1)
    retract_after_s: float = Field(300.0, gt=0, description="retract an onset without a final decision after this")

    @model_validator(mode="after")
    def _ratios(self) -> "EewSettings":
        if self.detrigger_ratio >= self.trigger_ratio:
            raise ValueError("eew.detrigger_ratio must be below eew.trigger_ratio")
        if self.sta_s >= self.lta_s:
            raise ValueError("eew.sta_s must be shorter than eew.lta_s")
        return self


class InventorySettings(_Section):
    stationxml: Path | None = Field(
        None, description="StationXML file: channel azimuths and dips rotate each station's components to Z, N, E"
    )


class ServiceSettings(_Section):
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    drain_timeout_s: float = Field(20.0, gt=0)
    watchdog_stall_s: float = Field(60.0, gt=0, description="a stage without progress this long stops watchdog pings")


class Settings(BaseSettings):
    """All service settings; frozen once loaded."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    seedlink: SeedLinkSettings = Field(default_factory=SeedLinkSettings)
    buffers: BufferSettings = Field(default_factory=BufferSettings)
    windows: WindowSettings = Field(default_factory=WindowSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    picker: PickerSettings = Field(default_factory=PickerSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    stitch: StitchSettings = Field(default_factory=StitchSettings)
    inventory: InventorySettings = Field(default_factory=InventorySettings)
    eew: EewSettings = Field(default_factory=EewSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings merges TOML < environment < CLI itself (pydantic-settings merges nested
        # sections shallowly) and hands the result over as this single layer.
        return (_CliLayer(settings_cls),)


class _CliLayer(PydanticBaseSettingsSource):
    """Highest-precedence layer: the CLI overrides stashed by load_settings."""

    overrides: dict[str, Any] = {}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.overrides.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.overrides)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``section.key=value``; the value is read as TOML (``8``, ``true``, ``"x"``, ``[1,2]``)
    and falls back to a plain string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _check_secret_file(path: Path, what: str) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what}: file {path} does not exist") from None
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        log.warning("%s %s is readable by every user; chmod 600 it", what, path)


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(
    config_file: Path | str | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the settings from defaults, a TOML file, the environment and CLI overrides.

    ``environ`` replaces ``os.environ`` (tests); ``overrides`` are ``section.key=value`` strings or
    an already-nested dict. Raises ``ConfigError`` naming every bad or unknown key.
    """
    file_data: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            file_data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        if "password" in file_data.get("redis", {}):
            _check_secret_file(path, "config file holding redis.password")

    cli: dict[str, Any] = {}
    if isinstance(overrides, dict):
        cli = overrides
    elif overrides:
        for text in overrides:
            k, v = parse_override(text)
            _set_dotted(cli, k, v)

    env = dict(os.environ if environ is None else environ)
    unknown_env = _unknown_env_keys(env)
    if unknown_env:
        raise ConfigError("unknown environment settings: " + ", ".join(sorted(unknown_env)))

    # pydantic-settings merges source dicts shallowly per top-level field, so nested sections are
    # merged here: TOML < env < CLI, then handed over as one layer.
    env_tree = _env_tree(env)
    merged = _deep_merge(_deep_merge(file_data, env_tree), cli)
    try:
        _CliLayer.overrides = merged
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
    finally:
        _CliLayer.overrides = {}
    if settings.redis.password_file is not None:
        _check_secret_file(settings.redis.password_file, "redis.password_file")
    return settings


def _env_tree(env: dict[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name[len(ENV_PREFIX):] in _NON_SETTINGS_ENV:
            continue
        dotted = name[len(ENV_PREFIX):].lower().replace("__", ".")
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        _set_dotted(tree, dotted, value)
    return tree


_NON_SETTINGS_ENV = {"SHARED_DIR"}  # COLDSTREAM_SHARED_DIR: test data location, not a setting


def _unknown_env_keys(env: dict[str, str]) -> list[str]:
    unknown = []
    for name in env:
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):]
        if rest in _NON_SETTINGS_ENV:
            continue
        section = rest.split("__", 1)[0].lower()
        if section not in Settings.model_fields:
            unknown.append(name)
            continue
        if "__" in rest:
            key = rest.split("__", 2)[1].lower()
            sub = Settings.model_fields[section].annotation
            if isinstance(sub, type) and issubclass(sub, BaseModel) and key not in sub.model_fields:
                unknown.append(name)
    return unknown


def settings_to_toml_dict(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data with secrets masked (for ``coldstream config``)."""
    data = settings.model_dump(mode="json")
    if data["redis"].get("password"):
        data["redis"]["password"] = "**********"
    data["redis"]["url"] = mask_url(data["redis"]["url"])
    return data
