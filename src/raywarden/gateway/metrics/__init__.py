"""Ray's metrics in the browser without Grafana: Ray's own Grafana panel definitions, queried from the
cluster's Prometheus by the gateway and drawn as server-rendered SVG (docs/metrics.md).

Ray's dashboard embeds Grafana panels as iframes from the host that ``/api/grafana_health`` names. The
gateway answers that call itself, naming ``/ui/metrics``, and serves the panels there, so the Metrics page
and the overview's charts show live data through the gateway, authenticated and audited like every page.
"""
