//! The consumer directory a node authenticates against: consumers and usable API keys, from
//! the config file and from the store, held in memory and swapped whole when they change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio_util::sync::CancellationToken;

use crate::config::ConsumerConfig;
use crate::store::{Identities, Store};

/// How often a node asks the store whether anything changed.
pub const POLL: Duration = Duration::from_millis(250);

/// One consumer, as requests see it.
#[derive(Debug)]
pub struct ConsumerInfo {
    /// Its name (sent upstream as the consumer id).
    pub name: Arc<str>,
    /// Its groups.
    pub groups: Arc<[Arc<str>]>,
    /// `groups` joined with `,`, ready for the upstream header.
    pub groups_header: Option<HeaderValue>,
    /// `name`, ready for the upstream header.
    pub id_header: Option<HeaderValue>,
}

impl ConsumerInfo {
    fn new(name: &str, groups: &[String]) -> Arc<ConsumerInfo> {
        let joined = groups.join(",");
        Arc::new(ConsumerInfo {
            name: Arc::from(name),
            groups: groups.iter().map(|g| Arc::from(g.as_str())).collect(),
            groups_header: (!joined.is_empty()).then(|| HeaderValue::from_str(&joined).ok()).flatten(),
            id_header: HeaderValue::from_str(name).ok(),
        })
    }
}

#[derive(Debug)]
struct KeyEntry {
    digest: [u8; 32],
    consumer: Arc<ConsumerInfo>,
}

/// Consumers and keys by name and key id.
#[derive(Debug, Default)]
pub struct Directory {
    consumers: HashMap<Box<str>, Arc<ConsumerInfo>>,
    keys: HashMap<Box<str>, KeyEntry>,
    /// The store generation this was read at (0 for config-only directories).
    pub generation: i64,
}

impl Directory {
    /// From what the store holds.
    pub fn from_store(ids: &Identities) -> Directory {
        let consumers: HashMap<Box<str>, Arc<ConsumerInfo>> =
            ids.consumers.iter().map(|c| (Box::from(c.name.as_str()), ConsumerInfo::new(&c.name, &c.groups))).collect();
        let keys = ids
            .keys
            .iter()
            .filter(|k| k.revoked.is_none())
            .filter_map(|k| {
                let consumer = consumers.get(k.consumer.as_str())?.clone();
                Some((Box::from(k.id.as_str()), KeyEntry { digest: k.digest, consumer }))
            })
            .collect();
        Directory { consumers, keys, generation: ids.generation }
    }

    /// From the config file's `consumers`.
    pub fn from_config(list: &[ConsumerConfig]) -> Directory {
        let mut d = Directory::default();
        for c in list {
            let info = ConsumerInfo::new(&c.name, &c.groups);
            for k in &c.api_keys {
                d.keys.insert(Box::from(k.id.as_str()), KeyEntry { digest: k.sha256, consumer: info.clone() });
            }
            d.consumers.insert(Box::from(c.name.as_str()), info);
        }
        d
    }

    /// The consumer a presented key belongs to, if the key is known and matches.
    pub fn check_key(&self, key: &[u8]) -> Option<&Arc<ConsumerInfo>> {
        let id = super::apikey::parse_id(key)?;
        let entry = self.keys.get(id)?;
        super::apikey::matches(key, &entry.digest).then_some(&entry.consumer)
    }

    /// A consumer by name.
    pub fn consumer(&self, name: &str) -> Option<&Arc<ConsumerInfo>> {
        self.consumers.get(name)
    }
}

/// Keep `dir` in step with `store` until `stop`: poll the generation every [`POLL`] and read
/// everything again when it moved. A failing store keeps the last directory (and says so).
pub async fn sync(store: Arc<dyn Store>, dir: Arc<ArcSwap<Directory>>, stop: CancellationToken) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        let current = dir.load().generation;
        let result = match store.generation().await {
            Ok(g) if g == current => Ok(None),
            Ok(_) => store.identities().await.map(Some),
            Err(e) => Err(e),
        };
        if stop.is_cancelled() {
            // Replaced (or removed) while reading: what was read is no longer ours to publish.
            return;
        }
        match result {
            Ok(Some(ids)) => {
                tracing::info!(
                    consumers = ids.consumers.len(),
                    keys = ids.keys.len(),
                    generation = ids.generation,
                    "Consumers and keys reloaded from the store"
                );
                dir.store(Arc::new(Directory::from_store(&ids)));
                failing = false;
            }
            Ok(None) => failing = false,
            Err(e) if !failing => {
                tracing::warn!(error = %e, "Cannot read the store; keeping the consumers and keys already loaded");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
