#include "server/http/dashboard/observability_routes.h"

#include <fstream>
#include <memory>
#include <sstream>

#include <spdlog/spdlog.h>

#include "server/http/dashboard/dashboard_api.h"

namespace dropnet::http {

namespace {

// The page's own files only: scripts and styles from this origin, images drawn into canvases.
constexpr const char* kContentSecurityPolicy =
    "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'";

void Reply(httplib::Response& res, const ApiResult& r) {
  if (r.status.ok()) {
    res.set_content(r.json, "application/json");
  } else {
    SendStatus(res, r.status);
  }
}

std::string Authorization(const httplib::Request& req) {
  return req.get_header_value("Authorization");
}

void ServeFile(httplib::Response& res, std::string_view content_type, std::string_view bytes) {
  res.set_content(bytes.data(), bytes.size(), std::string(content_type).c_str());
  res.set_header("Content-Security-Policy", kContentSecurityPolicy);
  res.set_header("X-Content-Type-Options", "nosniff");
  res.set_header("Cache-Control", "no-cache");
}

void RegisterApiRoutes(HttpServer* http, const std::shared_ptr<DashboardApi>& api) {
  http->Get("/api/models", "api.ListModels", Access::kPredict,
            [api](const httplib::Request& req, httplib::Response& res) {
              Reply(res, api->ListModels(Authorization(req)));
            });
  http->Get(R"(/api/models/([^/]+))", "api.GetModel", Access::kPredict,
            [api](const httplib::Request& req, httplib::Response& res) {
              Reply(res, api->GetModel(Authorization(req), req.matches[1].str()));
            });
  http->Get("/api/datasets", "api.ListDatasets", Access::kPredict,
            [api](const httplib::Request& req, httplib::Response& res) {
              Reply(res, api->ListDatasets(Authorization(req)));
            });
  http->Post("/api/evaluate", "api.Evaluate", Access::kPredict,
             [api](const httplib::Request& req, httplib::Response& res) {
               Reply(res, api->Evaluate(Authorization(req), req.body));
             });
  http->Post("/api/uncertainty", "api.PredictUncertainty", Access::kPredict,
             [api](const httplib::Request& req, httplib::Response& res) {
               Reply(res, api->PredictUncertainty(Authorization(req), req.body));
             });
}

}  // namespace

void RegisterObservabilityRoutes(HttpServer* http, service::Server* server, bool metrics_public) {
  service::ServiceMetrics* metrics = &server->metrics();
  http->Get("/metrics", "Metrics", metrics_public ? Access::kOpen : Access::kPredict,
            [metrics](const httplib::Request&, httplib::Response& res) {
              res.set_content(metrics->Scrape(), "text/plain; version=0.0.4; charset=utf-8");
            });

  RegisterApiRoutes(http, std::make_shared<DashboardApi>(server->InProcessChannel()));

  http->Get(R"(/(index\.html|app\.js|style\.css|favicon\.svg)?)", "Dashboard", Access::kOpen,
            [](const httplib::Request& req, httplib::Response& res) {
              const auto file = DashboardFile(req.path);
              if (!file) {
                SendError(res, 404, "no file " + req.path);
                return;
              }
              ServeFile(res, file->content_type, file->bytes);
            });
  // Chart.js, read once: Debian's libjs-chart.js.
  auto chart_js = std::make_shared<std::string>();
  const auto path = ChartJsPath();
  if (std::ifstream in(path, std::ios::binary); in) {
    std::ostringstream bytes;
    bytes << in.rdbuf();
    *chart_js = bytes.str();
  } else {
    spdlog::default_logger()->warn(
        "dashboard: cannot read Chart.js at {} (Debian package libjs-chart.js); the page will "
        "show no charts",
        path.string());
  }
  http->Get("/chart.js", "Dashboard", Access::kOpen,
            [chart_js, path](const httplib::Request&, httplib::Response& res) {
              if (chart_js->empty()) {
                SendError(res, 404,
                          "Chart.js is not installed at " + path.string() +
                              " (Debian package libjs-chart.js)");
                return;
              }
              ServeFile(res, "text/javascript; charset=utf-8", *chart_js);
            });
}

}  // namespace dropnet::http
