#include "server/http/oip_routes.h"

namespace dropnet::http {

void RegisterOipRoutes(HttpServer* http, service::Server* server) {
  http->Get("/v2/health/live", "ServerLive", Access::kOpen,
            [](const httplib::Request&, httplib::Response& res) {
              SendJson(res, {{"live", true}});
            });
  http->Get("/v2/health/ready", "ServerReady", Access::kOpen,
            [server](const httplib::Request&, httplib::Response& res) {
              const bool ready = server->ready();
              SendJson(res, {{"ready", ready}}, ready ? 200 : 503);
            });
}

}  // namespace dropnet::http
