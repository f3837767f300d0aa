// The HTTP port's observability routes: GET /metrics (Prometheus' text format, from the server's
// ServiceMetrics), and the dashboard: its page at GET / (index.html, app.js, style.css, and
// Chart.js from Debian's libjs-chart.js at /chart.js) and its JSON endpoints under /api
// (dashboard_api.h).
//
// The page loads without a token (it holds no data); the JSON endpoints need a token of either
// role when the server has tokens, as the calls they make do. /metrics needs one too unless the
// server was started with --metrics-public.
#ifndef DROPNET_HTTP_DASHBOARD_OBSERVABILITY_ROUTES_H_
#define DROPNET_HTTP_DASHBOARD_OBSERVABILITY_ROUTES_H_

#include "server/http/http_server.h"
#include "server/service/server.h"

namespace dropnet::http {

// Registers the routes above on `http` for `server` (started), which must outlive it.
void RegisterObservabilityRoutes(HttpServer* http, service::Server* server, bool metrics_public);

}  // namespace dropnet::http

#endif  // DROPNET_HTTP_DASHBOARD_OBSERVABILITY_ROUTES_H_
