use actix_web::http::header;
use actix_web::HttpRequest;

use super::error::ApiError;
use crate::domain::{TenantDirectory, TenantId};

/// Optional header naming the tenant the client believes it is; it must agree with the key.
pub const TENANT_HEADER: &str = "X-Tenant-Id";

/// The tenant of the request, from its `Authorization: Bearer <key>`. The tenant is never taken from
/// the body or a parameter.
pub fn authenticate(
    request: &HttpRequest,
    tenants: &TenantDirectory,
) -> Result<TenantId, ApiError> {
    let authorization =
        request
            .headers()
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::Unauthorized(
                "Missing API key: send Authorization: Bearer <key>",
            ))?;
    let api_key = authorization
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .ok_or(ApiError::Unauthorized(
            "Malformed Authorization header: expected Bearer <key>",
        ))?;
    let tenant = tenants
        .authenticate(api_key)
        .ok_or(ApiError::Unauthorized("Unknown API key"))?
        .clone();
    if let Some(claimed) = request.headers().get(TENANT_HEADER) {
        if claimed.as_bytes() != tenant.as_str().as_bytes() {
            return Err(ApiError::Forbidden(
                "X-Tenant-Id does not match the API key's tenant",
            ));
        }
    }
    Ok(tenant)
}
