//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations; the activity
//! body schema is the JSON Schema itself (OpenAPI 3.1 speaks JSON Schema 2020-12), hoisted into the
//! components. A test holds the document to the registered routes ([`super::registered_routes`]).

use serde_json::{json, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{activities, introspection, read, stream};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "activity-pipeline API",
        description = "Kafka-native activity ingestion. Authenticate with `Authorization: Bearer <api key>`; \
            the tenant always comes from the key. Errors are `{\"success\": false, \"error\": \"...\", \"details\"?: [...]}`; \
            unknown paths answer 404 and wrong methods 405 with `Allow`."
    ),
    paths(
        activities::create,
        activities::create_batch,
        read::list,
        read::get_one,
        read::analytics,
        stream::stream,
        introspection::healthz,
        introspection::readyz,
        introspection::metrics,
        introspection::activity_schema,
        introspection::openapi,
    ),
    components(schemas(
        activities::Accepted,
        activities::ItemResult,
        activities::BatchOutcome,
        activities::BatchRefusal,
        activities::ErrorBody,
        activities::FieldErrorBody,
        activities::BatchRequestSchema,
        read::ActivityPage,
        read::OneActivity,
        read::Analytics,
        read::StoredActivityBody,
        read::SupersededActivityBody,
        introspection::Health,
        introspection::Readiness,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "intake", description = "Sending activities."),
        (name = "read", description = "Reading the tenant's stored activities, counters and live stream."),
        (name = "operations", description = "Health, readiness, metrics, published documents."),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The tenant's API key."))
                    .build(),
            ),
        );
    }
}

/// The document, with the effective activity schema (`schema_json`) as the `Activity` component and
/// the configured most items of a batch (`intake.batch_max_items`).
pub fn document(schema_json: &str, batch_max_items: usize) -> Value {
    let mut document =
        serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    let mut activity: Value =
        serde_json::from_str(schema_json).expect("the activity schema is JSON");
    // Inside the OpenAPI document, the schema's `#/$defs/...` references would point at the
    // document's root: move the definitions into the components and point there.
    let definitions = activity
        .as_object_mut()
        .and_then(|schema| {
            schema.remove("$schema");
            schema.remove("$id");
            schema.remove("$defs")
        })
        .unwrap_or_else(|| json!({}));
    let rewrite = |value: &Value| -> Value {
        serde_json::from_str(
            &value
                .to_string()
                .replace("\"#/$defs/", "\"#/components/schemas/"),
        )
        .expect("rewritten JSON stays JSON")
    };
    let schemas = document["components"]["schemas"]
        .as_object_mut()
        .expect("components.schemas is an object");
    schemas.remove("ActivitySchemaRef");
    schemas.insert("Activity".to_owned(), rewrite(&activity));
    if let Some(definitions) = definitions.as_object() {
        for (name, definition) in definitions {
            schemas.insert(name.clone(), rewrite(definition));
        }
    }
    let text = document.to_string().replace(
        "#/components/schemas/ActivitySchemaRef",
        "#/components/schemas/Activity",
    );
    let mut document: Value = serde_json::from_str(&text).expect("still JSON");
    document["components"]["schemas"]["BatchRequestSchema"]["properties"]["activities"]
        ["maxItems"] = json!(batch_max_items);
    document["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    document
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_400_is_documented_as_either_refusal_shape() {
        let document = document("{}", 1000);
        let refusal = &document["paths"]["/activities/batch"]["post"]["responses"]["400"]
            ["content"]["application/json"]["schema"];
        assert_eq!(
            refusal["$ref"], "#/components/schemas/BatchRefusal",
            "{refusal}"
        );
        let shapes = &document["components"]["schemas"]["BatchRefusal"]["oneOf"];
        let references: Vec<&str> = shapes
            .as_array()
            .expect("BatchRefusal is a oneOf")
            .iter()
            .filter_map(|shape| shape["$ref"].as_str())
            .collect();
        assert_eq!(
            references,
            [
                "#/components/schemas/ErrorBody",
                "#/components/schemas/BatchOutcome"
            ]
        );
        // Exactly one shape matches: an error body has nothing but success, error, details and
        // detailsOmitted.
        assert_eq!(
            document["components"]["schemas"]["ErrorBody"]["additionalProperties"],
            false
        );
        for shape in ["ErrorBody", "ItemResult"] {
            let omitted = &document["components"]["schemas"][shape]["properties"]["detailsOmitted"];
            assert!(
                omitted["type"].to_string().contains("integer"),
                "{shape}: {omitted}"
            );
        }
    }

    #[test]
    fn a_batch_request_is_documented_as_strictly_as_it_is_validated() {
        let document = document(crate::domain::ACTIVITY_SCHEMA_JSON, 250);
        let schemas = &document["components"]["schemas"];
        let batch = &schemas["BatchRequestSchema"];
        assert_eq!(batch["additionalProperties"], false, "{batch}");
        assert_eq!(batch["required"], json!(["activities"]), "{batch}");
        let activities = &batch["properties"]["activities"];
        assert_eq!(activities["minItems"], 1, "{activities}");
        assert_eq!(activities["maxItems"], 250, "{activities}");

        let shapes: Vec<&str> = schemas["BatchItemSchema"]["oneOf"]
            .as_array()
            .expect("an item is a oneOf")
            .iter()
            .filter_map(|shape| shape["$ref"].as_str())
            .collect();
        assert_eq!(
            shapes,
            [
                "#/components/schemas/Activity",
                "#/components/schemas/WrappedActivitySchema"
            ]
        );
        // The two shapes cannot both match: an activity has no `activity` field.
        assert_eq!(schemas["Activity"]["additionalProperties"], false);
        assert!(schemas["Activity"]["properties"].get("activity").is_none());

        let wrapped = &schemas["WrappedActivitySchema"];
        assert_eq!(wrapped["additionalProperties"], false, "{wrapped}");
        assert_eq!(wrapped["required"], json!(["activity"]), "{wrapped}");
        let key = &wrapped["properties"]["idempotencyKey"];
        assert_eq!(key["maxLength"], 128, "{key}");
        assert_eq!(key["pattern"], "^[A-Za-z0-9._:-]+$", "{key}");
        assert!(!document.to_string().contains("ActivitySchemaRef"));
    }
}
