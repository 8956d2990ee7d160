"""Metrics render every series from a registry of their own (the HTTP endpoint is tested in
tests/integration/test_grpc_metrics.py: unit tests open no sockets)."""

from __future__ import annotations

import contextvars

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from foundation.metrics import Metrics, route_var


def _samples(metrics: Metrics) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }


def test_render_holds_every_series():
    metrics = Metrics("gateway")
    metrics.observe_request("Decrypt", "shared", "OK", 0.002)
    metrics.observe_request("Decrypt", "shared", "OK", 0.004)
    metrics.observe_request("Decrypt", "instance:dev-dedicated", "NOT_FOUND", 0.001)
    metrics.cache_hit()
    metrics.cache_hit()
    metrics.cache_miss()
    metrics.observe_hsm("encrypt", 0.00004)
    metrics.upstream_retry("shared")
    samples = _samples(metrics)
    ok = {"component": "gateway", "operation": "Decrypt", "route": "shared"}
    assert samples[("keyrelay_requests_total", frozenset({**ok, "code": "OK"}.items()))] == 2
    assert samples[(
        "keyrelay_requests_total",
        frozenset({**ok, "route": "instance:dev-dedicated", "code": "NOT_FOUND"}.items()),
    )] == 1
    assert samples[("keyrelay_request_seconds_count", frozenset(ok.items()))] == 2
    assert samples[("keyrelay_request_seconds_bucket", frozenset({**ok, "le": "0.0005"}.items()))] == 0
    assert samples[("keyrelay_request_seconds_bucket", frozenset({**ok, "le": "10.0"}.items()))] == 2
    assert samples[("keyrelay_registry_cache_total", frozenset({"result": "hit"}.items()))] == 2
    assert samples[("keyrelay_registry_cache_total", frozenset({"result": "miss"}.items()))] == 1
    assert samples[("keyrelay_hsm_operation_seconds_count", frozenset({"operation": "encrypt"}.items()))] == 1
    assert samples[("keyrelay_upstream_retries_total", frozenset({"route": "shared"}.items()))] == 1


def test_cache_series_start_at_zero():
    samples = _samples(Metrics("gateway"))
    assert samples[("keyrelay_registry_cache_total", frozenset({"result": "miss"}.items()))] == 0


def test_two_servers_do_not_share_series():
    gateway, node = Metrics("gateway"), Metrics("node")
    gateway.observe_request("Encrypt", "shared", "OK", 0.001)
    assert b'component="gateway"' in gateway.render()
    assert b"keyrelay_requests_total{" not in node.render()
    assert REGISTRY.get_sample_value("keyrelay_requests_total", {"component": "gateway"}) is None


def test_route_defaults_to_local():
    assert contextvars.Context().run(route_var.get) == "local"
