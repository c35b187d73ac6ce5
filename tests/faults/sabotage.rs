//! `--sabotage`: the checker's own test. After the drain it breaks the stores on purpose, the way the
//! bugs it hunts would (a lost, an altered and a phantom activity, a counter off by one, an event of
//! another tenant, a dead letter nobody injected); the run passes only if every check that should
//! fire does, so a checker that has gone blind cannot stay green.

use std::time::Duration;

use mongodb::bson::{doc, oid::ObjectId, Document};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::checker::Checked;
use crate::env::{Env, COLLECTION, DATABASE, DLQ_TOPIC};
use crate::ledger::{Outcome, WorkloadReport};
use crate::live::{Event, LiveClient, Via};

/// Breaks the stores; returns what was done.
pub async fn sabotage(
    env: &Env,
    workload: &WorkloadReport,
    live: &[LiveClient],
) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    let collection = mongodb::Client::with_uri_str(env.mongo_uri())
        .await?
        .database(DATABASE)
        .collection::<Document>(COLLECTION);
    let mut acked = workload
        .activities
        .iter()
        .filter(|activity| activity.outcome == Outcome::Acked && activity.key.is_some());
    let lost = acked
        .next()
        .ok_or_else(|| anyhow::anyhow!("nothing acknowledged to sabotage"))?;
    let altered = acked
        .next()
        .ok_or_else(|| anyhow::anyhow!("too little acknowledged"))?;
    let key = |activity: &crate::ledger::SentActivity| activity.key.clone().unwrap_or_default();

    collection
        .delete_one(doc! {"tenantId": lost.tenant, "idempotencyKey": key(lost)})
        .await?;
    done.push(format!(
        "deleted {}/{} from MongoDB",
        lost.tenant,
        key(lost)
    ));
    collection
        .update_one(
            doc! {"tenantId": altered.tenant, "idempotencyKey": key(altered)},
            doc! {"$set": {"actorName": "someone else"}},
        )
        .await?;
    done.push(format!(
        "changed the actorName of {}/{}",
        altered.tenant,
        key(altered)
    ));
    let now = mongodb::bson::DateTime::now();
    collection
        .insert_one(doc! {
            "_id": ObjectId::new(), "tenantId": "acme", "idempotencyKey": "sabotage-phantom",
            "actorId": "ghost", "actorName": "Ghost", "type": "login", "metadata": {},
            "enqueuedAt": now, "createdAt": now,
        })
        .await?;
    done.push("inserted acme/sabotage-phantom, which no client sent".to_owned());

    let mut redis = crate::checker::redis(&env.stores()).await?;
    redis::cmd("HINCRBY")
        .arg("analytics:{globex}")
        .arg("login")
        .arg(1)
        .query_async::<i64>(&mut redis)
        .await?;
    done.push("added 1 to analytics:{globex} login".to_owned());

    let client = live
        .iter()
        .find(|client| client.tenant.id == "globex")
        .ok_or_else(|| anyhow::anyhow!("no live client of globex"))?;
    client.seen.lock().expect("seen").events.push(Event {
        id: ObjectId::new().to_hex(),
        tenant: "acme".to_owned(),
        key: "sabotage-leak".to_owned(),
        data: None,
        via: Via::Live,
    });
    done.push(format!(
        "handed live client {} an event of acme",
        client.name
    ));

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env.kafka_brokers())
        .create()?;
    producer
        .send(
            FutureRecord::<str, str>::to(DLQ_TOPIC)
                .key("acme")
                .payload("{}"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| anyhow::anyhow!("writing the fake dead letter: {error}"))?;
    done.push("wrote a dead letter nobody injected".to_owned());
    Ok(done)
}

/// `--lose-like-a-failover N`: the accounting's own test. Deletes the marks of `count` acknowledged
/// activities together with their counts, one MULTI per activity (its keys share the tenant's slot),
/// which is what a Redis master killed before its replica had the consumer's last scripts loses.
/// The drill must then report them as lost together, re-derive the counters and pass.
pub async fn lose_like_a_failover(
    env: &Env,
    workload: &WorkloadReport,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let mut redis = crate::checker::redis(&env.stores()).await?;
    let mut done = Vec::new();
    for activity in workload
        .activities
        .iter()
        .filter(|activity| activity.outcome == Outcome::Acked && activity.key.is_some())
        .take(count)
    {
        let tenant = activity.tenant;
        let key = activity.key.as_deref().unwrap_or_default();
        let kind = activity.body["type"].as_str().unwrap_or_default();
        redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(format!("idempotency:{{{tenant}}}:{key}"))
            .ignore()
            .cmd("HINCRBY")
            .arg(format!("analytics:{{{tenant}}}"))
            .arg(kind)
            .arg(-1)
            .ignore()
            .query_async::<()>(&mut redis)
            .await?;
        done.push(format!("{tenant}/{key}: mark deleted, {kind} count -1"));
    }
    anyhow::ensure!(
        done.len() == count,
        "too few acknowledged activities to lose"
    );
    Ok(done)
}

/// Which checks must have fired after `sabotage`, and whether they did.
pub fn verdict(checked: &Checked) -> Vec<(&'static str, bool)> {
    vec![
        ("lost", checked.lost.count >= 1),
        ("fields altered", checked.altered.count >= 1),
        ("stored but never sent", checked.phantom.count >= 1),
        ("counter mismatches", checked.counter_mismatches.count >= 1),
        (
            "idempotency mark mismatches",
            checked.mark_mismatches.count >= 1,
        ),
        ("cross-tenant leaks", checked.live_leaks.count >= 1),
        (
            "DLQ entries not injected",
            checked.dlq_unexpected.count >= 1,
        ),
    ]
}
