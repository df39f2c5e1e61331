//! What a history query gets from a group's stream as Redis returned it: the same answers, in
//! the same words, as the memory broker gives (recovery is all or nothing; replay takes the
//! newest within the age).

use std::sync::Arc;

use bytes::Bytes;

use super::wire::{self, Entry};
use crate::broker::policy::StreamPolicy;
use crate::broker::{HistoryQuery, Position, Publication, Recovery, Replay};

/// A group's stream as one `READ` script call saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub epoch: Arc<str>,
    /// The last offset given.
    pub top: u64,
    /// Redis' clock (ms) at the read.
    pub now_ms: u64,
    /// Entries after the offset asked for, oldest first.
    pub entries: Vec<Entry>,
}

impl Read {
    /// Parses the script's `{epoch, top, now, entries}`.
    pub fn parse(v: redis::Value) -> Option<Read> {
        let redis::Value::Array(mut parts) = v else {
            return None;
        };
        if parts.len() != 4 {
            return None;
        }
        let items = parts.pop()?;
        let now_ms = int(&parts[2])?;
        let top = int(&parts[1])?;
        let epoch = match &parts[0] {
            redis::Value::BulkString(b) => Arc::from(std::str::from_utf8(b).ok()?),
            _ => return None,
        };
        let entries = match items {
            redis::Value::Array(list) => list
                .into_iter()
                .map(|i| match i {
                    redis::Value::BulkString(b) => wire::decode_entry(&Bytes::from(b)),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?,
            _ => return None,
        };
        Some(Read {
            epoch,
            top,
            now_ms,
            entries,
        })
    }

    pub fn top(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.top,
        }
    }

    pub fn publication(&self, group: &Arc<str>, e: &Entry) -> Publication {
        Publication {
            group: group.clone(),
            data: e.data.clone(),
            kind: e.kind,
            position: Some(Position {
                epoch: self.epoch.clone(),
                offset: e.offset,
            }),
            origin: 0,
            sender: None,
            encoded: None,
        }
    }

    /// Entries still within the policy's age.
    fn fresh(&self, policy: &StreamPolicy) -> impl Iterator<Item = &Entry> {
        let oldest = self.now_ms.saturating_sub(policy.ttl.as_millis() as u64);
        self.entries.iter().filter(move |e| e.at_ms >= oldest)
    }

    /// What `q` asks of this read. The read must hold every entry `q` needs (see
    /// [`Read::wants`]).
    pub fn replay(&self, group: &Arc<str>, q: &HistoryQuery, policy: &StreamPolicy) -> Replay {
        let top = Some(self.top());
        let pubs = |it: Vec<&Entry>| it.iter().map(|e| self.publication(group, e)).collect();
        match q {
            HistoryQuery::Live => Replay {
                publications: Vec::new(),
                recovery: Recovery::NotAsked,
                top,
            },
            HistoryQuery::Last { last, within } => {
                let oldest = self.now_ms.saturating_sub(within.as_millis() as u64);
                let fresh: Vec<&Entry> = self.fresh(policy).filter(|e| e.at_ms >= oldest).collect();
                let skip = fresh.len().saturating_sub(*last);
                Replay {
                    publications: pubs(fresh[skip..].to_vec()),
                    recovery: Recovery::NotAsked,
                    top,
                }
            }
            HistoryQuery::Since { since, limit } => match self.recover(since, *limit, policy) {
                Ok(()) => Replay {
                    publications: pubs(
                        self.fresh(policy)
                            .filter(|e| e.offset > since.offset)
                            .collect(),
                    ),
                    recovery: Recovery::Recovered,
                    top,
                },
                Err(why) => Replay {
                    publications: Vec::new(),
                    recovery: Recovery::Lost(why),
                    top,
                },
            },
        }
    }

    fn recover(&self, since: &Position, limit: usize, policy: &StreamPolicy) -> Result<(), String> {
        if since.epoch != self.epoch {
            return Err(format!(
                "the group's history was lost since epoch {:?} (a restart or an eviction); its epoch is now {:?}",
                since.epoch, self.epoch
            ));
        }
        if since.offset > self.top {
            return Err(format!(
                "offset {} is ahead of the group's stream, which is at {}",
                since.offset, self.top
            ));
        }
        let missed = self.top - since.offset;
        if missed == 0 {
            return Ok(());
        }
        // The read starts at since + 1 when the list still holds it.
        let first_kept = self.fresh(policy).next().map_or(self.top + 1, |e| e.offset);
        if since.offset + 1 < first_kept {
            return Err(format!(
                "publications after offset {} are no longer in history (it starts at {first_kept}): the client was away longer than history keeps",
                since.offset
            ));
        }
        if missed as usize > limit {
            return Err(format!(
                "{missed} publications were missed; at most {limit} are recovered (websocket.recovery_max_publications)"
            ));
        }
        Ok(())
    }
}

fn int(v: &redis::Value) -> Option<u64> {
    match v {
        redis::Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    }
}

/// What a `READ` must fetch for `q`: entries after `after`, at most the newest `tail` (0: all).
pub fn wants(q: &HistoryQuery) -> (u64, usize) {
    match q {
        HistoryQuery::Live => (1 << 52, 1),
        HistoryQuery::Last { last, .. } => (0, *last),
        HistoryQuery::Since { since, .. } => (since.offset, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Kind;
    use std::time::Duration;

    fn read(top: u64, now: u64, entries: &[(u64, u64)]) -> Read {
        Read {
            epoch: Arc::from("e1"),
            top,
            now_ms: now,
            entries: entries
                .iter()
                .map(|&(offset, at_ms)| Entry {
                    offset,
                    at_ms,
                    kind: Kind::Text,
                    data: Bytes::from(offset.to_string()),
                })
                .collect(),
        }
    }

    fn since(offset: u64, limit: usize) -> HistoryQuery {
        HistoryQuery::Since {
            since: Position {
                epoch: Arc::from("e1"),
                offset,
            },
            limit,
        }
    }

    const POLICY: StreamPolicy = StreamPolicy {
        size: 10,
        ttl: Duration::from_secs(10),
    };

    #[test]
    fn recovery_fails_when_an_entry_after_the_position_expired() {
        let g: Arc<str> = Arc::from("g");
        // Offset 3 kept at 1 s, now 20 s: expired, so after 2 nothing is recoverable.
        let r = read(4, 20_000, &[(3, 1_000), (4, 15_000)]);
        assert!(
            matches!(r.replay(&g, &since(2, 100), &POLICY).recovery, Recovery::Lost(w) if w.contains("no longer"))
        );
        let ok = r.replay(&g, &since(3, 100), &POLICY);
        assert_eq!(ok.recovery, Recovery::Recovered);
        assert_eq!(ok.publications.len(), 1);
        assert_eq!(
            r.replay(&g, &since(4, 100), &POLICY).recovery,
            Recovery::Recovered
        );
    }

    #[test]
    fn replay_keeps_the_newest_within_age() {
        let g: Arc<str> = Arc::from("g");
        let r = read(3, 20_000, &[(1, 9_000), (2, 15_000), (3, 19_000)]);
        let q = HistoryQuery::Last {
            last: 5,
            within: Duration::from_secs(3),
        };
        let got = r.replay(&g, &q, &POLICY);
        assert_eq!(got.publications.len(), 1, "only offset 3 is within 3 s");
        assert_eq!(got.top.unwrap().offset, 3);
    }
}
