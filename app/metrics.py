"""Prometheus metrics: what the service counted, and the state read when scraped.

Counters and the latency histogram live in prometheus_client. Under gunicorn
they are in multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by gunicorn.conf.py
before anything imports prometheus_client): each worker writes its own memory-
mapped files in that folder and a scrape adds up every worker's, dead ones
included, so every worker answers a scrape with the same totals. Without the
variable (in-process tests, `flask run`) they are ordinary in-process metrics.

Figures that belong to the database (outbox items per status, opted-out
numbers) are not counted by any worker: they are read from the database, so
they are right whichever worker, host or command changed them; each worker
reads them at most once every STATE_SECONDS, however often it is scraped.
With METRICS_TOKEN set, a scrape needs `Authorization: Bearer <token>`.

Label values are bounded: endpoints are the app's route names ("other" for any
other path), statuses the HTTP codes, rules the names in the rules file, delivery
report statuses Plivo's known ones ("other" for any other), outbox sends their kind
and result. The version in responder_build_info is read once, at import.
Nothing here imports Flask.
"""

from __future__ import annotations

import glob
import hmac
import importlib.metadata
import logging
import os
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import values as _values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import disable_created_metrics
from prometheus_client.multiprocess import MultiProcessCollector

from .store.outbox import STATUSES

__all__ = ["CONTENT_TYPE", "MULTIPROCESS", "VERSION", "Exporter", "Instrumented", "StateCollector",
           "check_folder", "counting", "decided", "delivery_report", "endpoints_of", "outbox_result",
           "regex_stopped", "rejected", "repeated", "stop_counting"]

log = logging.getLogger("app.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: True when prometheus_client chose multiprocess mode: it decides once, when it is first
#: imported, from PROMETHEUS_MULTIPROC_DIR; what matters is that choice, not the variable now.
MULTIPROCESS: bool = bool(getattr(_values.ValueClass, "_multiprocess", False))
#: Statuses of outbox items, every one exposed (0 when there is none).
OUTBOX_STATUSES = STATUSES
#: Seconds. Most answers take a few milliseconds; Plivo gives up after 8 s.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 8.0)
#: The `endpoint` label of any path that is not one of the app's routes.
OTHER = "other"
DELIVERY_NEW, DELIVERY_REPEAT = "new", "repeat"
#: Seconds a worker answers scrapes with the database figures it read last: a storm of
#: scrapes costs the database one read of them (two small queries) per worker this often.
STATE_SECONDS = 5.0
#: Plivo's delivery report statuses, the `status` label of responder_delivery_reports_total;
#: any other (or none) counts as "other", so a sender cannot grow the label set.
REPORT_STATUSES = frozenset({"queued", "sent", "delivered", "undelivered", "failed", "read", "rejected"})
#: The labels of responder_outbox_sends_total (the sender's, see app/outbound/sender.py).
SEND_KINDS = frozenset({"message", "lookup", "webhook"})
SEND_RESULTS = frozenset({"sent", "retry", "failed", "unknown"})


def _version() -> str:
    """The service's version: pyproject.toml's, from the checkout the service runs from (the image
    copies it too); else the installed package's; else "unknown". Read once, at import."""
    try:
        with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as fh:
            return str(tomllib.load(fh)["project"]["version"])
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        pass
    try:
        return importlib.metadata.version("responder")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


#: pyproject.toml's version, the `version` label of responder_build_info.
VERSION = _version()

# `_created` series double the output and mean nothing across restarting workers.
disable_created_metrics()

REQUESTS = Counter("responder_requests", "HTTP requests answered, by endpoint (route name) and status code",
                   ["endpoint", "code"])
REQUEST_SECONDS = Histogram("responder_request_seconds", "Time to answer an HTTP request, by endpoint",
                            ["endpoint"], buckets=BUCKETS)
SIGNATURE_REJECTIONS = Counter("responder_signature_rejections",
                               "Webhook calls refused for their Plivo signature (missing, invalid, replayed)",
                               ["reason"])
RULE_MATCHES = Counter("responder_rule_matches", "Rules that acted on a message, by rule name", ["rule"])
OPTOUTS = Counter("responder_optouts", "Opt-out and opt-in changes recorded from inbound messages",
                  ["change"])
MESSAGES = Counter("responder_messages",
                   "Inbound messages answered: new (decided now) or repeat (a retry answered from the record)",
                   ["delivery"])
REGEX_STOPPED = Counter("responder_regex_stopped",
                        "Regex searches stopped at a bound, so the rule did not match: reason time "
                        "(the search or the message's regexes took too long) or length (text too long)",
                        ["rule", "reason"])
DELIVERY_REPORTS = Counter("responder_delivery_reports",
                           "Delivery reports stored from /status (not the same request sent again), by "
                           "Plivo's Status, lower-cased (other: any status Plivo does not document)",
                           ["status"])
OUTBOX_SENDS = Counter("responder_outbox_sends",
                       "Outcomes the web workers' outbox senders recorded: kind message (Message API sends), "
                       "lookup (an unknown send looked up in Plivo's message list) or webhook; result "
                       "sent, retry, failed or unknown", ["kind", "result"])

_OPTOUT_LABELS = {"out": "optout", "in": "optin"}
#: Labelled children, looked up once each: `labels()` costs as much as the count itself.
#: (Made on first use, so the gunicorn master, which imports this module, makes none.)
_children: dict[tuple, object] = {}


#: False in a process that serves no traffic (a `flask` command such as `rules test` or
#: `simulate`, which runs the service's pipeline): it counts nothing and makes no metric
#: file, so a command run where PROMETHEUS_MULTIPROC_DIR is set (`docker exec` into the
#: service's container) adds nothing to what the service's scrape reports.
_counting = True


def stop_counting() -> None:
    """Count nothing in this process from now on (for commands; there is no way back)."""
    global _counting
    _counting = False


def counting() -> bool:
    """Whether this process counts (False after `stop_counting`)."""
    return _counting


def _child(metric, *labels):
    child = _children.get((metric, labels))
    if child is None:
        child = _children[(metric, labels)] = _labelled(metric, labels)
    return child


class _Uncounted:
    """Stands for a labelled metric whose file cannot be opened: counts nothing."""

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


_UNCOUNTED = _Uncounted()
_unopened_logged = False


def _labelled(metric, labels: tuple):
    """`metric.labels(*labels)`, made once per label set. In multiprocess mode the first child
    of a kind opens this process's file for it; if the folder was removed under the running
    service it is made again, and if that fails too the count is dropped (logged once)
    rather than failing the request."""
    global _unopened_logged
    try:
        return metric.labels(*labels)
    except OSError:
        if not MULTIPROCESS:
            raise
    problem = check_folder()
    if problem is None:
        try:
            return metric.labels(*labels)
        except OSError as exc:
            problem = f"cannot open a metric file: {exc.strerror or exc}"
    if not _unopened_logged:
        _unopened_logged = True
        log.error("metrics: %s; this worker's counts are not recorded", problem)
    return _UNCOUNTED


# -- counting, called from the pipeline ------------------------------------------------
def rejected(reason: str) -> None:
    """A webhook call refused for its signature: `missing`, `invalid` or `replayed`."""
    if _counting:
        _child(SIGNATURE_REJECTIONS, reason).inc()


def decided(rules: Iterable[str], change: str | None) -> None:
    """A message decided now (not a retry): the rules that acted and the opt-out change
    recorded (`out`, `in` or None)."""
    if not _counting:
        return
    _child(MESSAGES, DELIVERY_NEW).inc()
    for name in rules:
        _child(RULE_MATCHES, name).inc()
    if change is not None:
        _child(OPTOUTS, _OPTOUT_LABELS.get(change, change)).inc()


def repeated() -> None:
    """A message delivered again (a Plivo retry), answered from the record."""
    if _counting:
        _child(MESSAGES, DELIVERY_REPEAT).inc()


def regex_stopped(rule: str, reason: str) -> None:
    """A rule's regex search stopped at a bound: `time` or `length`."""
    if _counting:
        _child(REGEX_STOPPED, rule, reason).inc()


def delivery_report(status: str | None) -> None:
    """A delivery report stored (a new one, not a retry of the same request): by its Status."""
    if _counting:
        label = (status or "").strip().lower()
        _child(DELIVERY_REPORTS, label if label in REPORT_STATUSES else OTHER).inc()


def outbox_result(kind: str, result: str) -> None:
    """One outcome recorded by an outbox sender (its `on_result`): see OUTBOX_SENDS."""
    if _counting and kind in SEND_KINDS and result in SEND_RESULTS:
        _child(OUTBOX_SENDS, kind, result).inc()


# -- requests: a WSGI wrapper, one counter and one histogram per request -----------------
def endpoints_of(rules: Iterable[tuple[str, str, bool]]) -> dict[str, str]:
    """{path: endpoint label} from (path, endpoint, strict_slashes) of the app's routes.

    Routes with variable parts are left out (they count as "other"); a route that takes
    a trailing slash too is listed with it. Blueprint prefixes are dropped from the name.
    """
    paths: dict[str, str] = {}
    for path, endpoint, strict in rules:
        if "<" in path:
            continue
        name = endpoint.rsplit(".", 1)[-1]
        paths[path] = name
        if not strict and not path.endswith("/"):
            paths.setdefault(path + "/", name)
    return paths


class Instrumented:
    """Wraps a WSGI app: counts each request by endpoint and status, and times it.

    The time is until the app returns its body iterable (the answers here are built
    before they are returned). The labelled children are looked up once per
    (endpoint, status line) and kept, so a request costs one counter increment and one
    histogram observation.
    """

    def __init__(self, app: Callable, paths: Mapping[str, str]):
        self.app = app
        self.paths = dict(paths)
        self._counts: dict[tuple[str, str], object] = {}
        self._timers = {name: _labelled(REQUEST_SECONDS, (name,)) for name in {*self.paths.values(), OTHER}}

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        status_line = ["500"]

        def start(status, headers, exc_info=None):
            status_line[0] = status
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, start)
        finally:
            endpoint = self.paths.get(environ.get("PATH_INFO", ""), OTHER)
            self._timers[endpoint].observe(time.perf_counter() - started)
            key = (endpoint, status_line[0])
            counter = self._counts.get(key)
            if counter is None:
                counter = self._counts[key] = _labelled(REQUESTS, (endpoint, status_line[0][:3]))
            counter.inc()


# -- the scrape ----------------------------------------------------------------------------
class _Forward:
    """The in-process metrics (the default registry) inside a registry of our own."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self):
        return self.registry.collect()


class _BuildInfo:
    """responder_build_info: 1, labelled with the version (VERSION, read at import)."""

    def collect(self):
        info = GaugeMetricFamily("responder_build_info", "The service's build: 1, labelled with its version",
                                 labels=["version"])
        info.add_metric([VERSION], 1)
        yield info


class StateCollector:
    """Figures read when scraped: the database's outbox and opt-outs, this worker's rules.

    The database figures are read at most once every `every` seconds of `clock` (a monotonic
    clock); scrapes in between get the figures read last, and while one thread reads them,
    the others do not wait for it (but the first scrape's do). The rules' figures are this
    worker's, as they are now.

    A database that does not answer leaves its figures out and sets
    responder_database_up to 0; that is logged once, until it answers again.
    """

    def __init__(self, store, holder=None, *, every: float = STATE_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.holder = holder
        self.every = every
        self.clock = clock
        self._down = False
        self._lock = threading.Lock()
        self._reading = threading.Lock()
        #: (when to read again, (outbox counts, opted-out numbers) or None: no answer), or None
        self._read: tuple[float, tuple | None] | None = None

    def collect(self):
        yield from self._rules()
        if self.store is None:
            return
        up = GaugeMetricFamily("responder_database_up", "1 when the database answered its last read, else 0")
        figures = self._figures()
        if figures is None:
            up.add_metric([], 0)
            yield up
            return
        counts, optedout = figures
        up.add_metric([], 1)
        yield up
        items = GaugeMetricFamily("responder_outbox_items", "Outbox items (Message API sends and webhook "
                                  "calls) by status, read from the database", labels=["status"])
        for status in OUTBOX_STATUSES:
            items.add_metric([status], counts.get(status, 0))
        yield items
        numbers = GaugeMetricFamily("responder_optedout_numbers",
                                    "Numbers that opted out (of the account or of one of its numbers), "
                                    "read from the database")
        numbers.add_metric([], optedout)
        yield numbers

    def _figures(self) -> tuple | None:
        """(outbox counts, opted-out numbers), or None when the database did not answer:
        read again only once the last read is `every` seconds old."""
        read = self._read
        if read is not None and self.clock() < read[0]:
            return read[1]
        # One thread reads; the others answer with the last figures meanwhile (none yet: wait).
        if not self._reading.acquire(blocking=read is None):
            return read[1]
        try:
            read = self._read
            if read is not None and self.clock() < read[0]:
                return read[1]   # read by another thread while this one waited
            try:
                figures = (self.store.outbox_counts(), self.store.count_optouts())
            except Exception as exc:  # noqa: BLE001 - a scrape must answer whatever the database does
                self._note(exc)
                figures = None
            else:
                self._note(None)
            self._read = (self.clock() + self.every, figures)
            return figures
        finally:
            self._reading.release()

    def _rules(self):
        if self.holder is None:
            return
        ruleset = self.holder.current()
        info = GaugeMetricFamily("responder_rules_info", "The rules in use: 1, labelled with their digest",
                                 labels=["digest"])
        count = GaugeMetricFamily("responder_rules", "Rules in the rules in use (0: none loaded)")
        if ruleset is not None:
            info.add_metric([ruleset.digest], 1)
        count.add_metric([], len(ruleset.rules) if ruleset is not None else 0)
        failed = GaugeMetricFamily("responder_rules_file_bad",
                                   "1 while the rules file does not compile (the last good rules answer)")
        failed.add_metric([], 1 if getattr(self.holder, "error", None) is not None else 0)
        yield from (info, count, failed)

    def _note(self, exc: Exception | None) -> None:
        with self._lock:
            if exc is not None and not self._down:
                log.warning("metrics: the database did not answer; its figures are left out until it does: %s",
                            type(exc).__name__)
            elif exc is None and self._down:
                log.info("metrics: the database answers again")
            self._down = exc is not None


class _Multiprocess:
    """Every worker's files in the multiprocess folder, summed at each scrape.

    A file that cannot be read (one left empty by a worker killed as it made it, say) is
    left out and logged once, instead of failing the whole scrape; whatever else goes
    wrong reading the folder leaves the counted figures out of that scrape (logged once),
    and the figures read from the database and the rules still answer.
    """

    def __init__(self, path: str):
        self.path = path
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    def collect(self):
        files = glob.glob(os.path.join(self.path, "*.db"))
        try:
            return list(MultiProcessCollector.merge(files, accumulate=True))
        except Exception:  # noqa: BLE001 - one bad file: find it, and sum the others
            pass
        readable = [path for path in files if self._readable(path)]
        try:
            return list(MultiProcessCollector.merge(readable, accumulate=True))
        except Exception as exc:  # noqa: BLE001 - a scrape answers with what it can
            self._once("", "metrics: the counted figures are left out of the scrape: %s: %s",
                       type(exc).__name__, exc)
            return []

    def _readable(self, path: str) -> bool:
        try:
            MultiProcessCollector.merge([path], accumulate=True)
        except FileNotFoundError:
            return False  # a dead worker's empty file, removed since the folder was listed
        except Exception as exc:  # noqa: BLE001
            self._once(path, "metrics: cannot read %s, left out of every scrape: %s: %s",
                       path, type(exc).__name__, exc)
            return False
        return True

    def _once(self, key: str, message: str, *args) -> None:
        with self._lock:
            if key in self._logged:
                return
            self._logged.add(key)
        log.error(message, *args)


class Exporter:
    """Renders the text of a scrape: the counted metrics plus the state (see StateCollector for
    `every` and `clock`); with a `token`, only for a request that brings it."""

    def __init__(self, store=None, holder=None, *, token: str | None = None, every: float = STATE_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self._token = token.encode("utf-8") if token else None
        self.registry = CollectorRegistry(auto_describe=False)
        if MULTIPROCESS:
            # every worker's files, summed at each scrape
            self.registry.register(_Multiprocess(os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")))
        else:
            self.registry.register(_Forward(REGISTRY))
        self.registry.register(_BuildInfo())
        self.registry.register(StateCollector(store, holder, every=every, clock=clock))

    def allows(self, authorization: str | None) -> bool:
        """Whether a request with this Authorization header may scrape: always without a token,
        else only `Bearer <token>` (compared in constant time)."""
        if self._token is None:
            return True
        scheme, _, given = (authorization or "").strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8"), self._token)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def check_folder() -> str | None:
    """Why the multiprocess folder cannot be used, or None when it can (or is not used).

    prometheus_client opens its files there at the first count. A missing folder is made
    again: the master made it, but it can be removed under a running service (by a
    temporary-files cleaner, say), and a worker must still boot.
    """
    if not MULTIPROCESS:
        return None
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if not path:
        return "PROMETHEUS_MULTIPROC_DIR is not set"
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        return f"PROMETHEUS_MULTIPROC_DIR: cannot make the folder {path}: {exc.strerror or exc}"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"PROMETHEUS_MULTIPROC_DIR: the folder {path} is not writable"
    return None
