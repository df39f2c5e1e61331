//! The single-node broker: this process is the whole cluster, so publishing is handing the
//! publication to this node's handler, synchronously, on the publisher's thread.

use std::sync::{OnceLock, Weak};

use super::publication::Publication;
use super::{Broker, Handler, Published, Receipt};

/// The in-memory broker.
#[derive(Debug, Default)]
pub struct Memory {
    handler: OnceLock<Weak<dyn Handler>>,
}

impl Memory {
    pub fn new() -> Self {
        Memory::default()
    }
}

impl Broker for Memory {
    fn node(&self) -> u64 {
        // One node: any constant names it.
        1
    }

    fn set_handler(&self, handler: Weak<dyn Handler>) {
        let _ = self.handler.set(handler);
    }

    fn publish(&self, p: Publication) -> Published {
        let local_recipients = self
            .handler
            .get()
            .and_then(Weak::upgrade)
            .map_or(0, |h| h.handle(&p));
        Published::ready(Ok(Receipt {
            position: p.position,
            local_recipients,
        }))
    }

    fn subscribe(&self, _group: &str) {}

    fn unsubscribe(&self, _group: &str) {}
}
