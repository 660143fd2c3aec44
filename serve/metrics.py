"""The controller's Prometheus metrics: bounded labels only (model, route, stage decision, outcome;
never a request id or a prompt), in a registry of its own, served at ``GET /metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from estimators.stage import CostRates

__all__ = ["PROMETHEUS_TEXT", "ControllerMetrics"]

PROMETHEUS_TEXT = "text/plain; version=0.0.4"  # the exposition format's media type


class ControllerMetrics:
    """One controller's counters, histograms and cost-model gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cascade_requests", "Requests answered, by route and outcome",
                                ["route", "served_model", "outcome"], registry=r)
        self.stages = Counter("cascade_stage_calls", "Cascade stages, by model and decision",
                              ["model", "decision"], registry=r)
        self.escalations = Counter("cascade_escalations", "Escalations between consecutive stages",
                                   ["from_model", "to_model"], registry=r)
        self.gpu = Histogram("cascade_request_gpu_seconds", "Engine GPU time of a request, all stages",
                             buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30), registry=r)
        self.decide = Histogram("cascade_route_decision_seconds", "Time of one routing decision",
                                buckets=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2), registry=r)
        self.rate = Gauge("cascade_cost_model_seconds_per_token", "Measured GPU-seconds per token",
                          ["model", "phase"], registry=r)
        self.overhead = Gauge("cascade_cost_model_overhead_seconds", "Calibrated fixed GPU-seconds per request",
                              ["model"], registry=r)
        self.correction = Gauge("cascade_cost_model_live_correction",
                                "Live factor on the calibrated cost law (bounded EWMA of measured/predicted)",
                                ["model"], registry=r)

    def set_cost_rates(self, model: str, rates: CostRates) -> None:
        """The gauges of what the cost model's predictions for ``model`` use now."""
        self.rate.labels(model, "prefill").set(rates.prefill_s_per_token)
        self.rate.labels(model, "decode").set(rates.decode_s_per_token)
        if rates.overhead_s is not None:
            self.overhead.labels(model).set(rates.overhead_s)
        if rates.correction is not None:
            self.correction.labels(model).set(rates.correction)

    def exposition(self) -> str:
        """Every metric in Prometheus' text format."""
        return generate_latest(self.registry).decode()
