//! The route tables both HTTP roles (`produce`, `console`) are built from: one list of (path,
//! methods) per role, registered with a 405 that names the allowed methods, and listed for the
//! tests that hold each OpenAPI document to the routes really served.

use actix_web::http::Method;
use actix_web::{web, HttpResponse, Route};

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
