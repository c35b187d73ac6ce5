//! The newest-first pages of `GET /activities`: from the tenant's recent-pages set in Redis as far
//! as it reaches, from MongoDB beyond it.
//!
//! A plain MongoDB query (`{tenantId, filters, _id < cursor}` sorted by `_id` descending) is what
//! MongoDB serves from its `(tenantId, ..., _id)` indexes. FerretDB, the local store, pushes neither
//! that sort nor a range on `_id` down to its backend, so it reads and sorts every document of the
//! tenant: 17 s at 10^5 documents (issue 16). The consumer already keeps each tenant's newest
//! activities in Redis, in a sorted set ordered by document id, with a floor below which the set is
//! not complete (see `MARK_COUNT_PUBLISH_LUA`). A page takes from the set what lies above the floor
//! and asks MongoDB only for the rest, with `_id <= floor`: the same activities in the same order as
//! the plain query, as long as every stored activity's event was published. The one difference: an
//! activity stored but not yet published (the consumer's Redis step follows its MongoDB write) shows
//! on a page from the set when its live event goes out, as it does on the SSE stream.

use std::time::{Duration, Instant};

use mongodb::bson::oid::ObjectId;
use serde_json::Value;

use super::error::ApiError;
use super::ApiState;
use crate::domain::TenantId;
use crate::store::{
    ActivityCursor, ActivityFilter, RecentPagesSlice, Store, StoreOutage, StoredActivity,
};

/// Members read per round trip when a filter may skip many of them.
const FILTERED_SLICE: usize = 500;

/// One activity of a page: its id (the cursor) and the JSON clients see.
#[derive(Debug, Clone, PartialEq)]
pub struct PageEntry {
    pub id: ObjectId,
    pub activity: Value,
}

/// Where a page came from: a label of `activity_pipeline_activity_pages_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSource {
    Redis,
    MongoDB,
    /// The newest part from Redis, the rest from MongoDB.
    Both,
}

impl PageSource {
    pub fn label(self) -> &'static str {
        match self {
            PageSource::Redis => "redis",
            PageSource::MongoDB => "mongodb",
            PageSource::Both => "both",
        }
    }
}

/// Why the recent-pages set could not serve a page; MongoDB serves it instead.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("the tenant has no recent-pages set")]
    NoSet,
    #[error("the recent-pages set holds a member that is not `<document id> <event>`: {0}")]
    Broken(String),
    #[error(transparent)]
    Store(#[from] StoreOutage),
}

/// What a page took from the set: every activity it holds above `floor` that belongs on the page.
#[derive(Debug)]
struct BufferedPart {
    entries: Vec<PageEntry>,
    floor: ObjectId,
}

/// A page being collected from slices of the set, highest id first.
#[derive(Debug)]
struct BufferedPage<'a> {
    filter: &'a ActivityFilter,
    want: usize,
    /// Members per slice when filtered (`FILTERED_SLICE`; smaller in tests).
    filtered_slice: usize,
    floor: Option<ObjectId>,
    entries: Vec<PageEntry>,
}

/// After a slice: read the next one below `below`, or stop (the page is full, or the set has
/// nothing more above its floor).
#[derive(Debug, PartialEq, Eq)]
enum Next {
    SliceBelow(ObjectId),
    Stop,
}

impl<'a> BufferedPage<'a> {
    fn new(filter: &'a ActivityFilter, want: usize, filtered_slice: usize) -> BufferedPage<'a> {
        BufferedPage {
            filter,
            want,
            filtered_slice,
            floor: None,
            entries: Vec::new(),
        }
    }

    /// How many members the next slice asks for.
    fn slice_size(&self) -> usize {
        if filter_is_empty(self.filter) {
            self.want - self.entries.len()
        } else {
            self.filtered_slice
        }
    }

    /// Takes one slice, read with `asked` as its count. The floor only rises (trims raise it), so
    /// the highest one seen holds for the whole page.
    fn take(&mut self, slice: RecentPagesSlice, asked: usize) -> Result<Next, Unusable> {
        let floor = parse_id(slice.floor.as_deref().ok_or(Unusable::NoSet)?)?;
        let floor = *self
            .floor
            .insert(self.floor.map_or(floor, |seen| seen.max(floor)));
        let complete_slice = slice.events.len() == asked;
        let mut last = None;
        for event in slice.events {
            let id = parse_id(&event.document_id)?;
            if id <= floor {
                return Ok(Next::Stop);
            }
            last = Some(id);
            let activity: Value = serde_json::from_str(&event.event)
                .map_err(|error| Unusable::Broken(format!("event of {id}: {error}")))?;
            if matches(self.filter, &activity) {
                self.entries.push(PageEntry { id, activity });
                if self.entries.len() == self.want {
                    return Ok(Next::Stop);
                }
            }
        }
        Ok(match last {
            Some(last) if complete_slice => Next::SliceBelow(last),
            _ => Next::Stop,
        })
    }

    fn finish(self) -> Result<BufferedPart, Unusable> {
        let floor = self.floor.ok_or(Unusable::NoSet)?;
        let mut entries = self.entries;
        // Read before the floor rose past them: MongoDB's part (`_id <= floor`) has them now.
        entries.retain(|entry| entry.id > floor);
        Ok(BufferedPart { entries, floor })
    }
}

fn filter_is_empty(filter: &ActivityFilter) -> bool {
    filter.activity_type.is_none() && filter.actor_id.is_none() && filter.entity_id.is_none()
}

/// Whether a published activity (the JSON clients see) passes the page's equality filters.
fn matches(filter: &ActivityFilter, activity: &Value) -> bool {
    [
        ("type", &filter.activity_type),
        ("actorId", &filter.actor_id),
        ("entityId", &filter.entity_id),
    ]
    .into_iter()
    .all(|(field, wanted)| {
        wanted
            .as_deref()
            .is_none_or(|wanted| activity.get(field).and_then(Value::as_str) == Some(wanted))
    })
}

fn parse_id(raw: &str) -> Result<ObjectId, Unusable> {
    ObjectId::parse_str(raw).map_err(|_| Unusable::Broken(format!("{raw:?} is not a document id")))
}

/// Up to `want` of the tenant's activities matching `filter`, newest first, strictly older than
/// `before`; all of it within `deadline` (`read.timeout_ms` from the start of the request). The
/// caller holds the read's place among the reads in flight.
pub async fn newest_first(
    state: &ApiState,
    tenant: &TenantId,
    filter: &ActivityFilter,
    before: Option<ActivityCursor>,
    want: usize,
    deadline: Instant,
) -> Result<(Vec<PageEntry>, PageSource), ApiError> {
    let buffered = if state.redis.keeps_recent_pages() {
        // Redis failing or slow is a shortcut lost (`read::shortcut`: MongoDB answers, and reads
        // skip Redis for a moment); a set that is missing or not readable is this page's alone.
        let part = super::read::shortcut(state, async {
            match from_recent_pages(state, tenant, filter, before, want).await {
                Err(Unusable::Store(outage)) => Err(outage),
                other => Ok(other),
            }
        })
        .await;
        match part {
            Some(Ok(part)) => Some(part),
            Some(Err(Unusable::NoSet)) | None => None,
            Some(Err(unusable)) => {
                tracing::warn!(%tenant, error = %unusable, "a page could not use the recent-pages set; reading MongoDB");
                None
            }
        }
    } else {
        None
    };
    let (mut entries, through, source) = match buffered {
        Some(part) if part.entries.len() == want => return Ok((part.entries, PageSource::Redis)),
        Some(part) => {
            let source = if part.entries.is_empty() {
                PageSource::MongoDB
            } else {
                PageSource::Both
            };
            (
                part.entries,
                Some(ActivityCursor::from_id(part.floor)),
                source,
            )
        }
        None => (Vec::new(), None, PageSource::MongoDB),
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining < Duration::from_millis(1) {
        return Err(ApiError::store_unavailable(&StoreOutage::timed_out(
            Store::MongoDB,
            "read.timeout_ms",
        )));
    }
    let older = super::read::within(
        remaining,
        Store::MongoDB,
        state.repository.newest_first(
            tenant,
            filter,
            before,
            through,
            want - entries.len(),
            remaining,
        ),
    )
    .await?;
    entries.extend(older.iter().map(|activity: &StoredActivity| PageEntry {
        id: ActivityCursor::of(activity).id(),
        activity: activity.to_json(),
    }));
    Ok((entries, source))
}

/// What the recent-pages set holds for the page, a slice at a time.
async fn from_recent_pages(
    state: &ApiState,
    tenant: &TenantId,
    filter: &ActivityFilter,
    before: Option<ActivityCursor>,
    want: usize,
) -> Result<BufferedPart, Unusable> {
    let mut page = BufferedPage::new(filter, want, FILTERED_SLICE);
    let mut below = before.map(|cursor| cursor.id());
    loop {
        let asked = page.slice_size();
        let slice = state
            .redis
            .recent_pages_below(tenant, below.map(|id| id.to_hex()).as_deref(), asked)
            .await?;
        match page.take(slice, asked)? {
            Next::SliceBelow(last) => below = Some(last),
            Next::Stop => return page.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::store::RecentEvent;

    fn id(seconds: u32, counter: u8) -> ObjectId {
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&seconds.to_be_bytes());
        bytes[11] = counter;
        ObjectId::from_bytes(bytes)
    }

    fn event(id: ObjectId, activity_type: &str) -> RecentEvent {
        RecentEvent {
            document_id: id.to_hex(),
            event: json!({ "id": id.to_hex(), "type": activity_type }).to_string(),
        }
    }

    fn slice(floor: ObjectId, events: Vec<RecentEvent>) -> RecentPagesSlice {
        RecentPagesSlice {
            floor: Some(floor.to_hex()),
            events,
        }
    }

    #[test]
    fn a_page_stops_at_the_floor_and_leaves_the_rest_to_mongodb() {
        let filter = ActivityFilter::default();
        let mut page = BufferedPage::new(&filter, 3, FILTERED_SLICE);
        let events = vec![
            event(id(30, 0), "a"),
            event(id(20, 0), "a"),
            event(id(10, 0), "a"),
        ];
        assert_eq!(page.take(slice(id(20, 0), events), 3).unwrap(), Next::Stop);
        let part = page.finish().unwrap();
        assert_eq!(part.entries.len(), 1);
        assert_eq!(part.entries[0].id, id(30, 0));
        assert_eq!(part.floor, id(20, 0));
    }

    #[test]
    fn a_filtered_page_reads_on_below_the_last_member_of_a_full_slice() {
        let filter = ActivityFilter {
            activity_type: Some("b".to_owned()),
            ..ActivityFilter::default()
        };
        let mut page = BufferedPage::new(&filter, 2, 5);
        let first: Vec<_> = (0..5)
            .map(|n| event(id(1_000 - n, 0), if n == 3 { "b" } else { "a" }))
            .collect();
        assert_eq!(
            page.take(slice(id(1, 0), first), 5).unwrap(),
            Next::SliceBelow(id(996, 0))
        );
        assert_eq!(page.entries.len(), 1);
    }

    #[test]
    fn a_floor_that_rose_between_slices_drops_what_it_passed() {
        let filter = ActivityFilter::default();
        let mut page = BufferedPage::new(&filter, 4, FILTERED_SLICE);
        let first = vec![event(id(40, 0), "a"), event(id(30, 0), "a")];
        assert_eq!(
            page.take(slice(id(1, 0), first), 2).unwrap(),
            Next::SliceBelow(id(30, 0))
        );
        // Trimmed meanwhile up to 35: the member at 30 is MongoDB's now, and MongoDB's part starts
        // at the floor.
        let second = vec![event(id(20, 0), "a")];
        assert_eq!(page.take(slice(id(35, 0), second), 2).unwrap(), Next::Stop);
        let part = page.finish().unwrap();
        assert_eq!(
            part.entries
                .iter()
                .map(|entry| entry.id)
                .collect::<Vec<_>>(),
            vec![id(40, 0)]
        );
        assert_eq!(part.floor, id(35, 0));
    }

    #[test]
    fn no_set_or_a_broken_member_is_not_a_page() {
        let filter = ActivityFilter::default();
        let mut page = BufferedPage::new(&filter, 2, FILTERED_SLICE);
        let missing = RecentPagesSlice {
            floor: None,
            events: Vec::new(),
        };
        assert!(matches!(page.take(missing, 2), Err(Unusable::NoSet)));
        let broken = slice(
            id(1, 0),
            vec![RecentEvent {
                document_id: "not-an-id".to_owned(),
                event: "{}".to_owned(),
            }],
        );
        assert!(matches!(page.take(broken, 2), Err(Unusable::Broken(_))));
    }

    #[test]
    fn filters_compare_the_published_fields() {
        let activity = json!({ "type": "login", "actorId": "u1", "entityId": "e1" });
        let only = |activity_type: Option<&str>, actor: Option<&str>, entity: Option<&str>| {
            ActivityFilter {
                activity_type: activity_type.map(str::to_owned),
                actor_id: actor.map(str::to_owned),
                entity_id: entity.map(str::to_owned),
            }
        };
        assert!(matches(&only(None, None, None), &activity));
        assert!(matches(
            &only(Some("login"), Some("u1"), Some("e1")),
            &activity
        ));
        assert!(!matches(&only(Some("logout"), None, None), &activity));
        assert!(!matches(
            &only(None, None, Some("e2")),
            &json!({ "type": "login" })
        ));
    }

    /// A model of the consumer's script: `published` in publish order (not id order); those before
    /// `created_after` went into a predecessor that was lost, so the set starts with a floor at or
    /// above all of them (`extra_margin` more), then each publish adds its member and trims the set
    /// to `length` from its lowest ids, the floor rising to the highest trimmed.
    fn model_set(
        published: &[(ObjectId, &'static str)],
        created_after: usize,
        extra_margin: u32,
        length: usize,
    ) -> (Vec<(ObjectId, &'static str)>, ObjectId) {
        let lost = &published[..created_after.min(published.len())];
        let highest_lost = lost
            .iter()
            .map(|(id, _)| id.timestamp().timestamp_millis() / 1000)
            .max();
        let mut floor = id(
            highest_lost.map_or(0, |seconds| seconds as u32 + extra_margin),
            255,
        );
        let mut set: Vec<(ObjectId, &'static str)> = Vec::new();
        for member in &published[lost.len()..] {
            if !set.contains(member) {
                set.push(*member);
            }
            set.sort_by_key(|member| std::cmp::Reverse(member.0));
            while set.len() > length {
                let (trimmed, _) = set.pop().expect("longer than length");
                floor = floor.max(trimmed);
            }
        }
        (set, floor)
    }

    /// A slice of the modelled set, as ZREVRANGEBYLEX with the floor in the same transaction.
    fn slice_of(
        set: &[(ObjectId, &'static str)],
        floor: ObjectId,
        below: Option<ObjectId>,
        count: usize,
    ) -> RecentPagesSlice {
        let events = set
            .iter()
            .filter(|(id, _)| below.is_none_or(|below| *id < below))
            .take(count)
            .map(|(id, activity_type)| event(*id, activity_type))
            .collect();
        slice(floor, events)
    }

    proptest! {
        /// The set's part of a page, followed by "the rest at or below the floor", is the plain
        /// query's page: the highest ids below the cursor that pass the filter.
        #[test]
        fn buffered_part_plus_floor_equals_the_plain_query(
            raw in prop::collection::vec((1u32..200, any::<u8>(), prop::bool::ANY), 0..120),
            created_after in 0usize..20,
            extra_margin in 0u32..5,
            length in 0usize..60,
            want in 1usize..30,
            before in prop::option::of(1u32..200),
            filtered in prop::bool::ANY,
            filtered_slice in 1usize..8,
        ) {
            // Publish order is not id order: ids are made before the store and Redis steps, and a
            // record retried after its store step publishes long after its id was made.
            let mut published: Vec<(ObjectId, &'static str)> = Vec::new();
            for (seconds, counter, odd) in &raw {
                let member = (id(*seconds, *counter), if *odd { "b" } else { "a" });
                if !published.iter().any(|(id, _)| *id == member.0) {
                    published.push(member);
                }
            }
            let (set, floor) = model_set(&published, created_after, extra_margin, length);
            let mut ids = published.clone();
            ids.sort_by_key(|member| member.0);
            let filter = ActivityFilter {
                activity_type: filtered.then(|| "b".to_owned()),
                ..ActivityFilter::default()
            };
            let before = before.map(|seconds| id(seconds, 0));

            let mut page = BufferedPage::new(&filter, want, filtered_slice);
            let mut below = before;
            let part = loop {
                let asked = page.slice_size();
                match page.take(slice_of(&set, floor, below, asked), asked).unwrap() {
                    Next::SliceBelow(last) => below = Some(last),
                    Next::Stop => break page.finish().unwrap(),
                }
            };
            let wanted_type = |activity_type: &str| !filtered || activity_type == "b";
            let mut served: Vec<ObjectId> = part.entries.iter().map(|entry| entry.id).collect();
            let rest = ids
                .iter()
                .rev()
                .filter(|(id, activity_type)| {
                    *id <= part.floor && before.is_none_or(|before| *id < before) && wanted_type(activity_type)
                })
                .map(|(id, _)| *id)
                .take(want - served.len());
            served.extend(rest);
            let plain: Vec<ObjectId> = ids
                .iter()
                .rev()
                .filter(|(id, activity_type)| before.is_none_or(|before| *id < before) && wanted_type(activity_type))
                .map(|(id, _)| *id)
                .take(want)
                .collect();
            prop_assert_eq!(served, plain);
        }
    }
}
