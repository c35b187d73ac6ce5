//! What both HTTP roles (`produce`, `console`) are built from: one route table per role, registered
//! with a 405 that names the allowed methods and listed for the tests that hold each OpenAPI
//! document to the routes really served; and serving until the role's shutdown token is cancelled.

use actix_web::dev::Server;
use actix_web::http::Method;
use actix_web::{web, HttpResponse, Route};
use tokio_util::sync::CancellationToken;

/// A role's routes: each path with its (method, handler) pairs.
pub type RouteTable = Vec<(&'static str, Vec<(Method, Route)>)>;

/// Registers every route of `table`; another method on a known path is answered by
/// `method_not_allowed` with the allowed ones (`GET, POST`), for the `Allow` header and the body.
pub fn register(
    config: &mut web::ServiceConfig,
    table: RouteTable,
    method_not_allowed: fn(String) -> HttpResponse,
) {
    for (path, routes) in table {
        let allow = routes
            .iter()
            .map(|(method, _)| method.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let mut resource = web::resource(path);
        for (_, route) in routes {
            resource = resource.route(route);
        }
        config.service(resource.default_service(web::to(move || {
            let response = method_not_allowed(allow.clone());
            async move { response }
        })));
    }
}

/// `table` as (path, methods), for tests and tools.
pub fn listed(table: RouteTable) -> Vec<(String, Vec<String>)> {
    table
        .into_iter()
        .map(|(path, routes)| {
            let methods = routes
                .iter()
                .map(|(method, _)| method.to_string())
                .collect();
            (path.to_owned(), methods)
        })
        .collect()
}

/// Serves until `shutdown` is cancelled (or the server is stopped through its handle): then stops
/// accepting and lets in-flight requests finish (`shutdown_timeout`). Cancels `shutdown` on the way
/// out, so whatever else of the role waits on it ends too.
pub async fn serve_until_cancelled(
    server: Server,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let handle = server.handle();
    let cancelled = shutdown.clone();
    let stopper = tokio::spawn(async move {
        cancelled.cancelled().await;
        handle.stop(true).await;
    });
    let served = server.await;
    shutdown.cancel();
    stopper.abort();
    served
}
