//! The read side: pages, filters, cursors, one activity by key, analytics; and that two tenants never
//! see each other's data through any of them.

use serde_json::{json, Value};

use crate::helpers::{activity, filter, metrics_text, TestPipeline, ACME_KEY, GLOBEX_KEY};

fn keys(page: &Value) -> Vec<String> {
    page["activities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|activity| activity["idempotencyKey"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_newest_first_with_cursors_and_filters() {
    let pipeline = TestPipeline::spawn().await;
    // Sent one by one, so the consumer stores them in this order.
    for index in 0..5 {
        let body = json!({
            "actorId": if index % 2 == 0 { "alice" } else { "bob" },
            "actorName": "Someone",
            "type": if index < 3 { "comment.created" } else { "doc.viewed" },
            "entityId": format!("doc-{}", index % 2),
        });
        pipeline.post_stored(&format!("k{index}"), &body).await;
    }

    let (status, page) = pipeline.get_json(ACME_KEY, "/activities?limit=2").await;
    assert_eq!(status, 200);
    assert_eq!(page["success"], true);
    assert_eq!(keys(&page), ["k4", "k3"]);
    let cursor = page["nextCursor"].as_str().unwrap().to_owned();
    let (_, page) = pipeline
        .get_json(ACME_KEY, &format!("/activities?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(keys(&page), ["k2", "k1"]);
    let cursor = page["nextCursor"].as_str().unwrap().to_owned();
    let (_, page) = pipeline
        .get_json(ACME_KEY, &format!("/activities?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(keys(&page), ["k0"]);
    assert_eq!(page["nextCursor"], Value::Null, "the last page says so");

    let (_, page) = pipeline.get_json(ACME_KEY, "/activities").await;
    assert_eq!(keys(&page), ["k4", "k3", "k2", "k1", "k0"]);
    let first = &page["activities"][0];
    for field in [
        "id",
        "tenantId",
        "actorId",
        "actorName",
        "type",
        "entityId",
        "metadata",
        "enqueuedAt",
        "createdAt",
    ] {
        assert!(!first[field].is_null(), "{field} in {first}");
    }

    let (_, page) = pipeline
        .get_json(ACME_KEY, "/activities?type=doc.viewed")
        .await;
    assert_eq!(keys(&page), ["k4", "k3"]);
    let (_, page) = pipeline
        .get_json(ACME_KEY, "/activities?actorId=alice")
        .await;
    assert_eq!(keys(&page), ["k4", "k2", "k0"]);
    let (_, page) = pipeline
        .get_json(ACME_KEY, "/activities?entityId=doc-1&type=comment.created")
        .await;
    assert_eq!(keys(&page), ["k1"]);

    for bad in [
        "/activities?limit=0",
        "/activities?limit=100000",
        "/activities?limit=two",
        "/activities?cursor=not-a-cursor",
        "/activities?tenantId=globex",
        "/activities?type=",
    ] {
        let (status, body) = pipeline.get_json(ACME_KEY, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["success"], false);
    }
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_activity_by_key_is_404_until_stored_then_200() {
    let pipeline = TestPipeline::spawn().await;
    let (status, body) = pipeline.get_json(ACME_KEY, "/activities/later").await;
    assert_eq!(status, 404);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("not processed yet"));
    assert_eq!(
        pipeline
            .post_activity(ACME_KEY, Some("later"), &activity("u1", "login"))
            .await
            .status(),
        202
    );
    let (status, body) = pipeline
        .wait_for_json(ACME_KEY, "/activities/later", |status, _| status == 200)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["activity"]["idempotencyKey"], "later");
    assert_eq!(body["activity"]["tenantId"], "acme");
    assert_eq!(body["activity"]["metadata"]["nested"]["n"], 1);
    let (status, _) = pipeline
        .get_json(ACME_KEY, "/activities/not%20a%20key")
        .await;
    assert_eq!(status, 400);
    let response = pipeline
        .http
        .get(format!("{}/activities/later", pipeline.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_cannot_see_each_others_activities_or_analytics() {
    let pipeline = TestPipeline::spawn().await;
    for (api_key, key, activity_type) in [
        (ACME_KEY, "a-1", "login"),
        (ACME_KEY, "a-2", "login"),
        (ACME_KEY, "shared-key", "comment.created"),
        (GLOBEX_KEY, "g-1", "signup"),
        (GLOBEX_KEY, "shared-key", "signup"),
    ] {
        assert_eq!(
            pipeline
                .post_activity(api_key, Some(key), &activity("u", activity_type))
                .await
                .status(),
            202
        );
    }
    let (_, acme_counts) = pipeline
        .wait_for_json(ACME_KEY, "/analytics", |_, body| body["total"] == 3)
        .await;
    let (_, globex_counts) = pipeline
        .wait_for_json(GLOBEX_KEY, "/analytics", |_, body| body["total"] == 2)
        .await;
    assert_eq!(acme_counts["tenantId"], "acme");
    assert_eq!(
        acme_counts["counts"],
        json!({"login": 2, "comment.created": 1})
    );
    assert_eq!(globex_counts["tenantId"], "globex");
    assert_eq!(globex_counts["counts"], json!({"signup": 2}));

    let (_, acme_page) = pipeline.get_json(ACME_KEY, "/activities").await;
    let (_, globex_page) = pipeline.get_json(GLOBEX_KEY, "/activities").await;
    let mut acme_keys = keys(&acme_page);
    acme_keys.sort();
    assert_eq!(acme_keys, ["a-1", "a-2", "shared-key"]);
    assert!(acme_page["activities"]
        .as_array()
        .unwrap()
        .iter()
        .all(|activity| activity["tenantId"] == "acme"));
    let mut globex_keys = keys(&globex_page);
    globex_keys.sort();
    assert_eq!(globex_keys, ["g-1", "shared-key"]);

    // By key: another tenant's key is simply not found; a shared key is each tenant's own.
    let (status, _) = pipeline.get_json(ACME_KEY, "/activities/g-1").await;
    assert_eq!(status, 404);
    let (_, shared) = pipeline
        .get_json(GLOBEX_KEY, "/activities/shared-key")
        .await;
    assert_eq!(shared["activity"]["tenantId"], "globex");
    assert_eq!(shared["activity"]["type"], "signup");

    // A filter cannot reach across tenants, and neither can a header naming another tenant.
    let (_, page) = pipeline.get_json(ACME_KEY, "/activities?type=signup").await;
    assert_eq!(keys(&page), Vec::<String>::new());
    let response = pipeline
        .http
        .get(format!("{}/analytics", pipeline.address))
        .bearer_auth(ACME_KEY)
        .header("X-Tenant-Id", "globex")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_are_ensured_again_on_an_existing_collection() {
    // Every consumer restart ensures the indexes of a collection that has them already.
    let settings = crate::helpers::load_settings(&crate::helpers::test_overrides(&[]));
    let repository = activity_pipeline::store::ActivityRepository::connect(&settings.mongo)
        .await
        .unwrap();
    for attempt in 0..2 {
        repository
            .ensure_indexes()
            .await
            .unwrap_or_else(|outage| panic!("attempt {attempt}: {outage}"));
    }
    let database = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017")
        .await
        .unwrap()
        .database(&settings.mongo.database);
    let mut names = database
        .collection::<mongodb::bson::Document>(&settings.mongo.collection)
        .list_index_names()
        .await
        .unwrap();
    names.sort();
    assert_eq!(
        names,
        [
            "_id_",
            "tenant_actor_newest_first",
            "tenant_entity_newest_first",
            "tenant_idempotency_key_unique",
            "tenant_newest_first",
            "tenant_type_newest_first"
        ]
    );
    database.drop().await.unwrap();
}

/// `GET /activities/{key}` goes by the consumer's idempotency mark (the document's id, then a lookup
/// by id, which FerretDB answers from its primary key); a mark that names another tenant's document
/// never shows it, and without a mark the plain query still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_by_key_goes_by_the_mark_and_never_across_tenants() {
    let pipeline = TestPipeline::spawn().await;
    pipeline
        .post_stored("by-mark", &activity("u1", "login"))
        .await;
    assert_eq!(
        pipeline
            .post_activity(GLOBEX_KEY, Some("theirs"), &activity("g1", "login"))
            .await
            .status(),
        202
    );
    assert_eq!(
        pipeline.wait_for_count(filter("globex", "theirs"), 1).await,
        1
    );
    let lookups = |path: &'static str| {
        let pipeline = &pipeline;
        async move {
            let metrics = metrics_text(&pipeline.http, &pipeline.address).await;
            let prefix = format!("activity_pipeline_activity_lookups_total{{path=\"{path}\"}} ");
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(&prefix))
                .map_or(0, |value| value.trim().parse::<u64>().unwrap())
        }
    };

    let by_mark = lookups("mark").await;
    let (status, body) = pipeline.get_json(ACME_KEY, "/activities/by-mark").await;
    assert_eq!(status, 200);
    assert_eq!(body["activity"]["idempotencyKey"], "by-mark");
    assert_eq!(lookups("mark").await, by_mark + 1, "found through the mark");

    // A mark of acme's that names globex's document (a bug, or a forged write): not shown to acme.
    let theirs = pipeline
        .activities()
        .find_one(filter("globex", "theirs"))
        .await
        .unwrap()
        .unwrap();
    let theirs_id = theirs.get_object_id("_id").unwrap().to_hex();
    redis::cmd("SET")
        .arg(pipeline.redis_key("idempotency:{acme}:theirs"))
        .arg(&theirs_id)
        .query_async::<()>(&mut pipeline.redis.clone())
        .await
        .unwrap();
    let (status, _) = pipeline.get_json(ACME_KEY, "/activities/theirs").await;
    assert_eq!(status, 404, "another tenant's document is never acme's");

    // The mark gone (expired, Redis restarted): the plain query finds the document.
    redis::cmd("DEL")
        .arg(pipeline.redis_key("idempotency:{acme}:by-mark"))
        .query_async::<()>(&mut pipeline.redis.clone())
        .await
        .unwrap();
    let by_query = lookups("query").await;
    let (status, body) = pipeline.get_json(ACME_KEY, "/activities/by-mark").await;
    assert_eq!(status, 200);
    assert_eq!(body["activity"]["idempotencyKey"], "by-mark");
    assert_eq!(lookups("query").await, by_query + 1);
    pipeline.stop().await;
}
